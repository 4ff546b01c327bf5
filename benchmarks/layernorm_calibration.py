"""A distilled student's LayerNorms with ``ln:fit`` ranges calibrated per LayerNorm and per position
class (the first token, [CLS], apart from the rest), in plaintext: how precise the fits are, the dev
accuracy with no training, and after a short prediction-distillation pass.

    python benchmarks/layernorm_calibration.py runs/demo/student/best runs/demo/teacher/best \
        --data ../shared/data/sst2 --margin 1.5 --degree 4

The ranges are the scaled variances (as the encrypted model sees them: the embeddings' public input
scale included) over ``--calibration`` training sentences, widened by ``--margin`` each side; each
range gets the polynomial of ``ln:fit`` (``fitted_inv_sqrt_plain``: degree ``--degree``, no Newton
step, 2 rounds at degree 4). Position 0 is public (it is always [CLS]), so a per-position choice of
coefficients costs no round. An experiment: the encrypted twin is not built.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from dropin_agreement import logits_of, read_tsv


class CalibratedLayerNorm(nn.Module):
    """``ln:fit`` on one range for position 0 and another for the other positions."""

    def __init__(self, layer_norm: nn.LayerNorm, scale: int, first: tuple[float, float], rest: tuple[float, float],
                 degree: int):
        super().__init__()
        self.weight, self.bias, self.eps = layer_norm.weight, layer_norm.bias, layer_norm.eps
        self.scale, self.first, self.rest, self.degree = scale, first, rest, degree

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from mpcformer.approx.functions import fitted_inv_sqrt_plain

        k = self.scale
        centred = x - x.mean(-1, keepdim=True)  # (B, T, H)
        variance = centred.square().mean(-1, keepdim=True) * k**2 + self.eps * k**2  # (B, T, 1)
        inv_std = torch.cat([
            fitted_inv_sqrt_plain(variance[:, :1], *self.first, self.degree, 0),
            fitted_inv_sqrt_plain(variance[:, 1:], *self.rest, self.degree, 0),
        ], dim=1) * k
        return centred * inv_std * self.weight + self.bias


def variance_ranges(model, tokenizer, sentences, max_length) -> dict[str, list[float]]:
    """Per LayerNorm: [min, max] of position 0's scaled variance, then of the other (unpadded) positions."""
    from mpcformer.models.surgery import _embeddings_input_scale

    ranges, hooks, mask = {}, [], {}
    for name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm):
            parent = model.get_submodule(name.rsplit(".", 1)[0])
            scale = _embeddings_input_scale(model, parent)

            def record(module, inputs, output, name=name, scale=scale):
                x = inputs[0]
                variance = (x - x.mean(-1, keepdim=True)).square().mean(-1) * scale**2  # (B, T)
                first, rest = variance[:, 0], variance[:, 1:][mask["now"][:, 1:].bool()]
                seen = ranges.setdefault(name, [math.inf, 0.0, math.inf, 0.0, scale])
                seen[:4] = [min(seen[0], first.min().item()), max(seen[1], first.max().item()),
                            min(seen[2], rest.min().item()), max(seen[3], rest.max().item())]

            hooks.append(module.register_forward_hook(record))
    with torch.no_grad():
        for start in range(0, len(sentences), 64):
            batch = tokenizer(sentences[start:start + 64], padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt")
            mask["now"] = batch["attention_mask"]
            model(**batch)
    for hook in hooks:
        hook.remove()
    return ranges


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
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from mpcformer.approx.functions import fit_error
    from mpcformer.models.surgery import load_approximated

    torch.manual_seed(0)
    train = [text for text, _ in read_tsv(Path(args.data) / "train.tsv") if len(text.split()) >= args.min_words]
    dev = read_tsv(Path(args.data) / "dev.tsv")
    labels = torch.tensor([label for _, label in dev])
    tokenizer = AutoTokenizer.from_pretrained(args.student)
    student, teacher = load_approximated(args.student).eval(), load_approximated(args.teacher).eval()

    def accuracy() -> float:
        return (logits_of(student, tokenizer, [text for text, _ in dev], args.max_length).argmax(-1) == labels).float().mean().item()

    print(f"student as distilled: dev {accuracy():.4f}", flush=True)
    ranges = variance_ranges(student, tokenizer, train[:args.calibration], args.max_length)
    print("| LayerNorm | [CLS] range | fit error | other positions' range | fit error |")
    print("| --- | --- | ---: | --- | ---: |")
    for name, (low0, high0, low, high, scale) in ranges.items():
        first, rest = (low0 / args.margin, high0 * args.margin), (low / args.margin, high * args.margin)
        errors = [fit_error("inv_sqrt", *bounds, args.degree, 0) for bounds in (first, rest)]
        print(f"| {name} | {first[0]:.3g}-{first[1]:.4g} | {errors[0]:.3f} | {rest[0]:.3g}-{rest[1]:.4g} | {errors[1]:.3f} |")
        parent, attribute = name.rsplit(".", 1)
        module = student.get_submodule(name)
        setattr(student.get_submodule(parent), attribute, CalibratedLayerNorm(module, scale, first, rest, args.degree))
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


if __name__ == "__main__":
    main()
