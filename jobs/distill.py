"""Distill an MPC-friendly student from a fine-tuned teacher (MPCFormer), or train a baseline.

Examples:
    mpcformer distill --teacher runs/finetune/sst2-minilm/best --combo quad+2quad \
        --data-dir /work/shared/data/sst2
    mpcformer distill --config jobs/configs/distill-sst2-minilm.yaml --baseline 'w/o{d}'

Stage 1 matches attention scores and hidden states (MSE), stage 2 the logits (soft cross-entropy
at --temperature). --baseline w/o{d} (teacher init) or w/o{p,d} (random init) trains the
approximated model with the task loss only, same budget. Keeps <output_dir>/best (dev metric),
<output_dir>/last (resumable), metrics.json, history.json and history.png.
"""

from __future__ import annotations

import argparse
import json

from mpcformer.training.cli_args import add_common_arguments, build_job_config

_FLAGS = {
    "teacher": "teacher",
    "combo": "combo",
    "baseline": "baseline",
    "stage1_epochs": "stage1.epochs",
    "stage1_lr": "stage1.lr",
    "stage1_max_steps": "stage1.max_steps",
    "stage2_epochs": "stage2.epochs",
    "stage2_lr": "stage2.lr",
    "stage2_max_steps": "stage2.max_steps",
    "temperature": "stage2.temperature",
    "batch_size": ("stage1.batch_size", "stage2.batch_size"),
}
_BASELINES = ("none", "wo_d", "wo_pd", "w/o{d}", "w/o{p,d}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", help="fine-tuned teacher checkpoint folder (from `mpcformer finetune`)")
    parser.add_argument(
        "--combo", help="approximation, <activation>+<normaliser>[+ln:<variant>]: quad+2quad, quad+2quad-fit+ln:fit, ..."
    )
    parser.add_argument("--baseline", choices=_BASELINES,
                        help="train a baseline instead of distilling: w/o{d} (teacher init) or w/o{p,d} (random init)")
    parser.add_argument("--stage1-epochs", type=float, help="stage 1 (attention + hidden states) epochs")
    parser.add_argument("--stage1-lr", type=float, help="stage 1 learning rate")
    parser.add_argument("--stage1-max-steps", type=int, help="stage 1 update cap")
    parser.add_argument("--stage2-epochs", type=float, help="stage 2 (logits) epochs")
    parser.add_argument("--stage2-lr", type=float, help="stage 2 learning rate (baselines use it too)")
    parser.add_argument("--stage2-max-steps", type=int, help="stage 2 update cap")
    parser.add_argument("--batch-size", type=int, help="batch size of both stages")
    parser.add_argument("--temperature", type=float, help="stage 2 soft cross-entropy temperature")
    add_common_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from mpcformer.training.config import DistillConfig
    from mpcformer.training.distill import run_distill

    cfg = build_job_config(DistillConfig, args, _FLAGS)
    metrics = run_distill(cfg)
    keys = ("task", "combo", "method", "teacher_dev", "dev", "relative_to_teacher", "checkpoint", "train_seconds")
    print(json.dumps({k: metrics[k] for k in keys}, indent=2))
    return 0


if __name__ == "__main__":
    from mpcformer.cli import job_main

    raise SystemExit(job_main("mpcformer.jobs.distill"))
