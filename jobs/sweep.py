"""Run a distillation sweep (Ray Tune) from a YAML grid; resumes an interrupted sweep.

Writes results.csv, results.md and best.json under <storage_path>/<name>/.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="sweep YAML (see jobs/configs/sweep-*.yaml)")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: the job's cluster or a new local one)")
    parser.add_argument("--no-resume", action="store_true", help="start over even if the sweep exists")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a sweep key (dotted)")


def run(args: argparse.Namespace) -> int:
    from mpcformer.cluster_connect import connect
    from mpcformer.config import load_config
    from mpcformer.sweep import SweepConfig, run_sweep
    from mpcformer.config import parse_set

    overrides = parse_set(args.set)
    sweep = load_config(SweepConfig, args.config, overrides)
    with connect(args.address):
        summary = run_sweep(sweep, resume=not args.no_resume)
    print(Path(summary["sweep_dir"], "results.md").read_text())
    print(f"{summary['trials']} trials, {summary['failed']} failed; best per approximation in {summary['sweep_dir']}/best.json")
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    from mpcformer.cli import job_main

    raise SystemExit(job_main("mpcformer.jobs.sweep"))
