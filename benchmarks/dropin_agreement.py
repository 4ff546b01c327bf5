"""Drop-in approximations in plaintext: a trained model with approximations swapped in, no retraining,
against the same model exact, on every sentence of an SST-2 style dev file.

    python benchmarks/dropin_agreement.py runs/demo/teacher/best --data ../shared/data/sst2 \
        --approx puma-gelu+softmax gelu+lim-softmax "puma-gelu+lim-softmax@n=4"

Prints, per combination, dev accuracy, agreement of predictions with the exact model and the
largest logit difference. ``name@key=value`` sets a normaliser parameter. What a combination keeps
in plaintext bounds what it keeps under MPC; for the latter, run ``mpcformer infer`` and pass its
``predictions.jsonl`` with ``--mpc`` (then ``--approx`` may be left out):

    python benchmarks/dropin_agreement.py runs/demo/teacher/best --data ../shared/data/sst2 \
        --mpc runs/dropin/predictions.jsonl
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import torch


def read_tsv(path: Path) -> list[tuple[str, int]]:
    with open(path, newline="") as handle:
        return [(row[0], int(row[1])) for row in list(csv.reader(handle, delimiter="\t"))[1:]]


def logits_of(model, tokenizer, sentences: list[str], max_length: int) -> torch.Tensor:
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(sentences), 64):
            batch = tokenizer(sentences[start:start + 64], padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt")
            out.append(model(**batch).logits.float())
    return torch.cat(out)


def parse_combo(text: str):
    from mpcformer.approx import Combo

    name, *settings = text.split("@")
    params = {key: float(value) for key, value in (item.split("=", 1) for item in settings)}
    return Combo.parse(name, normaliser_params=params) if params else Combo.parse(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a fine-tuned checkpoint folder (e.g. the demo's teacher/best)")
    parser.add_argument("--data", required=True, help="folder with an SST-2 style dev.tsv")
    parser.add_argument("--approx", nargs="+", default=[])
    parser.add_argument("--mpc", type=Path, help="an `mpcformer infer` predictions.jsonl on the same dev file")
    parser.add_argument("--max-length", type=int, default=64)
    args = parser.parse_args()
    if not args.approx and not args.mpc:
        parser.error("give combinations (--approx), an infer predictions file (--mpc), or both")

    from transformers import AutoTokenizer

    from mpcformer.models.surgery import approximate, load_approximated

    rows = read_tsv(Path(args.data) / "dev.tsv")
    sentences, labels = [text for text, _ in rows], torch.tensor([label for _, label in rows])
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    exact = logits_of(load_approximated(args.model), tokenizer, sentences, args.max_length)
    print(f"| combination | dev accuracy ({len(rows)}) | agreement with exact | max logit difference |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| exact | {(exact.argmax(-1) == labels).float().mean():.4f} | 1 | 0 |")
    for text in args.approx:
        got = logits_of(approximate(load_approximated(args.model), parse_combo(text)), tokenizer, sentences,
                        args.max_length)
        print(f"| {text} | {(got.argmax(-1) == labels).float().mean():.4f} | "
              f"{(got.argmax(-1) == exact.argmax(-1)).float().mean():.4f} | {(got - exact).abs().max():.3f} |", flush=True)
    if args.mpc:
        mpc_against_exact(args.mpc, exact, labels)


def mpc_against_exact(path: Path, exact: torch.Tensor, labels: torch.Tensor) -> None:
    """One row per combination in an ``mpcformer infer`` predictions file: its examples under MPC
    against the exact model in plaintext."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for combo in sorted({r["combo"] for r in records}):
        mine = sorted((r for r in records if r["combo"] == combo), key=lambda r: r["example_id"])
        ids = torch.tensor([r["example_id"] for r in mine])
        if int(ids.max()) >= len(labels) or len(set(ids.tolist())) != len(ids) or not torch.equal(labels[ids], torch.tensor([r["label"] for r in mine])):
            raise SystemExit(f"{path}: the examples of {combo} are not this dev file's (ids beyond it, repeated, or labels differ)")
        logits, predicted = torch.tensor([r["logits"] for r in mine]), torch.tensor([r["prediction"] for r in mine])
        agree = (predicted == exact[ids].argmax(-1)).sum().item()
        print(f"| {combo}, under MPC ({len(mine)} examples) | {(predicted == labels[ids]).float().mean():.4f} | "
              f"{agree}/{len(mine)} = {agree / len(mine):.4f} | {(logits - exact[ids]).abs().max():.3f} |", flush=True)


if __name__ == "__main__":
    main()
