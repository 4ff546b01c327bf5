"""Encrypted inference over a data split: batches dispatched to K party groups, resumable output.

    cfg = load_config(InferConfig, "jobs/configs/infer-tiny.yaml", {"out": "runs/x"})
    summary = run_infer(cfg)           # Ray must be connected (see mpcformer.cluster_connect)

The split is cut into batches of ``batch_size`` sequences (one MPC forward each), for every combo.
A pool of ``pool.groups`` party groups runs them concurrently; each client actor commits its batch
to ``out`` as soon as it completes (see :mod:`mpcformer.cluster.batches` for the layout). Running
again with the same ``out`` skips the finished batches. Failed groups are rebuilt and their batch
re-run (``pool.max_attempts``); ``summary.json`` is written at the end.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import Field, field_validator

from mpcformer.cluster.config import PartyGroupConfig
from mpcformer.cluster.scheduler import PoolConfig
from mpcformer.config import StrictModel
from mpcformer.data.loading import DataConfig

__all__ = ["InferConfig", "run_infer", "plan_run", "with_absolute_paths"]

log = logging.getLogger(__name__)


class InferConfig(StrictModel):
    """Everything an ``mpcformer infer`` run needs; YAML in ``jobs/configs/infer*.yaml``."""

    model: str = Field(
        default="tiny", description="preset (tiny, minilm, bert-base, bert-large), HF path or distilled folder"
    )
    num_labels: int = Field(default=2, ge=1)
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    split: Literal["train", "dev"] = "dev"
    combos: list[str] = Field(default_factory=lambda: ["quad+2quad"], min_length=1)
    batch_size: int = Field(default=8, ge=1, description="sequences per MPC forward")
    limit: int | None = Field(default=None, ge=1, description="first N examples of the split")
    out: str = "runs/infer"
    check_plaintext: bool = Field(default=True, description="also compute plaintext logits on the client (evaluation)")
    job_name: str = "infer"
    group: PartyGroupConfig = Field(default_factory=PartyGroupConfig)
    pool: PoolConfig = Field(default_factory=PoolConfig)

    @field_validator("combos")
    @classmethod
    def _known_combos(cls, combos: list[str]) -> list[str]:
        from mpcformer.approx import Combo

        names = [Combo.parse(text).name for text in combos]  # raises with the valid names
        if len(set(names)) != len(names):
            raise ValueError(f"combos repeat: {names}")
        return names


def with_absolute_paths(cfg: InferConfig) -> InferConfig:
    """Resolve local paths against the driver's working directory (actors run elsewhere)."""

    def absolute(value: str | None) -> str | None:
        return str(Path(value).expanduser().resolve()) if value else value

    data = cfg.data.model_copy(update={
        "data_dir": absolute(cfg.data.data_dir), "train_file": absolute(cfg.data.train_file),
        "dev_file": absolute(cfg.data.dev_file),
    })
    model = absolute(cfg.model) if Path(cfg.model).expanduser().exists() else cfg.model
    return cfg.model_copy(update={"data": data, "model": model, "out": absolute(cfg.out)})


def _run_info(cfg: InferConfig) -> dict[str, Any]:
    """What must not change between a run and its resumption (the rest may: K, deadlines, ...)."""
    return json.loads(json.dumps({
        "model": cfg.model, "num_labels": cfg.num_labels, "seed": cfg.seed, "data": cfg.data.model_dump(),
        "split": cfg.split, "combos": cfg.combos, "batch_size": cfg.batch_size, "limit": cfg.limit,
        "check_plaintext": cfg.check_plaintext,
    }))


def _count_examples(cfg: InferConfig) -> int:
    """Size of the split (the driver reads the client's data file; it never loads the model)."""
    from mpcformer.data import load_split

    count = len(load_split(cfg.data, cfg.split, seed=cfg.seed))
    return min(count, cfg.limit) if cfg.limit else count


def plan_run(cfg: InferConfig, num_examples: int):
    """Batches of the run and the work item (one call per party) of each."""
    from mpcformer.cluster.batches import plan_batches
    from mpcformer.cluster.infer_batch import ClientBatch, ModelSource, OwnerBatch, client_batch, owner_batch
    from mpcformer.cluster.party_group import PartyCall
    from mpcformer.cluster.scheduler import WorkItem

    source = ModelSource(cfg.model, cfg.num_labels, cfg.seed)
    data_json = cfg.data.model_dump_json()
    out_dir = str(Path(cfg.out).resolve())  # the client actors write here: shared storage on a multi-node cluster
    batches = plan_batches(num_examples, cfg.batch_size, cfg.combos)
    items = {}
    for batch in batches:
        owner = PartyCall(owner_batch, (OwnerBatch(source, batch.combo, cfg.job_name),))
        client = PartyCall(client_batch, (ClientBatch(
            source, data_json, cfg.split, batch.combo, batch.batch_id, batch.example_ids, out_dir,
            cfg.check_plaintext, cfg.job_name,
        ),))
        items[batch.key] = WorkItem(batch.key, (owner, client))
    return batches, items


