"""The ``mpcformer`` command line: one subcommand per job module in ``mpcformer.jobs``.

Each job module defines ``add_arguments(parser)`` and ``run(args) -> int`` and keeps its top-level
imports light (heavy imports happen inside ``run``), so ``mpcformer --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from mpcformer import __version__
from mpcformer.errors import PartyFailure, Terminated, UserError

__all__ = ["main", "COMMANDS", "job_main"]

#: subcommand -> (job module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("mpcformer.jobs.demo", "the whole story on a local Ray cluster: fine-tune, distill, private inference"),
    "finetune": ("mpcformer.jobs.finetune", "fine-tune a teacher model on a GLUE-style task"),
    "distill": ("mpcformer.jobs.distill", "two-stage distillation of an approximated student from its teacher"),
    "sweep": ("mpcformer.jobs.sweep", "run a distillation sweep (Ray Tune) from a YAML grid, or a GLUE suite (tasks:)"),
    "infer": ("mpcformer.jobs.infer", "encrypted inference batches through Ray party actors"),
    "bench": ("mpcformer.jobs.bench", "benchmark approximations under MPC (latency, rounds, bytes)"),
    "approximations": ("mpcformer.jobs.approximations", "list the registered MPC-friendly approximations"),
    "monitor": ("mpcformer.jobs.monitor", "start a real Prometheus scraping a local Ray cluster and print its URL"),
    "netns": ("mpcformer.jobs.netns", "Ray nodes on separate network stacks of this machine (namespaces; root)"),
}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _load(module_name: str):
    return importlib.import_module(module_name)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mpcformer",
        description="Fast, accurate, private Transformer inference with secure multi-party computation.",
    )
    parser.add_argument("--version", action="version", version=f"mpcformer {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, (module_name, help_text) in COMMANDS.items():
        module = _load(module_name)
        sp = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip().splitlines()[0])
        module.add_arguments(sp)
        sp.set_defaults(_module=module_name)
    return parser


def _dispatch(module_name: str, args: argparse.Namespace, prog: str) -> int:
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(_load(module_name).run(args) or 0)
    except UserError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except PartyFailure as err:  # a party or the dealer failed: its first line names who and why
        print(f"{prog}: error: {str(err).splitlines()[0]} (run with -v for the party logs)", file=sys.stderr)
        return 1
    except KeyboardInterrupt as stop:  # Ctrl-C (130) or SIGTERM (143); the job said how to resume
        print(f"{prog}: {'terminated' if isinstance(stop, Terminated) else 'interrupted'}", file=sys.stderr)
        return 143 if isinstance(stop, Terminated) else 130


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return _dispatch(args._module, args, f"mpcformer {args.command}")


def job_main(module_name: str, argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m mpcformer.jobs.<name>`` (what ``ray job submit`` and KubeRay call)."""
    module = _load(module_name)
    name = module_name.rsplit(".", 1)[-1]
    parser = _Parser(prog=f"python -m {module_name}", description=(module.__doc__ or name).strip().splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    module.add_arguments(parser)
    args = parser.parse_args(argv)
    return _dispatch(module_name, args, parser.prog)
