"""The training loop shared by fine-tuning, distillation and the baselines.

A run is a list of :class:`Phase` objects (fine-tuning: one; distillation: stage 1 then stage 2;
a baseline: one). Each phase has its own AdamW optimiser and linear warm-up/decay schedule and a
loss function of a padded batch. The loop

- shuffles with a generator seeded by ``(seed, phase, epoch)``, so the order of examples does not
  depend on where a run was interrupted;
- evaluates every ``eval_every_steps`` updates and at the end of each epoch on the validation
  split (held out of the training file) and on the dev split (the test set), keeping the model
  best on the *validation* split's primary metric in ``<output_dir>/best``; the dev split is
  recorded, never used for a choice (without a validation split, the last evaluation is kept);
- writes a resumable checkpoint to ``<output_dir>/last`` every ``save_every_steps`` updates
  (model + tokenizer in Hugging Face format, plus ``training_state.pt``: optimiser, scheduler,
  RNG state, position, history); a rerun with ``resume`` continues from it, skipping the batches
  already seen in the current epoch.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from mpcformer.data.loading import EncodedDataset, TextExamples, collate, encode, load_split
from mpcformer.data.metrics import compute_metrics
from mpcformer.data.tasks import TaskSpec
from mpcformer.training.config import OptimConfig

__all__ = [
    "Phase",
    "RunState",
    "Checkpointer",
    "available_cpus",
    "configure_threads",
    "freeze_word_embeddings",
    "set_seed",
    "make_optimizer",
    "phase_steps",
    "batches",
    "evaluate",
    "train_phases",
    "LoopSettings",
    "model_inputs",
    "write_json",
    "eval_summary",
    "EvalSets",
    "load_training_splits",
    "encode_eval_sets",
    "selection_outputs",
]

log = logging.getLogger(__name__)

#: loss function of a padded batch -> (loss to minimise, named float terms for the history)
LossFn = Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]
_STATE_FILE = "training_state.pt"
_BATCHES_PER_CHUNK = 50


# ----------------------------------------------------------------------------- environment
def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _busy_cpus(window_s: float = 0.3) -> float:
    """CPUs busy right now, from ``/proc/stat`` over ``window_s``; else the 1-minute load average.

    The load average lags by minutes: just after an install or a previous job it still counts them, and
    a fresh machine would get one thread for a whole run.
    """
    def times() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    try:
        total0, idle0 = times()
        time.sleep(window_s)
        total1, idle1 = times()
        cpus = os.cpu_count() or 1
        return cpus * (1.0 - (idle1 - idle0) / max(total1 - total0, 1))
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0]
        except (AttributeError, OSError):
            return 0.0


def configure_threads(num_threads: int | None) -> int:
    """``torch.set_num_threads``: the requested count, else the CPUs not busy now.

    Default: ``clamp(round(cpus - busy), 1, cpus)`` with ``cpus`` this process's affinity and ``busy``
    the CPUs in use over a fraction of a second (:func:`_busy_cpus`). On a shared machine, intra-op
    threads that outnumber the idle cores wait on each other at every barrier (a 2-thread matmul can
    run 10x slower than a 1-thread one when the other core is taken), so a busy machine gets one thread.
    """
    cpus = available_cpus()
    if num_threads is None:
        num_threads = min(cpus, max(1, round(cpus - _busy_cpus())))
    torch.set_num_threads(num_threads)
    log.info("torch threads: %d (of %d CPUs)", num_threads, cpus)
    return num_threads


def freeze_word_embeddings(model: nn.Module) -> None:
    """Stop training the word-embedding table (the input embeddings of any Hugging Face model)."""
    model.get_input_embeddings().weight.requires_grad_(False)


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU) random generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- optimisation
def make_optimizer(named_params: list[tuple[str, nn.Parameter]], cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW with ``cfg.weight_decay`` on weight matrices only (not biases, not LayerNorm)."""
    decay, no_decay = [], []
    for name, param in named_params:
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "LayerNorm" in name or "layernorm" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr)


