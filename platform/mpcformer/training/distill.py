"""MPCFormer distillation: an approximated student learns from the fine-tuned teacher.

The student is the teacher's architecture with ``combo`` (e.g. ``quad+2quad``) swapped in,
initialised from the teacher's weights. Two stages (see :mod:`mpcformer.training.losses`):

1. layer-wise: MSE on pre-normaliser attention scores of every layer and on the hidden states
   (embedding output and every layer), through a learned projection if widths differ;
2. prediction layer: soft cross-entropy on the logits at ``stage2.temperature`` (MSE for
   regression).

With a LayerNorm normaliser that takes calibrated ranges (``ln:fit``), stage 1 trains with exact
LayerNorm and stage 2 starts by fitting the normaliser to each LayerNorm's variances
(:func:`~mpcformer.models.surgery.calibrate_layernorms`, ``layernorm_calibration`` settings); the
ranges are saved with the student and sent to the client with the architecture.

Baselines with the same budget (``stage1.epochs + stage2.epochs`` at stage 2's batch size,
learning rate ``baseline_lr``), task loss only: ``wo_d`` (w/o{d}, teacher init) and ``wo_pd``
(w/o{p,d}, random init). The checkpoint best on the validation split (held out of the training
file) goes to ``<output_dir>/best``; the dev split is the test set, reported for the kept and the
last checkpoint and never used for a choice. ``metrics.json``, ``history.json`` and
``history.png`` sit beside it.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mpcformer.approx.registry import DEFAULT_LAYERNORM, Combo, get
from mpcformer.data.loading import EncodedDataset, encode, resolve_task
from mpcformer.errors import UserError
from mpcformer.models.surgery import CALIBRATION_KEY
from mpcformer.training.config import DistillConfig, OptimConfig
from mpcformer.training.finetune import load_checkpoint
from mpcformer.training.history import write_run_outputs
from mpcformer.training.losses import HiddenProjection, layerwise_loss, prediction_distillation_loss, task_loss
from mpcformer.training.loop import (
    Checkpointer,
    LoopSettings,
    Phase,
    batches,
    configure_threads,
    freeze_word_embeddings,
    encode_eval_sets,
    evaluate,
    load_training_splits,
    model_inputs,
    run_bookkeeping,
    selection_outputs,
    set_seed,
    train_phases,
)

__all__ = ["run_distill", "reinitialise"]

log = logging.getLogger(__name__)


def reinitialise(model: nn.Module, seed: int) -> nn.Module:
    """Draw fresh random weights (the model's own ``_init_weights``) for every module, seeded."""
    torch.manual_seed(seed)
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if getattr(tensor, "_is_hf_initialized", False):
            tensor._is_hf_initialized = False  # transformers skips tensors marked as loaded
    with torch.no_grad():
        model.apply(model._init_weights)
    return model


def _teacher(cfg: DistillConfig, num_labels: int):
    if not Path(cfg.teacher).is_dir():
        raise UserError(f"teacher checkpoint not found: {cfg.teacher} (run `mpcformer finetune` first, or fix the path)")
    teacher, tokenizer = load_checkpoint(cfg.teacher)
    if teacher.config.num_labels != num_labels:
        raise UserError(
            f"teacher {cfg.teacher} has {teacher.config.num_labels} labels but task '{cfg.data.task}' has {num_labels}"
        )
    teacher.eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher, tokenizer


def _calibrates(cfg: DistillConfig, combo: Combo) -> bool:
    """Whether stage 2 starts by calibrating the LayerNorm normaliser (see LayerNormCalibrationConfig)."""
    takes_ranges = "first_low" in get(combo.layernorm, "layernorm").params
    return takes_ranges and cfg.layernorm_calibration.enabled and cfg.baseline == "none"


def _stage1_combo(cfg: DistillConfig, combo: Combo) -> Combo:
    """The combination stage 1 trains: exact LayerNorm when stage 2 calibrates the normaliser."""
    return replace(combo, layernorm=DEFAULT_LAYERNORM, layernorm_params={}) if _calibrates(cfg, combo) else combo


def _student(cfg: DistillConfig, combo: Combo, ckpt: Checkpointer):
    """``(student, resumed)``: from ``last/`` when resuming, else the teacher with ``combo``."""
    from mpcformer.models.surgery import approximate, load_approximated

    if cfg.resume and ckpt.load_state() is not None:
        log.info("resuming distillation from %s", ckpt.last_dir)
        return load_approximated(str(ckpt.last_dir)), True
    student = approximate(load_approximated(cfg.teacher), _stage1_combo(cfg, combo))
    if cfg.baseline == "wo_pd":
        reinitialise(student, cfg.seed)
    return student, False


def _stage1_loss(teacher: nn.Module, student: nn.Module, projection: nn.Module, cfg: DistillConfig):
    from mpcformer.models.surgery import record_attention_scores

    def loss_fn(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        inputs = model_inputs(batch)
        with torch.no_grad(), record_attention_scores(teacher) as teacher_scores:
            teacher_out = teacher(**inputs, output_hidden_states=True)
        with record_attention_scores(student) as student_scores:
            student_out = student(**inputs, output_hidden_states=True)
        attention, hidden = layerwise_loss(
            student_scores, teacher_scores, student_out.hidden_states, teacher_out.hidden_states,
            batch["attention_mask"], projection,
        )
        loss = cfg.attention_weight * attention + cfg.hidden_weight * hidden
        return loss, {"attention_loss": attention.item(), "hidden_loss": hidden.item()}

    return loss_fn


def _stage2_loss(teacher: nn.Module, student: nn.Module, regression: bool, temperature: float):
    def loss_fn(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        inputs = model_inputs(batch)
        with torch.no_grad():
            teacher_logits = teacher(**inputs).logits
        loss = prediction_distillation_loss(student(**inputs).logits, teacher_logits, regression, temperature)
        if regression:
            return loss, {}
        # KL(teacher || student) = soft CE - teacher entropy: 0 when the student matches exactly
        teacher_probs = torch.softmax(teacher_logits / temperature, dim=-1)
        entropy = -(teacher_probs * torch.log_softmax(teacher_logits / temperature, dim=-1)).sum(-1).mean()
        return loss, {"kl": (loss - entropy).item()}

    return loss_fn


def _task_loss(student: nn.Module, regression: bool):
    def loss_fn(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        return task_loss(student(**model_inputs(batch)).logits, batch["labels"], regression), {}

    return loss_fn


def _calibration(cfg: DistillConfig, combo: Combo, student: nn.Module, train: EncodedDataset, pad_id: int):
    """Stage 2's start: calibrate the student's LayerNorm normaliser on a seeded subset of the
    training examples, unless it already runs calibrated with ``combo`` (a resumed stage 2)."""
    from mpcformer.models.surgery import calibrate_layernorms, combo_of, layernorm_calibration

    def start() -> None:
        record = getattr(student.config, CALIBRATION_KEY, None)
        if combo_of(student) == combo and layernorm_calibration(record, combo.layernorm):
            return
        count = min(cfg.layernorm_calibration.examples, len(train))
        chosen = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))[:count].tolist()
        subset = EncodedDataset([train.features[i] for i in chosen], [train.labels[i] for i in chosen], train.regression)
        inputs = (model_inputs(batch) for batch in batches(subset, cfg.eval_batch_size, None, pad_id))
        calibrate_layernorms(student, combo, inputs, cfg.layernorm_calibration.margin)

    return start


def _phases(cfg: DistillConfig, combo: Combo, teacher, student, projection, train, pad_id: int, regression: bool) -> list[Phase]:
    student_params = list(student.named_parameters())
    if cfg.baseline != "none":
        budget = OptimConfig(**{
            **cfg.stage2.model_dump(exclude={"temperature"}),
            "epochs": cfg.stage1.epochs + cfg.stage2.epochs,
            "lr": cfg.baseline_lr,
            "max_steps": None if cfg.stage1.max_steps is None and cfg.stage2.max_steps is None
            else (cfg.stage1.max_steps or 0) + (cfg.stage2.max_steps or 0),
        })
        return [Phase(f"baseline-{cfg.baseline}", budget, _task_loss(student, regression), student_params)]
    projection_params = [(f"projection.{n}", p) for n, p in projection.named_parameters()]
    stage1 = Phase("stage1", cfg.stage1, _stage1_loss(teacher, student, projection, cfg),
                   student_params + projection_params, select_best=False)
    stage2 = Phase("stage2", cfg.stage2, _stage2_loss(teacher, student, regression, cfg.stage2.temperature),
                   student_params, start=_calibration(cfg, combo, student, train, pad_id) if _calibrates(cfg, combo) else None)
    return [stage1, stage2]


def run_distill(cfg: DistillConfig) -> dict[str, Any]:
    """Distil (or train a baseline of) ``cfg.combo`` from ``cfg.teacher``; returns the metrics."""
    combo = Combo.parse(cfg.combo)
    threads = configure_threads(cfg.num_threads)
    set_seed(cfg.seed)
    spec = resolve_task(cfg.data)
    train_examples, validation_examples, dev_examples = load_training_splits(cfg.data, cfg.seed)
    teacher, tokenizer = _teacher(cfg, spec.num_labels)
    output_dir = Path(cfg.output_dir)
    ckpt = Checkpointer(output_dir, tokenizer)
    student, resumed = _student(cfg, combo, ckpt)
    projection = HiddenProjection(student.config.hidden_size, teacher.config.hidden_size)
    ckpt.extra_modules = {"projection": projection}
    train = encode(train_examples, tokenizer, cfg.data.max_length)
    sets = encode_eval_sets(validation_examples, dev_examples, tokenizer, cfg.data.max_length)
    dev = sets.dev
    pad_id = tokenizer.pad_token_id or 0

    teacher_dev = evaluate(teacher, dev, spec, cfg.eval_batch_size, pad_id)
    initial_dev = None if resumed else evaluate(student, dev, spec, cfg.eval_batch_size, pad_id)
    log.info("teacher dev %s; student before training %s", teacher_dev, initial_dev)
    settings = LoopSettings(
        seed=cfg.seed, eval_every_steps=cfg.eval_every_steps, save_every_steps=cfg.save_every_steps,
        eval_batch_size=cfg.eval_batch_size, precision=cfg.precision, pad_id=pad_id, progress=cfg.progress,
    )
    if cfg.freeze_word_embeddings:
        freeze_word_embeddings(student)
    started = time.perf_counter()
    phases = _phases(cfg, combo, teacher, student, projection, train, pad_id, spec.is_regression)
    state = train_phases(phases, student, train, sets, spec, settings, ckpt, resume=resumed)
    primary = spec.primary_metric
    selection = selection_outputs(state, sets, cfg.data)
    best = selection["dev"]
    metrics = {
        "job": "distill",
        "task": spec.name,
        "teacher": cfg.teacher,
        "combo": combo.name,
        "baseline": cfg.baseline,
        "method": {"none": "mpcformer", "wo_d": "w/o{d}", "wo_pd": "w/o{p,d}"}[cfg.baseline],
        "primary_metric": primary,
        "teacher_dev": teacher_dev,
        "initial_dev": initial_dev,
        **selection,
        "relative_to_teacher": best.get(primary, float("nan")) / teacher_dev[primary] if teacher_dev[primary] else None,
        "best_phase": state.best_where.get("phase"),
        "best_step": state.best_where.get("step"),
        "final_losses": _final_losses(state.history),
        "layernorm_calibration": getattr(student.config, CALIBRATION_KEY, None),
        **run_bookkeeping(state, ckpt.best_dir, len(train), len(dev), started, resumed, threads, cfg),
    }
    write_run_outputs(output_dir, metrics, state.history, f"{metrics['method']} {combo.name} on {spec.name}")
    log.info("%s %s on %s: kept validation %s, dev (test) %s (teacher %s)", metrics["method"], combo.name, spec.name,
             metrics["validation"], best, teacher_dev)
    return metrics


def _final_losses(history: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """First and last logged training loss of each phase."""
    out: dict[str, dict[str, float]] = {}
    for record in history:
        if record["kind"] != "train":
            continue
        entry = out.setdefault(record["phase"], {"first": record["loss"]})
        entry["last"] = record["loss"]
    return out
