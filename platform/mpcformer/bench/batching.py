"""Per-sequence latency against batch size: the same encrypted forward at several batch sizes,
alternating, in one run (sequences of a batch share every communication round).

    python -m mpcformer.bench.batching --model minilm --seq-len 32 --approx quad+2quad --batch-sizes 1,8

Writes ``batching.json`` and ``batching.md`` into ``--out``. Each call runs 2 parties + the TTP
dealer through the local launcher; a call's latency is the client's fastest of ``repeats`` forwards,
and a batch size's figure the fastest of its ``rounds`` calls.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mpcformer.bench import paired
from mpcformer.bench.report import write_json_and_markdown
from mpcformer.bench.runner import BenchConfig, run_combo

__all__ = ["measure_batching", "render_markdown"]


def _forward(model: str, approx: str, seq_len: int, batch_size: int, repeats: int, seed: int):
    cfg = BenchConfig(
        model=model, seq_len=seq_len, batch_size=batch_size, approx=[approx], repeats=repeats, seed=seed,
        truncation_risk=False,  # latency only
    )

    def call() -> tuple[float, dict[str, Any]]:
        total = run_combo(cfg, approx)["total"]
        return total["time_s"], {"rounds": total["rounds"], "bytes": total["bytes"]}

    return call


def measure_batching(
    model: str, seq_len: int, approx: str, batch_sizes: list[int], repeats: int = 1, rounds: int = 1, seed: int = 0
) -> dict[str, Any]:
    """Run the forward at each batch size ``rounds`` times round-robin; return the report."""
    if not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"batch sizes must be positive integers, got {batch_sizes}")
    variants = {str(b): _forward(model, approx, seq_len, b, repeats, seed) for b in batch_sizes}
    samples = paired.alternate(variants, rounds, progress=lambda b, r: print(f"round {r + 1}: batch {b} done", flush=True))
    base = min(batch_sizes)
    rows = []
    for b in batch_sizes:
        best = paired.fastest(samples[str(b)])
        rows.append({
            "batch_size": b,
            "latency_s": best.latency_s,
            "latency_per_sequence_s": best.latency_s / b,
            "rounds": best.detail["rounds"],
            "bytes_per_sequence": best.detail["bytes"] / b,
            "spread_between_rounds": paired.spread(samples[str(b)]),
        })
    per_seq_base = next(r["latency_per_sequence_s"] for r in rows if r["batch_size"] == base)
    for row in rows:
        row["per_sequence_vs_smallest_batch"] = row["latency_per_sequence_s"] / per_seq_base
    return {
        "model": model, "seq_len": seq_len, "approx": approx, "repeats": repeats, "rounds": rounds,
        "launcher": "local", "batches": rows, "samples": paired.as_plain(samples),
    }


def render_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Batching: {report['model']}, length {report['seq_len']}, {report['approx']}",
        "",
        "| batch | forward (s) | per sequence (s) | vs smallest batch | rounds | MB per sequence | spread between rounds |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["batches"]:
        lines.append(
            f"| {r['batch_size']} | {r['latency_s']:.2f} | {r['latency_per_sequence_s']:.2f} | "
            f"{r['per_sequence_vs_smallest_batch']:.2f}x | {r['rounds']:.0f} | {r['bytes_per_sequence'] / 1e6:.1f} | "
            f"{100 * r['spread_between_rounds']:.0f}% |"
        )
    return "\n".join(lines) + "\n"


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch sizes: expected comma-separated integers like 1,8; got '{text}'") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be positive, got '{text}'")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm", help="preset (tiny, minilm, bert-base, bert-large)")
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--approx", default="quad+2quad", help="one approximation combination")
    parser.add_argument("--batch-sizes", type=_batch_sizes, default=[1, 8], help="comma-separated, e.g. 1,8")
    parser.add_argument("--repeats", type=int, default=1, help="forwards per call (fastest kept)")
    parser.add_argument("--rounds", type=int, default=2, help="round-robin passes over the batch sizes")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/batching"))
    args = parser.parse_args(argv)
    report = measure_batching(args.model, args.seq_len, args.approx, args.batch_sizes, args.repeats, args.rounds)
    write_json_and_markdown(args.out, "batching", report, render_markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
