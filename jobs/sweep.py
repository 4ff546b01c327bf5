"""Run a distillation sweep (Ray Tune) from a YAML grid; resumes an interrupted sweep.

    mpcformer sweep --config sweep-quick          # a shipped config's name, or a YAML path
    python -m mpcformer.jobs.sweep --config jobs/configs/sweep-sst2-minilm.yaml

Relative paths in the config resolve against the directory the command runs in (under
``ray job submit``: the job's working directory on the head). The teacher and data must exist
before any trial starts: a missing one stops the sweep with one line naming it and the command
that makes it (exit 2). Writes results.csv, results.md and best.json under <storage_path>/<name>/;
each failed trial's cause is in them and in the summary printed at the end (exit 1).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True,
                        help="sweep YAML, or a shipped config's name (sweep-quick, sweep-sst2-minilm)")
    parser.add_argument("--address", default=None,
                        help="Ray cluster address (default: the job's cluster or a new local one)")
    parser.add_argument("--no-resume", action="store_true", help="start over even if the sweep exists")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a sweep key (dotted)")


def run(args: argparse.Namespace) -> int:
    from mpcformer.cluster_connect import connect
    from mpcformer.config import load_config, parse_set
    from mpcformer.sweep import SweepConfig, check_prerequisites, failure_lines, resolve_paths, run_sweep

    here = Path.cwd()
    sweep = resolve_paths(load_config(SweepConfig, args.config, parse_set(args.set), override_names={}), here)
    print(f"sweep '{sweep.name}': relative paths resolved against {here}; "
          f"results in {sweep.storage_path}/{sweep.name}")
    if not (args.address or os.environ.get("RAY_ADDRESS")):  # the trials will run here: check before Ray starts
        check_prerequisites(sweep)
    with connect(args.address):
        summary = run_sweep(sweep, resume=not args.no_resume, base_dir=here)
    print(Path(summary["sweep_dir"], "results.md").read_text())
    for line in failure_lines(summary):
        print(line)
    print(f"{summary['trials']} trials, {summary['failed']} failed; "
          f"best per approximation in {summary['sweep_dir']}/best.json")
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    from mpcformer.cli import job_main

    raise SystemExit(job_main("mpcformer.jobs.sweep"))