def _linear_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """lr factor: step/warmup during warm-up, then (total - step)/(total - warmup) down to 0."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def phase_steps(cfg: OptimConfig, num_examples: int) -> tuple[int, int]:
    """``(steps_per_epoch, total_steps)``: ``ceil(N / batch)`` and ``ceil(epochs * that)`` or ``max_steps``."""
    per_epoch = math.ceil(num_examples / cfg.batch_size)
    total = cfg.max_steps if cfg.max_steps is not None else math.ceil(cfg.epochs * per_epoch)
    return per_epoch, max(1, total)


# ----------------------------------------------------------------------------- batching and evaluation
def _length_grouped_order(lengths: list[int], batch_size: int, generator: torch.Generator) -> list[int]:
    """A shuffled order in which each batch holds examples of similar length (less padding).

    Shuffle; cut into chunks of 50 batches; sort each chunk by length; cut into batches; shuffle
    the batches (HF's ``group_by_length`` idea). Deterministic in ``generator``'s seed.
    """
    order = torch.randperm(len(lengths), generator=generator).tolist()
    chunk = batch_size * _BATCHES_PER_CHUNK
    grouped: list[list[int]] = []
    for begin in range(0, len(order), chunk):
        part = sorted(order[begin:begin + chunk], key=lambda i: lengths[i], reverse=True)
        grouped += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    batch_order = torch.randperm(len(grouped), generator=generator).tolist()
    return [index for b in batch_order for index in grouped[b]]


def batches(dataset: EncodedDataset, batch_size: int, order_seed: int | None, pad_id: int, start: int = 0):
    """Padded batches of ``dataset`` from batch number ``start`` on.

    ``order_seed`` None: sorted by length (evaluation); else length-grouped shuffled batches
    (:func:`_length_grouped_order`), the same for the same seed.
    """
    lengths = [len(f["input_ids"]) for f in dataset.features]
    if order_seed is None:
        order = sorted(range(len(dataset)), key=lambda i: lengths[i])
    else:
        order = _length_grouped_order(lengths, batch_size, torch.Generator().manual_seed(order_seed))
    for begin in range(start * batch_size, len(order), batch_size):
        yield collate([dataset[i] for i in order[begin:begin + batch_size]], pad_id)


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keyword arguments of a Hugging Face encoder (everything but ``labels``)."""
    return {k: v for k, v in batch.items() if k != "labels"}


@torch.no_grad()
def evaluate(model: nn.Module, dataset: EncodedDataset, spec: TaskSpec, batch_size: int, pad_id: int) -> dict[str, float]:
    """Dev metrics of ``model`` (GLUE's, see :mod:`mpcformer.data.metrics`), in eval mode."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for batch in batches(dataset, batch_size, None, pad_id):  # sorted by length: less padding
        logits.append(model(**model_inputs(batch)).logits.float())
        labels.append(batch["labels"])
    model.train(was_training)
    return compute_metrics(torch.cat(logits).numpy(), torch.cat(labels).numpy(), spec)


# ----------------------------------------------------------------------------- checkpoints
@dataclass
class RunState:
    """Where a run is and what it has seen; saved with every resumable checkpoint."""

    phase_index: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0  # updates done in the current phase
    best_metric: float = -math.inf  # the kept checkpoint's validation score
    best_where: dict[str, Any] = field(default_factory=dict)  # phase, step, validation and dev metrics
    history: list[dict[str, Any]] = field(default_factory=list)
    phase_seconds: dict[str, float] = field(default_factory=dict)


class Checkpointer:
    """Saves ``best/`` and ``last/`` (HF format + training state) under ``output_dir``."""

    def __init__(self, output_dir: str | Path, tokenizer: Any, extra_modules: dict[str, nn.Module] | None = None):
        self.output_dir = Path(output_dir)
        self.tokenizer = tokenizer
        self.extra_modules = extra_modules or {}
        self.output_dir.mkdir(parents=True, exist_ok=True)

    @property
    def last_dir(self) -> Path:
        return self.output_dir / "last"

    @property
    def best_dir(self) -> Path:
        return self.output_dir / "best"

    def _save_model(self, model: nn.Module, folder: Path) -> Path:
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        self.tokenizer.save_pretrained(tmp)
        return tmp

    def save_best(self, model: nn.Module) -> None:
        tmp = self._save_model(model, self.best_dir)
        shutil.rmtree(self.best_dir, ignore_errors=True)
        tmp.rename(self.best_dir)

    def save_last(self, model: nn.Module, optimizer, scheduler, state: RunState) -> None:
        """Write ``last/`` atomically (a crash mid-save leaves the previous one intact)."""
        tmp = self._save_model(model, self.last_dir)
        torch.save(
            {
                "state": state.__dict__,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "extra_modules": {k: m.state_dict() for k, m in self.extra_modules.items()},
                "torch_rng": torch.get_rng_state(),
                "python_rng": random.getstate(),
                "numpy_rng": np.random.get_state(),
            },
            tmp / _STATE_FILE,
        )
        shutil.rmtree(self.last_dir, ignore_errors=True)
        tmp.rename(self.last_dir)

    def load_state(self) -> dict[str, Any] | None:
        """The saved training state of ``last/`` (None when there is none)."""
        path = self.last_dir / _STATE_FILE
        if not path.is_file():
            return None
        return torch.load(path, weights_only=False)

    def restore_rng_and_extras(self, saved: dict[str, Any]) -> None:
        torch.set_rng_state(saved["torch_rng"])
        random.setstate(saved["python_rng"])
        np.random.set_state(saved["numpy_rng"])
        for name, module in self.extra_modules.items():
            module.load_state_dict(saved["extra_modules"][name])


# ----------------------------------------------------------------------------- the loop
@dataclass
class Phase:
    """One training phase: what to optimise, with which loss and settings."""

    name: str
    optim: OptimConfig
    loss_fn: LossFn
    params: list[tuple[str, nn.Parameter]]
    select_best: bool = True  # evaluations of this phase may become the kept checkpoint
    start: Callable[[], None] | None = None  # called each time the phase runs, resumed too: idempotent


@dataclass
class LoopSettings:
    seed: int
    eval_every_steps: int | None
    save_every_steps: int
    eval_batch_size: int
    pad_id: int
    progress: bool = True
    log_every_steps: int = 10
    precision: str = "fp32"  # "bf16": training forwards under CPU autocast


@dataclass
class EvalSets:
    """What each evaluation scores: ``validation`` chooses the kept checkpoint (None: keep the last),
    ``dev`` is the test set, recorded only."""

    validation: EncodedDataset | None
    dev: EncodedDataset


def load_training_splits(data: Any, seed: int) -> tuple[TextExamples, TextExamples | None, TextExamples]:
    """``(train, validation, dev)`` of a training job's data config (validation None when off)."""
    train = load_split(data, "train", seed=seed)
    validation = load_split(data, "validation", seed=seed) if data.validation_fraction else None
    return train, validation, load_split(data, "dev", seed=seed)


def encode_eval_sets(validation: TextExamples | None, dev: TextExamples, tokenizer, max_length: int) -> EvalSets:
    return EvalSets(None if validation is None else encode(validation, tokenizer, max_length),
                    encode(dev, tokenizer, max_length))


def eval_summary(record: dict[str, Any]) -> dict[str, Any]:
    """``phase``, ``step`` and both splits' metrics of an evaluation record of the history."""
    return {key: record.get(key) for key in ("phase", "step", "validation", "dev")}


def _record_eval(model, sets: EvalSets, spec, settings: LoopSettings, state: RunState, phase: Phase,
                 ckpt: Checkpointer) -> dict:
    def score(dataset):
        return None if dataset is None else evaluate(model, dataset, spec, settings.eval_batch_size, settings.pad_id)

    validation, dev = score(sets.validation), score(sets.dev)
    record = {"kind": "eval", "phase": phase.name, "step": state.step, "epoch": state.epoch,
              "validation": validation, "dev": dev}
    state.history.append(record)
    # without a validation split there is nothing to choose on: each evaluation replaces the kept one
    if phase.select_best and (validation is None or validation[spec.primary_metric] > state.best_metric):
        state.best_metric = -math.inf if validation is None else validation[spec.primary_metric]
        state.best_where = eval_summary(record)
        ckpt.save_best(model)
    log.info("%s step %d: validation %s, dev (test) %s", phase.name, state.step, validation, dev)
    return record


def _run_phase(
    phase: Phase, model: nn.Module, train: EncodedDataset, sets: EvalSets, spec: TaskSpec,
    settings: LoopSettings, state: RunState, ckpt: Checkpointer, saved: dict[str, Any] | None,
) -> None:
    from tqdm.auto import tqdm

    per_epoch, total = phase_steps(phase.optim, len(train))
    optimizer = make_optimizer(phase.params, phase.optim)
    scheduler = _linear_schedule(optimizer, int(phase.optim.warmup_ratio * total), total)
    if saved is not None:
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
    params = [p for _, p in phase.params if p.requires_grad]
    model.train()
    started = time.perf_counter()
    bar = tqdm(
        total=total, initial=state.step, desc=phase.name, disable=not settings.progress, dynamic_ncols=True,
        mininterval=0.1 if sys.stderr.isatty() else 30.0,  # log files: one line per 30 s
    )
    throughput = 0.0  # examples per second, exponential moving average over updates
    while state.step < total:
        order_seed = settings.seed * 1_000_003 + state.phase_index * 1_009 + state.epoch
        for batch in batches(train, phase.optim.batch_size, order_seed, settings.pad_id, start=state.batch_in_epoch):
            tic = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=settings.precision == "bf16"):
                loss, terms = phase.loss_fn(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if phase.optim.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, phase.optim.max_grad_norm)
            optimizer.step()
            scheduler.step()
            state.step += 1
            state.batch_in_epoch += 1
            rate = len(batch["labels"]) / max(time.perf_counter() - tic, 1e-9)
            throughput = rate if throughput == 0.0 else 0.9 * throughput + 0.1 * rate
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", examples_per_s=f"{throughput:.1f}")
            if state.step % settings.log_every_steps == 0 or state.step == 1:
                state.history.append({
                    "kind": "train", "phase": phase.name, "step": state.step, "epoch": state.epoch,
                    "loss": loss.item(), "lr": scheduler.get_last_lr()[0], **terms,
                })
            epoch_done = state.batch_in_epoch >= per_epoch
            if (settings.eval_every_steps and state.step % settings.eval_every_steps == 0) or epoch_done \
                    or state.step == total:
                _record_eval(model, sets, spec, settings, state, phase, ckpt)
            if epoch_done:
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            if state.step % settings.save_every_steps == 0 or state.step == total:
                state.phase_seconds[phase.name] = state.phase_seconds.get(phase.name, 0.0) + time.perf_counter() - started
                started = time.perf_counter()
                ckpt.save_last(model, optimizer, scheduler, state)
            if state.step >= total:
                break
    bar.close()