def run_infer(
    cfg: InferConfig, progress: bool = True, on_batch: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Run (or resume) the job on the connected Ray cluster; return the summary (also in summary.json)."""
    from tqdm import tqdm

    from mpcformer.cluster.batches import BatchStore
    from mpcformer.cluster.scheduler import GroupPool

    if cfg.group.world_size != 2:
        raise ValueError("private inference has two parties (owner and client): set group.world_size: 2")
    cfg = with_absolute_paths(cfg)
    store = BatchStore(cfg.out)
    store.open(_run_info(cfg))
    num_examples = _count_examples(cfg)
    batches, items = plan_run(cfg, num_examples)
    todo = [batch for batch in batches if not store.is_done(batch)]
    store.rebuild_predictions(batches)  # drops appends of an interrupted run that never committed
    log.info("%d batches (%d examples x %d combos), %d to run", len(batches), num_examples, len(cfg.combos), len(todo))
    pool = GroupPool(
        cfg.group, cfg.pool, name=cfg.job_name, on_failure=lambda e: _on_failure(store, cfg, e), model=cfg.model
    )
    tic = time.monotonic()
    try:
        results = contextlib.closing(pool.run([items[batch.key] for batch in todo]))  # closing stops the groups
        bar = tqdm(total=len(batches), initial=len(batches) - len(todo), desc="infer", unit="batch", disable=not progress)
        with results as finished, bar:
            for done in finished:
                figures = done.results[1]  # the client's figures; no prediction reaches the driver
                _record_batch(cfg, figures)
                bar.update(1)
                bar.set_postfix(retries=len(pool.failures), refresh=False)
                if on_batch is not None:
                    on_batch(figures)
    finally:  # also after a failure or an interruption: what was committed is summarised
        summary = _summary(cfg, store, batches, num_examples, pool.failures, time.monotonic() - tic)
        store.rebuild_predictions(batches)
        store.write_summary(summary)
    return summary


def _on_failure(store, cfg: InferConfig, event) -> None:
    from dataclasses import asdict

    store.log_event({"time": time.time(), "event": "group_failure", **asdict(event)})
    combo = event.item.split("/")[0]  # item keys are <combo>/<batch id>
    _safe_metric("record_batch", job=cfg.job_name, model=cfg.model, approx=combo, sequences=0, failed=True)


def _record_batch(cfg: InferConfig, figures: dict[str, Any]) -> None:
    _safe_metric(
        "record_batch", job=cfg.job_name, model=cfg.model, approx=figures["combo"],
        sequences=figures["examples"], latency_s=figures["batch_latency_s"],
    )


def _safe_metric(name: str, *args, **kwargs) -> None:
    from mpcformer.observability import safe_record

    safe_record(name, *args, **kwargs)


def _summary(cfg: InferConfig, store, batches, num_examples: int, failures, wall_s: float) -> dict[str, Any]:
    from mpcformer.cluster.batches import summarize_records

    per_combo = {}
    for combo in cfg.combos:
        combo_batches = [b for b in batches if b.combo == combo]
        records = store.records(combo_batches)
        per_combo[combo] = {**summarize_records(records), **_task_metrics(cfg, records)}
    return {
        "model": cfg.model,
        "split": cfg.split,
        "examples": num_examples,
        "batch_size": cfg.batch_size,
        "groups": cfg.pool.groups,
        "combos": per_combo,
        "complete": all(store.is_done(b) for b in batches),
        "retries_this_run": len(failures),
        "wall_s_this_run": wall_s,
    }


def _task_metrics(cfg: InferConfig, records: list[dict[str, Any]]) -> dict[str, Any]:
    """GLUE's metric(s) of the task from the encrypted logits (e.g. F1 for MRPC, Matthews for CoLA)."""
    if not records:
        return {}
    import numpy as np

    from mpcformer.data import compute_metrics, resolve_task

    spec = resolve_task(cfg.data)
    logits = np.asarray([r["logits"] for r in records], dtype=np.float64)
    return {"task_metrics": compute_metrics(logits, [r["label"] for r in records], spec)}
