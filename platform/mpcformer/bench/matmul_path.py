"""End-to-end effect of mpcformer's protocol path, one step at a time: the same encrypted forward
with CrypTen as shipped, with ``MPCConfig.fast_matmul`` (2-matmul Beaver step, ring kernel choice),
with reusable weight masks too (``MPCConfig.reuse_weight_masks``), with the dealer's round trip
overlapped too (``MPCConfig.overlap_dealer``), with OS keys and AES-CTR draws too
(``MPCConfig.randomness="os"``; the paths before it use CrypTen's insecure baseline), with
elementwise triples streamed ahead too (``MPCConfig.stream_triples``), with all-gather openings
too (``MPCConfig.fast_exchange``) and with LayerNorm's one opening too
(``MPCConfig.reuse_activation_masks``: all on, the default), alternating, in one run.

    python -m mpcformer.bench.matmul_path --model bert-base --seq-len 128 --approx quad+2quad --rounds 2

Writes ``matmul_path.json`` and ``matmul_path.md`` into ``--out``. Each call runs 2 parties + the
TTP dealer through the local launcher; a call's latency is the client's fastest of ``repeats``
forwards, and a path's figure the fastest of its ``rounds`` calls. The fast Beaver step and the
overlap, the PRG, the streams and the exchange change only local work and the order of waits, so
the parties' rounds and bytes must match the path before them. Reusable masks send each weight once per session (the model's set-up, reported
apart) instead of opening it in every forward: the same rounds, fewer bytes.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mpcformer.bench import paired
from mpcformer.bench.report import write_json_and_markdown
from mpcformer.bench.runner import BenchConfig, run_combo
from mpcformer.mpc.config import MPCConfig

__all__ = ["PATHS", "measure_matmul_path", "render_markdown"]

# The categories whose work is matrix products; the rest of the forward is the same code either way.
MATMUL_CATEGORIES = ("embedding", "linear", "attention-matmul", "pooler", "classifier")
#: Each path adds one switch to the one before; the last is the default configuration.
_SWITCHES = (
    "fast_matmul", "reuse_weight_masks", "overlap_dealer", "randomness", "stream_triples", "fast_exchange",
    "reuse_activation_masks",
)
_NAMES = (
    "crypten", "fast-matmul", "weight-masks", "overlap-dealer", "aes-prg", "triple-streams", "fast-exchange", "mpcformer"
)
def _value(switch: str, on: bool):
    if switch == "randomness":  # OS keys and AES-CTR, or CrypTen's own
        return "randomness", "os" if on else "crypten-insecure-baseline"
    return switch, on


PATHS = {name: MPCConfig(**dict(_value(s, i < on) for i, s in enumerate(_SWITCHES))) for on, name in enumerate(_NAMES)}


def _forward(cfg: BenchConfig):
    def call() -> tuple[float, dict[str, Any]]:
        costs = run_combo(cfg, cfg.approx[0])
        total = costs["total"]
        matmul_s = sum(costs["by_category"].get(op, {}).get("time_s", 0.0) for op in MATMUL_CATEGORIES)
        setup = costs["setup"]
        return total["time_s"], {
            "rounds": total["rounds"], "bytes": total["bytes"], "matmul_time_s": matmul_s,
            "setup_time_s": setup["time_s"], "setup_bytes": setup["bytes"],
        }

    return call


def measure_matmul_path(
    model: str, seq_len: int, approx: str, repeats: int = 1, rounds: int = 2, seed: int = 0
) -> dict[str, Any]:
    """Run the forward with each matmul path ``rounds`` times round-robin; return the report."""
    base = BenchConfig(model=model, seq_len=seq_len, approx=[approx], repeats=repeats, seed=seed, truncation_risk=False)
    variants = {name: _forward(base.model_copy(update={"mpc": mpc})) for name, mpc in PATHS.items()}
    samples = paired.alternate(variants, rounds, progress=lambda p, r: print(f"round {r + 1}: {p} done", flush=True))
    best = {name: paired.fastest(s) for name, s in samples.items()}
    rows = [
        {
            "path": name,
            "latency_s": b.latency_s,
            "matmul_time_s": b.detail["matmul_time_s"],
            "rounds": b.detail["rounds"],
            "bytes": b.detail["bytes"],
            "setup_time_s": b.detail["setup_time_s"],
            "setup_bytes": b.detail["setup_bytes"],
            "spread_between_rounds": paired.spread(samples[name]),
        }
        for name, b in best.items()
    ]
    stock, ours = best["crypten"], best["mpcformer"]
    return {
        "model": model, "seq_len": seq_len, "approx": approx, "repeats": repeats, "rounds": rounds,
        "launcher": "local", "paths": rows,
        "speedup_end_to_end": stock.latency_s / ours.latency_s,
        "speedup_matmul_categories": stock.detail["matmul_time_s"] / max(ours.detail["matmul_time_s"], 1e-9),
        "speedup_fast_matmul_alone": stock.latency_s / best["fast-matmul"].latency_s,
        "speedup_overlap_alone": best["weight-masks"].latency_s / best["overlap-dealer"].latency_s,
        "speedup_prg_alone": best["overlap-dealer"].latency_s / best["aes-prg"].latency_s,
        "speedup_streams_alone": best["aes-prg"].latency_s / best["triple-streams"].latency_s,
        "speedup_exchange_alone": best["triple-streams"].latency_s / best["fast-exchange"].latency_s,
        "speedup_activation_masks_alone": best["fast-exchange"].latency_s / ours.latency_s,
        "samples": paired.as_plain(samples),
    }


def render_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Protocol path: {report['model']}, length {report['seq_len']}, {report['approx']}",
        "",
        "| path | forward (s) | matmul categories (s) | rounds | MB | spread between rounds "
        "| model set-up, once (s / MB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["paths"]:
        lines.append(
            f"| {r['path']} | {r['latency_s']:.2f} | {r['matmul_time_s']:.2f} | {r['rounds']:.0f} | "
            f"{r['bytes'] / 1e6:.1f} | {100 * r['spread_between_rounds']:.0f}% | "
            f"{r['setup_time_s']:.2f} / {r['setup_bytes'] / 1e6:.1f} |"
        )
    lines += [
        "",
        f"mpcformer's path vs CrypTen's: **{report['speedup_end_to_end']:.2f}x** end to end, "
        f"{report['speedup_matmul_categories']:.2f}x on the matmul categories ({', '.join(MATMUL_CATEGORIES)}); "
        f"the fast Beaver step alone: {report['speedup_fast_matmul_alone']:.2f}x; "
        f"overlapping the dealer on top of the weight masks: {report['speedup_overlap_alone']:.2f}x; "
        f"AES-CTR draws on top: {report['speedup_prg_alone']:.2f}x; "
        f"triple streams on top: {report['speedup_streams_alone']:.2f}x; "
        f"all-gather openings on top: {report['speedup_exchange_alone']:.2f}x; "
        f"LayerNorm's one opening on top: {report['speedup_activation_masks_alone']:.2f}x.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bert-base", help="preset (tiny, minilm, bert-base, bert-large)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--approx", default="quad+2quad", help="one approximation combination")
    parser.add_argument("--repeats", type=int, default=1, help="forwards per call (fastest kept)")
    parser.add_argument("--rounds", type=int, default=2, help="round-robin passes over the seven paths")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/matmul_path"))
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.repeats < 1:
        parser.error("--rounds and --repeats must be at least 1")
    report = measure_matmul_path(args.model, args.seq_len, args.approx, args.repeats, args.rounds)
    write_json_and_markdown(args.out, "matmul_path", report, render_markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