def train_phases(
    phases: list[Phase], model: nn.Module, train: EncodedDataset, sets: EvalSets, spec: TaskSpec,
    settings: LoopSettings, ckpt: Checkpointer, resume: bool,
) -> RunState:
    """Run ``phases`` in order (resuming from ``ckpt.last_dir`` when asked); returns the final state.

    When resuming, the caller must already have loaded the model weights from ``ckpt.last_dir``.
    """
    saved = ckpt.load_state() if resume else None
    state = RunState(**saved["state"]) if saved else RunState()
    if saved:
        ckpt.restore_rng_and_extras(saved)
        log.info("resuming at phase %d, step %d", state.phase_index, state.step)
    for index, phase in enumerate(phases):
        if index < state.phase_index:
            continue
        if phase.start is not None:
            phase.start()
        _run_phase(phase, model, train, sets, spec, settings, state, ckpt, saved if index == state.phase_index else None)
        saved = None
        if index + 1 < len(phases):
            state.phase_index, state.epoch, state.batch_in_epoch, state.step = index + 1, 0, 0, 0
    return state


def write_json(path: str | Path, data: Any) -> None:
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=False, default=float) + "\n")


def selection_outputs(state: RunState, sets: EvalSets, data: Any) -> dict[str, Any]:
    """The part of ``metrics.json`` on checkpoint selection: how the kept checkpoint was chosen, and
    the kept and the last evaluation with their validation and dev (test) metrics.

    ``dev`` and ``validation`` at the top level are the kept checkpoint's (what a sweep ranks on:
    ``validation``)."""
    last = next((r for r in reversed(state.history) if r["kind"] == "eval"), None)
    kept = state.best_where
    return {
        "selection": {
            "chosen_on": "validation" if sets.validation is not None else "last evaluation",
            "validation_examples": len(sets.validation) if sets.validation is not None else 0,
            "validation_fraction": data.validation_fraction,
            "min_validation_examples": data.min_validation_examples,
            "validation_seed": data.validation_seed,
            "dev_is_test": True,
        },
        "validation": kept.get("validation"),
        "dev": kept.get("dev") or {},
        "kept": kept,
        "last": eval_summary(last) if last else {},
    }


def run_bookkeeping(state: RunState, best_dir: Path, train_size: int, dev_size: int, started: float,
                    resumed: bool, threads: int, config: Any) -> dict[str, Any]:
    """The part of ``metrics.json`` every training job shares: where, on what, how long, with what."""
    return {
        "checkpoint": str(best_dir),
        "train_examples": train_size,
        "dev_examples": dev_size,
        "steps": state.step,
        "train_seconds": state.phase_seconds,
        "wall_seconds_this_call": time.perf_counter() - started,
        "resumed": resumed,
        "threads": threads,
        "config": config.model_dump(),
    }
