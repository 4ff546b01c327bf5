"""Ray overhead per encrypted forward: the same forward through Ray party actors and through the
plain local launcher (spawned processes), alternating, in one run.

    python -m mpcformer.bench.ray_overhead --model minilm --seq-len 32 --approx quad+2quad --rounds 2

Each party loads the model, then runs ``repeats`` forwards; a forward's latency is the client's
wall time for it (the fastest of the repeats). Group start-up (placement, actor creation, model
loading) is reported apart: it is paid once per group, not per forward.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from mpcformer.bench import paired
from mpcformer.bench.runner import BenchConfig, run_combo

__all__ = ["measure_overhead", "summarize"]


def _call(cfg: BenchConfig):
    def call() -> tuple[float, dict]:
        return run_combo(cfg, cfg.approx[0])["total"]["time_s"], {}

    return call


def measure_overhead(model: str, seq_len: int, approx: str, repeats: int, rounds: int) -> dict:
    import ray

    cfg = BenchConfig(model=model, seq_len=seq_len, approx=[approx], repeats=repeats, truncation_risk=False)
    variants = {launcher: _call(cfg.model_copy(update={"launcher": launcher})) for launcher in ("local", "ray")}
    ray.init(address="local", num_cpus=4, include_dashboard=False)
    try:
        samples = paired.alternate(variants, rounds)
    finally:
        ray.shutdown()
    return {"model": model, "seq_len": seq_len, "approx": approx, "repeats": repeats, "rounds": rounds,
            **summarize(samples)}


def summarize(samples: dict[str, list[paired.Sample]]) -> dict:
    """Overhead of the fastest Ray forward over the fastest local one, with the run's noise.

    ``resolved`` says whether the run can tell: with at least 2 rounds, the overhead exceeds how much
    either launcher moved between rounds, or both moved less than 10% (the goal), so "under 10%" is
    decided either way.
    """
    forward = {k: paired.fastest(v).latency_s for k, v in samples.items()}
    spread = {k: paired.spread(v) for k, v in samples.items()}
    overhead = forward["ray"] / forward["local"] - 1.0
    return {
        "forward_latency_s": forward,
        "call_wall_s_median": {k: statistics.median(s.wall_s for s in v) for k, v in samples.items()},
        "ray_overhead_per_forward": overhead,
        "ray_overhead_per_round": [r.latency_s / l.latency_s - 1.0 for l, r in zip(samples["local"], samples["ray"])],
        "same_launcher_spread": spread,
        "resolved": min(len(v) for v in samples.values()) >= 2  # one round cannot show its own noise
        and (abs(overhead) > max(spread.values()) or max(spread.values()) < 0.10),
        "samples": paired.as_plain(samples),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--approx", default="quad+2quad")
    parser.add_argument("--repeats", type=int, default=3, help="forwards per call (fastest kept)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating local/ray calls")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/ray_overhead.json"))
    args = parser.parse_args(argv)
    report = measure_overhead(args.model, args.seq_len, args.approx, args.repeats, args.rounds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    f, c, spread = report["forward_latency_s"], report["call_wall_s_median"], report["same_launcher_spread"]
    print(f"forward latency: local {f['local']:.2f} s, ray {f['ray']:.2f} s -> Ray overhead "
          f"{100 * report['ray_overhead_per_forward']:+.1f}% per forward")
    print(f"per round: {', '.join(f'{100 * x:+.1f}%' for x in report['ray_overhead_per_round'])}; same-launcher "
          f"spread between rounds: local {100 * spread['local']:.1f}%, ray {100 * spread['ray']:.1f}%"
          + ("" if report["resolved"] else " -> not resolved: use --rounds 2 or more, on a quieter machine"))
    print(f"whole call incl. start-up (median): local {c['local']:.1f} s, ray {c['ray']:.1f} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
