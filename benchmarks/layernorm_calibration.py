"""A distilled student's LayerNorms with ``ln:fit`` calibrated per LayerNorm and per position class
(the first token, [CLS], apart from the rest) after distillation, in plaintext: how precise the fits
are, the dev accuracy with no training, and after a short prediction-distillation pass.

    python benchmarks/layernorm_calibration.py runs/demo/student/best runs/demo/teacher/best \
        --data ../shared/data/sst2 --margin 1.5 --degree 4

The calibration is the product's (``mpcformer.models.surgery.calibrate_layernorms``, what
``mpcformer distill`` runs before stage 2 for ``ln:fit``), applied here to a student distilled with
exact LayerNorm: the ranges are the scaled variances (as the encrypted model sees them) over
``--calibration`` training sentences, widened by ``--margin`` each way; each range gets the
polynomial of ``ln:fit`` (degree ``--degree``, no Newton step, 2 rounds at degree 4).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from dropin_agreement import logits_of, read_tsv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("student", help="a distilled student with ln:exact (e.g. the demo's student/best)")
    parser.add_argument("teacher", help="its teacher, for the prediction-distillation pass")
    parser.add_argument("--data", required=True, help="folder with SST-2 style train.tsv and dev.tsv")
    parser.add_argument("--margin", type=float, default=1.5, help="each range widened by this factor both ways")
    parser.add_argument("--degree", type=int, default=4)
    parser.add_argument("--calibration", type=int, default=2048, help="training sentences the ranges come from")
    parser.add_argument("--train", type=int, default=6000, help="sentences of the prediction-distillation pass")
    parser.add_argument("--min-words", type=int, default=10, help="training sentences with fewer words are left out")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--save", help="write the calibrated, trained student here (a checkpoint `mpcformer infer` serves)")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from mpcformer.approx import Combo
    from mpcformer.approx.functions import fit_error
    from mpcformer.models.surgery import calibrate_layernorms, combo_of, load_approximated

    torch.manual_seed(0)
    train = [text for text, _ in read_tsv(Path(args.data) / "train.tsv") if len(text.split()) >= args.min_words]
    dev = read_tsv(Path(args.data) / "dev.tsv")
    labels = torch.tensor([label for _, label in dev])
    tokenizer = AutoTokenizer.from_pretrained(args.student)
    student, teacher = load_approximated(args.student).eval(), load_approximated(args.teacher).eval()

    def accuracy() -> float:
        return (logits_of(student, tokenizer, [text for text, _ in dev], args.max_length).argmax(-1) == labels).float().mean().item()

    print(f"student as distilled: dev {accuracy():.4f}", flush=True)
    distilled = combo_of(student)
    combo = Combo.parse(f"{distilled.activation}+{distilled.normaliser}+ln:fit", layernorm_params={"degree": float(args.degree)})
    calibration = [
        dict(tokenizer(train[start:start + 64], padding=True, truncation=True, max_length=args.max_length, return_tensors="pt"))
        for start in range(0, args.calibration, 64)
    ]
    record = calibrate_layernorms(student, combo, calibration, args.margin)
    print("| LayerNorm | [CLS] range | fit error | other positions' range | fit error |")
    print("| --- | --- | ---: | --- | ---: |")
    for name, p in record["params"].items():
        errors = [fit_error("inv_sqrt", low, high, args.degree, 0)
                  for low, high in ((p["first_low"], p["first_high"]), (p["low"], p["high"]))]
        print(f"| {name} | {p['first_low']:.4g}-{p['first_high']:.4g} | {errors[0]:.3f} "
              f"| {p['low']:.4g}-{p['high']:.4g} | {errors[1]:.3f} |")
    print(f"calibrated ln:fit, no training: dev {accuracy():.4f}", flush=True)

    # prediction distillation (the demo's stage 2: lr 1e-4, linear decay, batches of 32, word embeddings frozen)
    weights = [p for n, p in student.named_parameters() if "word_embeddings" not in n]
    optimizer, steps = torch.optim.AdamW(weights, lr=1e-4), args.train // 32
    pool = train[args.calibration:args.calibration + args.train]
    student.train()
    for step in range(steps):
        batch = tokenizer(pool[step * 32:(step + 1) * 32], padding=True, truncation=True, max_length=args.max_length,
                          return_tensors="pt")
        with torch.no_grad():
            target = F.softmax(teacher(**batch).logits, -1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = student(**batch).logits
        loss = F.kl_div(F.log_softmax(logits.float(), -1), target, reduction="batchmean")
        for group in optimizer.param_groups:
            group["lr"] = 1e-4 * (1 - step / steps)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"calibrated ln:fit after {steps} prediction-distillation updates: dev {accuracy():.4f}", flush=True)
    if args.save:
        student.save_pretrained(args.save)
        tokenizer.save_pretrained(args.save)


if __name__ == "__main__":
    main()
