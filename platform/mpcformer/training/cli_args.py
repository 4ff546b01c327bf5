"""Command-line plumbing shared by ``mpcformer finetune`` and ``mpcformer distill``.

A job's config comes from ``--config FILE.yaml`` (or the config class's defaults), then dotted
``--set key=value`` overrides, then the convenience flags (``--lr`` is ``--set optim.lr=...``).
Values of ``--set`` are parsed as YAML (``--set data.max_length=64``, ``--set resume=false``).
Light imports only: the CLI builds every job's parser at start-up.
"""

from __future__ import annotations

import argparse
from typing import Any


from mpcformer.config import parse_set

__all__ = ["add_common_arguments", "collect_overrides", "parse_set", "build_job_config"]

#: flag dest -> dotted config key, shared by every training job
_COMMON = {
    "task": "data.task",
    "data_dir": "data.data_dir",
    "train_file": "data.train_file",
    "dev_file": "data.dev_file",
    "max_train_examples": "data.max_train_examples",
    "max_dev_examples": "data.max_dev_examples",
    "validation_fraction": "data.validation_fraction",
    "max_length": "data.max_length",
    "output_dir": "output_dir",
    "seed": "seed",
    "threads": "num_threads",
    "eval_every": "eval_every_steps",
    "save_every": "save_every_steps",
}


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config``, ``--set`` and the data/output/seed flags every training job takes."""
    parser.add_argument("--config", help="YAML config file or a shipped config's name, e.g. finetune-tiny "
                                            "(default: the built-in defaults)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, dotted (e.g. stage2.temperature=2); repeatable")
    parser.add_argument("--task", help="task name: sst2, cola, mrpc, stsb, rte, wnli, qqp, mnli, qnli, imdb "
                                       "(glue/ prefix and GLUE folder names such as STS-B ok)")
    parser.add_argument("--data-dir", help="folder with train.<ext> and dev.<ext> (tsv, csv, jsonl, parquet), e.g. "
                                           "a GLUE task folder; default: the HF hub")
    parser.add_argument("--train-file", help="training file (overrides --data-dir for train)")
    parser.add_argument("--dev-file", help="dev file (overrides --data-dir for dev)")
    parser.add_argument("--max-train-examples", type=int, help="use a seeded random subset of this many training examples")
    parser.add_argument("--max-dev-examples", type=int, help="use a seeded random subset of this many dev examples")
    parser.add_argument("--validation-fraction", type=float,
                        help="share of the training file held out to choose checkpoints on (default 0.1, at least "
                             "data.min_validation_examples; 0: keep the last checkpoint); dev is only reported")
    parser.add_argument("--max-length", type=int, help="tokens per example after truncation")
    parser.add_argument("--output-dir", help="where checkpoints, metrics.json and history go")
    parser.add_argument("--seed", type=int, help="random seed (data order, init, dropout)")
    parser.add_argument("--threads", type=int, help="torch threads (default: every CPU this process may use)")
    parser.add_argument("--eval-every", type=int, help="evaluate on validation and dev every N updates (default: each epoch)")
    parser.add_argument("--save-every", type=int, help="write a resumable checkpoint every N updates")
    parser.add_argument("--no-resume", dest="resume", action="store_false", default=None,
                        help="start afresh even if output_dir/last exists")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                        help="no progress bars")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny budget (256 training examples, a few updates) to check a setup in about a "
                             "minute; writes to <output_dir>-quick unless --output-dir is given; flags and --set still win")


def collect_overrides(args: argparse.Namespace, flag_keys: dict[str, str | tuple[str, ...]]) -> dict[str, Any]:
    """Dotted overrides from ``--set`` then from every flag the user gave (flags win); a flag may set
    several keys (``flag_keys`` value a tuple)."""
    return _given(args, flag_keys)[0]


#: flags whose name is not their dest's
_FLAG_NAMES = {"resume": "--no-resume", "progress": "--no-progress"}


def _given(args: argparse.Namespace, flag_keys: dict[str, str | tuple[str, ...]]) -> tuple[dict[str, Any], dict[str, str]]:
    """``(overrides, names)``: the dotted overrides, and the flag that set each key (for errors; keys
    only ``--set`` gave are left out)."""
    overrides = parse_set(getattr(args, "set", []) or [])
    names: dict[str, str] = {}
    for dest, keys in {**_COMMON, "resume": "resume", "progress": "progress", **flag_keys}.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        for key in (keys,) if isinstance(keys, str) else keys:
            overrides[key] = value
            names[key] = _FLAG_NAMES.get(dest, "--" + dest.replace("_", "-"))
    return overrides, names


def build_job_config(cls: type, args: argparse.Namespace, flag_keys: dict[str, str | tuple[str, ...]]):
    """The job's validated config: ``--config`` file (or defaults) plus overrides; a bad value is
    blamed on the flag, ``--quick`` or ``--set`` that gave it."""
    from mpcformer.config import job_config

    overrides, names = _given(args, flag_keys)
    quick = getattr(args, "quick", False)
    if quick:
        names = {**{key: "--quick" for key in cls.QUICK if key not in overrides}, **names}
        overrides = {**cls.QUICK, **overrides}
    cfg = job_config(cls, args.config, overrides, names)
    if quick and "output_dir" not in overrides:  # never resume or overwrite a full run's checkpoints
        cfg = cfg.model_copy(update={"output_dir": cfg.output_dir.rstrip("/") + "-quick"})
    return cfg
