"""Encrypted inference batches through Ray party actors (resumable; writes predictions and a summary).

    mpcformer infer --config jobs/configs/infer-tiny.yaml --out runs/infer-tiny
    python -m mpcformer.jobs.infer --model minilm --data /data/sst2 --approx quad+2quad,exact --groups 2

Flags override the YAML; ``--set key.sub=value`` overrides any field (e.g. ``--set group.mpc.timeout_s=60``).
Inside ``ray job submit`` (RAY_ADDRESS set) it joins that cluster, else it starts a local one.
A party that rejects its input (a token id outside the vocabulary, a sequence longer than the
model's positions, ...) stops the job with one error line naming the party, exit status 2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

#: Flag -> dotted config key.
_FLAG_KEYS = {
    "model": "model", "split": "split", "batch_size": "batch_size", "limit": "limit", "groups": "pool.groups",
    "strategy": "group.strategy", "out": "out", "task": "data.task", "max_length": "data.max_length",
    "timeout": "group.mpc.timeout_s", "job_name": "job_name",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML config (InferConfig) or a shipped one's name (infer, infer-tiny)")
    parser.add_argument("--model", help="preset (tiny, minilm, bert-base, bert-large), HF path or distilled folder")
    parser.add_argument("--data", help="data folder (train.<ext>, dev.<ext>) or one file for --split")
    parser.add_argument("--task", help="task name (sst2, glue/rte, ...) for columns and metric")
    parser.add_argument("--split", choices=["train", "dev"])
    parser.add_argument("--approx", help="comma-separated combos, e.g. quad+2quad,exact")
    parser.add_argument("--batch-size", type=int, help="sequences per MPC forward")
    parser.add_argument("--max-length", type=int, help="tokens per sequence after truncation")
    parser.add_argument("--limit", type=int, help="only the first N examples")
    parser.add_argument("--groups", type=int, help="K party groups running concurrently")
    parser.add_argument("--strategy", choices=["auto", "STRICT_SPREAD", "SPREAD", "PACK", "STRICT_PACK"])
    parser.add_argument("--timeout", type=float, help="deadline in seconds of every MPC step (rendezvous, collective)")
    parser.add_argument("--out", help="output folder; re-running with the same folder resumes")
    parser.add_argument("--job-name", help="name in logs and metrics")
    check = parser.add_mutually_exclusive_group()
    check.add_argument("--check-plaintext", action="store_true",
                       help="evaluation mode: the client also loads the owner's model for plaintext reference logits")
    check.add_argument("--no-plaintext-check", action="store_true", help="no plaintext reference logits (the default)")
    parser.add_argument("--insecure-transport", action="store_true",
                        help="gloo over plain TCP even when the parties are on different nodes (default: TLS 1.3 there)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config field")
    parser.add_argument("--address", help="Ray address (default: RAY_ADDRESS, else a new local cluster)")
    parser.add_argument("--num-cpus", type=_positive_int, help="logical CPUs of a new local Ray cluster")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    from mpcformer.config import parse_set

    overrides: dict[str, Any] = {
        key: getattr(args, flag) for flag, key in _FLAG_KEYS.items() if getattr(args, flag) is not None
    }
    if args.approx:
        overrides["combos"] = [c for c in args.approx.split(",") if c.strip()]
    if args.check_plaintext or args.no_plaintext_check:
        overrides["check_plaintext"] = bool(args.check_plaintext)
    if args.insecure_transport:
        overrides["group.mpc.transport"] = "tcp"
    if args.data:
        path = Path(args.data)
        overrides["data.data_dir" if _is_folder(path) else f"data.{args.split or 'dev'}_file"] = str(path)
    overrides.update(parse_set(args.set))
    return overrides


def _is_folder(path: Path) -> bool:
    """A data folder: an existing one, or (the client's data is often not on the driver's machine)
    a path without a file extension."""
    return path.is_dir() or (not path.exists() and not path.suffix)


def _flag_names(args: argparse.Namespace) -> dict[str, str]:
    """Dotted config key -> the flag that set it, so errors name the flag (``--set`` wins, as in
    :func:`_overrides`)."""
    from mpcformer.config import parse_set

    names = {key: "--" + flag.replace("_", "-") for flag, key in _FLAG_KEYS.items() if getattr(args, flag) is not None}
    names.update({"combos": "--approx", "check_plaintext": "--check-plaintext"})
    if args.data:
        names.update({key: "--data" for key in ("data.data_dir", "data.dev_file", "data.train_file")})
    return {key: flag for key, flag in names.items() if key not in parse_set(args.set)}


def build_infer_config(args: argparse.Namespace):
    from mpcformer.inference.job import InferConfig
    from mpcformer.config import build_config, load_config

    overrides, names = _overrides(args), _flag_names(args)
    if args.config:
        return load_config(InferConfig, args.config, overrides, names)  # a path or a shipped name
    return build_config(InferConfig, {}, overrides, source="command line", override_names=names)


def run(args: argparse.Namespace) -> int:
    import os
    import sys

    from mpcformer.inference.batches import BatchStore
    from mpcformer.inference.job import check_local_inputs, run_infer
    from mpcformer.cluster.scheduler import JobFailed
    from mpcformer.cluster_connect import connect
    from mpcformer.errors import UserError

    cfg = build_infer_config(args)
    if not (args.address or os.environ.get("RAY_ADDRESS")):  # the driver runs where the parties will
        check_local_inputs(cfg)
    need = cfg.pool.groups * (cfg.group.world_size * cfg.group.cpus_per_party + cfg.group.cpus_for_dealer)
    with connect(address=args.address, num_cpus=args.num_cpus or max(2, int(need + 0.999))):
        try:
            status = run_infer(cfg, progress=not args.no_progress)
        except UserError:  # a bad config or a party rejecting its input: one line, exit 2
            raise
        except (JobFailed, KeyboardInterrupt) as err:  # Ctrl-C, SIGTERM (`ray job stop`, Kubernetes)
            if isinstance(err, JobFailed):
                print(f"infer: {err}", file=sys.stderr)
            print(f"infer: {_resume_hint(BatchStore(cfg.out).finished_batches(), cfg.out)}", file=sys.stderr)
            if isinstance(err, KeyboardInterrupt):
                raise  # the CLI exits 130 (Ctrl-C) or 143 (SIGTERM)
            return 1
    print(json.dumps(status, indent=2, sort_keys=True))
    if status["complete"]:  # the client wrote the predictions and the summary; the driver read neither
        print(f"the client wrote {Path(status['out']) / 'predictions.jsonl'} and {status['summary']}")
    return 0 if status["complete"] else 1


def _resume_hint(finished: int, out: str) -> str:
    if finished:
        return f"{finished} finished batches are kept in {out}; run the same command again (same --out) to resume"
    return f"no batch finished; fix the cause and run again (the same --out {out} starts over)"


if __name__ == "__main__":
    from mpcformer.cli import job_main

    raise SystemExit(job_main("mpcformer.jobs.infer"))
