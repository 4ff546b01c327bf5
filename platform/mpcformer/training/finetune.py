"""Teacher fine-tuning: a preset or Hugging Face encoder trained on a task with its task loss.

Recipe (:class:`~mpcformer.training.config.FinetuneConfig`): AdamW, linear warm-up then decay,
cross-entropy (MSE for regression), dynamic padding, evaluation each epoch (and every
``eval_every_steps``) on the validation split held out of the training file, which chooses the
kept checkpoint, and on the dev split, the test set, which is only reported. The model goes through the exact-combo surgery (``gelu+softmax``) before
training, so the saved checkpoint records its approximation and
:func:`mpcformer.models.surgery.load_approximated` restores it.

Outputs under ``output_dir``: ``best/`` (HF model + tokenizer, best validation metric), ``last/``
(resumable), ``metrics.json`` (the kept and the last checkpoint's validation and dev metrics),
``history.json``, ``history.png``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from mpcformer.approx.registry import Combo
from mpcformer.data.loading import encode, resolve_task
from mpcformer.training.config import FinetuneConfig
from mpcformer.training.history import write_run_outputs
from mpcformer.training.losses import task_loss
from mpcformer.training.loop import (
    Checkpointer,
    LoopSettings,
    Phase,
    configure_threads,
    freeze_word_embeddings,
    encode_eval_sets,
    load_training_splits,
    model_inputs,
    run_bookkeeping,
    selection_outputs,
    set_seed,
    train_phases,
)

__all__ = ["run_finetune", "load_checkpoint"]

log = logging.getLogger(__name__)


def load_checkpoint(path: str | Path):
    """``(model, tokenizer)`` of a saved checkpoint folder, with its recorded approximation."""
    from transformers import AutoTokenizer

    from mpcformer.models.surgery import load_approximated

    return load_approximated(str(path)), AutoTokenizer.from_pretrained(str(path))


def _initial_model(cfg: FinetuneConfig, num_labels: int, ckpt: Checkpointer):
    """The model to train: from ``last/`` when resuming, else the preset with exact surgery."""
    if cfg.resume and ckpt.load_state() is not None:
        log.info("resuming fine-tuning from %s", ckpt.last_dir)
        return (*load_checkpoint(ckpt.last_dir), True)
    from mpcformer.models.presets import load_preset
    from mpcformer.models.surgery import approximate

    model, tokenizer = load_preset(cfg.model, num_labels=num_labels, seed=cfg.seed)
    return approximate(model, Combo.parse("exact")), tokenizer, False


def run_finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune ``cfg.model`` on ``cfg.data``; returns (and writes) the metrics dictionary."""
    threads = configure_threads(cfg.num_threads)
    set_seed(cfg.seed)
    spec = resolve_task(cfg.data)
    train_examples, validation_examples, dev_examples = load_training_splits(cfg.data, cfg.seed)
    output_dir = Path(cfg.output_dir)
    ckpt = Checkpointer(output_dir, tokenizer=None)
    model, tokenizer, resumed = _initial_model(cfg, spec.num_labels, ckpt)
    ckpt.tokenizer = tokenizer
    train = encode(train_examples, tokenizer, cfg.data.max_length)
    sets = encode_eval_sets(validation_examples, dev_examples, tokenizer, cfg.data.max_length)

    def loss_fn(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model(**model_inputs(batch)).logits
        return task_loss(logits, batch["labels"], spec.is_regression), {}

    settings = LoopSettings(
        seed=cfg.seed, eval_every_steps=cfg.eval_every_steps, save_every_steps=cfg.save_every_steps,
        eval_batch_size=cfg.eval_batch_size, precision=cfg.precision, pad_id=tokenizer.pad_token_id or 0, progress=cfg.progress,
    )
    if cfg.freeze_word_embeddings:
        freeze_word_embeddings(model)
    phases = [Phase("finetune", cfg.optim, loss_fn, list(model.named_parameters()))]
    started = time.perf_counter()
    state = train_phases(phases, model, train, sets, spec, settings, ckpt, resume=resumed)
    metrics = {
        "job": "finetune",
        "task": spec.name,
        "model": cfg.model,
        "combo": "exact",
        "primary_metric": spec.primary_metric,
        **selection_outputs(state, sets, cfg.data),
        "best_step": state.best_where.get("step"),
        **run_bookkeeping(state, ckpt.best_dir, len(train), len(sets.dev), started, resumed, threads, cfg),
    }
    write_run_outputs(output_dir, metrics, state.history, f"fine-tune {cfg.model} on {spec.name}")
    log.info("fine-tuned %s on %s: kept validation %s, dev (test) %s", cfg.model, spec.name, metrics["validation"],
             metrics["dev"])
    return metrics
