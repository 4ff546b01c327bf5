"""Run a distillation sweep (Ray Tune) from a YAML grid, or a GLUE suite from a tasks: config.

Both resume an interrupted run.

    mpcformer sweep --config sweep-quick          # a shipped config's name, or a YAML path
    python -m mpcformer.jobs.sweep --config jobs/configs/sweep-sst2-minilm.yaml
    mpcformer sweep --config sweep-glue-minilm --quick    # the suite on the tiny preset, a few steps per task

Relative paths in the config resolve against the directory the command runs in (under
``ray job submit``: the job's working directory on the head). The teacher and data must exist
before any trial starts: a missing one stops the sweep with one line naming it and the command
that makes it (exit 2). A grid writes results.csv, results.md and best.json under
<storage_path>/<name>/; a suite trains its teachers first (or takes them from ``teachers_dir``),
then its students and baselines, runs its distilled students under MPC on dev examples (the
inference job of ``mpcformer infer``), and writes suite.md and suite.json there. Each failed trial's
(and MPC run's) cause is in them and in the summary printed at the end (exit 1).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True,
                        help="sweep YAML, or a shipped config's name (sweep-quick, sweep-sst2-minilm, "
                        "sweep-glue-minilm)")
    parser.add_argument("--address", default=None,
                        help="Ray cluster address (default: the job's cluster or a new local one)")
    parser.add_argument("--no-resume", action="store_true", help="start over even if the sweep exists (a grid; a suite reuses the finished trials in its folder)")
    parser.add_argument("--quick", action="store_true",
                        help="a suite on the tiny preset, a few updates per task (named <name>-quick): "
                        "checks the setup")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a sweep key (dotted)")


def run(args: argparse.Namespace) -> int:
    from mpcformer.config import load_config, parse_set
    from mpcformer.sweep import SweepConfig

    sweep = load_config(SweepConfig, args.config, parse_set(args.set), override_names={})
    if args.quick:
        from mpcformer.suite import quick_form

        sweep = quick_form(sweep)
    return _run_suite(sweep, args) if sweep.tasks else _run_grid(sweep, args)


def _on_this_machine(args: argparse.Namespace) -> bool:
    """Whether the trials will run here (no cluster to join): the paths are checked before Ray starts."""
    return not (args.address or os.environ.get("RAY_ADDRESS"))


def _run_grid(sweep, args: argparse.Namespace) -> int:
    from mpcformer.cluster_connect import connect
    from mpcformer.sweep import check_prerequisites, failure_lines, resolve_paths, run_sweep

    here = Path.cwd()
    sweep = resolve_paths(sweep, here)
    print(f"sweep '{sweep.name}': relative paths resolved against {here}; "
          f"results in {sweep.storage_path}/{sweep.name}")
    if _on_this_machine(args):
        check_prerequisites(sweep)
    with connect(args.address):
        summary = run_sweep(sweep, resume=not args.no_resume, base_dir=here)
    print(Path(summary["sweep_dir"], "results.md").read_text())
    for line in failure_lines(summary):
        print(line)
    print(f"{summary['trials']} trials, {summary['failed']} failed; "
          f"best per approximation in {summary['sweep_dir']}/best.json")
    return 1 if summary["failed"] else 0


def _run_suite(sweep, args: argparse.Namespace) -> int:
    from mpcformer.cluster_connect import connect
    from mpcformer.suite import MPC_PHASE, PHASES, check_suite_prerequisites, mpc_arms, resolve_suite_paths, run_suite

    here = Path.cwd()
    sweep = resolve_suite_paths(sweep, here)
    print(f"suite '{sweep.name}': {len(sweep.tasks)} tasks x (teacher + {len(sweep.arms)} arms, "
          f"{len(mpc_arms(sweep))} of them then under MPC); relative paths resolved against {here}; "
          f"results in {sweep.storage_path}/{sweep.name}")
    if args.no_resume:
        print("--no-resume: a suite reuses the trials its folders hold; delete the folder to start over")
    if _on_this_machine(args):
        check_suite_prerequisites(sweep)
    with connect(args.address):
        summary = run_suite(sweep, base_dir=here)
    print(summary["report"]["markdown"])
    for key, cause in summary["errors"].items():
        print(f"failed: {key}: {cause}")
    for key, cause in summary["mpc_errors"].items():
        print(f"failed under MPC: {key}: {cause}")
    ran = summary["ran"]
    trained = sum(ran[phase] for phase in PHASES)
    print(f"{trained} trials and {ran[MPC_PHASE]} MPC runs run this time, {len(summary['errors'])} trials and "
          f"{len(summary['mpc_errors'])} MPC runs failed; report in {summary['sweep_dir']}/suite.md and suite.json")
    return 1 if summary["errors"] or summary["mpc_errors"] else 0


if __name__ == "__main__":
    from mpcformer.cli import job_main

    raise SystemExit(job_main("mpcformer.jobs.sweep"))
