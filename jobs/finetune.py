"""Fine-tune a teacher model (preset or Hugging Face encoder) on a GLUE-style task.

Examples:
    mpcformer finetune --model minilm --task sst2 --data-dir /work/shared/data/sst2
    mpcformer finetune --config jobs/configs/finetune-sst2-minilm.yaml --set optim.epochs=2

Writes <output_dir>/best (HF model + tokenizer, exact-combo surgery recorded), <output_dir>/last
(resumable: rerun the same command to continue), metrics.json, history.json and history.png.
"""

from __future__ import annotations

import argparse
import json

from mpcformer.training.cli_args import add_common_arguments, build_job_config

_FLAGS = {
    "model": "model",
    "epochs": "optim.epochs",
    "lr": "optim.lr",
    "batch_size": "optim.batch_size",
    "max_steps": "optim.max_steps",
    "warmup_ratio": "optim.warmup_ratio",
    "weight_decay": "optim.weight_decay",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="preset (tiny, minilm, bert-base, bert-large) or HF model name/path")
    parser.add_argument("--epochs", type=float, help="passes over the training set (fractions allowed)")
    parser.add_argument("--lr", type=float, help="peak learning rate (AdamW)")
    parser.add_argument("--batch-size", type=int, help="training batch size")
    parser.add_argument("--max-steps", type=int, help="stop after this many updates")
    parser.add_argument("--warmup-ratio", type=float, help="fraction of updates spent warming up the learning rate")
    parser.add_argument("--weight-decay", type=float, help="AdamW weight decay (not on biases/LayerNorm)")
    add_common_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from mpcformer.training.config import FinetuneConfig
    from mpcformer.training.finetune import run_finetune

    cfg = build_job_config(FinetuneConfig, args, _FLAGS)
    metrics = run_finetune(cfg)
    print(json.dumps({k: metrics[k] for k in ("task", "model", "dev", "checkpoint", "steps", "train_seconds")}, indent=2))
    return 0


if __name__ == "__main__":
    from mpcformer.cli import job_main

    raise SystemExit(job_main("mpcformer.jobs.finetune"))
