"""Encrypted inference over a data split: batches dispatched to K party groups, resumable output.

    cfg = load_config(InferConfig, "jobs/configs/infer-tiny.yaml", {"out": "runs/x"})
    status = run_infer(cfg)            # Ray must be connected (see mpcformer.cluster_connect)

A run is three steps on a pool of ``pool.groups`` party groups (the party operations are in
:mod:`mpcformer.inference.party_ops`):

1. prepare: party 0 publishes its model's public bundle to the client; the client checks every
   example of the run against it and returns how many there are (a driver that joins a cluster
   never reads the data; one that starts its own, on the parties' machine, checks it up front
   with :func:`check_local_inputs`);
2. batches: the split is cut into batches of ``batch_size`` sequences (one MPC forward each), for
   every combo, run concurrently by the K groups; each client actor commits its batch to ``out``
   as soon as it completes (see :mod:`mpcformer.inference.batches` for the layout). Running again
   with the same ``out`` skips the finished batches. Failed groups are rebuilt and their batch
   re-run (``pool.max_attempts``);
3. summary: once every batch is in, the client writes ``summary.json`` from its records.

The driver writes ``run.json``, ``events.jsonl`` and ``status.json`` (counts and paths: batches
done, retries, wall time), also after a failure or an interruption; it reads no prediction.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import Field, field_validator

from mpcformer.cluster.config import PartyGroupConfig
from mpcformer.cluster.scheduler import PoolConfig
from mpcformer.config import ComboName, StrictModel
from mpcformer.data.loading import DataConfig

__all__ = [
    "InferConfig", "run_infer", "check_local_inputs", "prepare_item", "plan_run", "summary_item", "with_absolute_paths",
    "model_labels", "finished_summary", "holds_other_run",
]

log = logging.getLogger(__name__)


class InferConfig(StrictModel):
    """Everything an ``mpcformer infer`` run needs; YAML in ``jobs/configs/infer*.yaml``."""

    model: str = Field(
        default="tiny", description="preset (tiny, minilm, bert-base, bert-large), HF path or distilled folder"
    )
    num_labels: int | None = Field(
        default=None, ge=1, description="outputs of the model's head (1 = regression); default: the task's"
    )
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    split: Literal["train", "dev"] = "dev"
    combos: list[ComboName] = Field(default_factory=lambda: ["quad+2quad"], min_length=1)
    batch_size: int = Field(default=8, ge=1, description="sequences per MPC forward")
    limit: int | None = Field(default=None, ge=1, description="first N examples of the split")
    out: str = "runs/infer"
    check_plaintext: bool = Field(
        default=False, description="evaluation mode: the client also loads the owner's model and computes plaintext "
        "reference logits (agreement in summary.json); never where the client must not read the weights"
    )
    job_name: str = "infer"
    group: PartyGroupConfig = Field(default_factory=PartyGroupConfig)
    pool: PoolConfig = Field(default_factory=PoolConfig)

    @field_validator("combos")
    @classmethod
    def _each_combo_once(cls, combos: list[str]) -> list[str]:
        if len(set(combos)) != len(combos):
            raise ValueError(f"combos repeat: {combos}")
        return combos


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


def check_local_inputs(cfg: InferConfig) -> None:
    """What a driver that runs on the parties' own machine (a local cluster) checks before Ray
    starts: the output folder, the model name or folder, the data file and its format. Each
    failure is a one-line ``UserError``; the parties check again where they run."""
    from mpcformer.inference.batches import BatchStore
    from mpcformer.data.loading import load_split, reject_empty_examples
    from mpcformer.models.presets import check_model_source

    cfg = with_absolute_paths(cfg)
    BatchStore(cfg.out).check_same_run(_run_info(cfg))
    check_model_source(cfg.model)
    examples = load_split(cfg.data, cfg.split, cfg.seed).head(cfg.limit)
    reject_empty_examples(examples, cfg.split)


def _run_info(cfg: InferConfig) -> dict[str, Any]:
    """What must not change between a run and its resumption (the rest may: K, deadlines, ...)."""
    return json.loads(json.dumps({
        "model": cfg.model, "num_labels": model_labels(cfg), "seed": cfg.seed, "data": cfg.data.model_dump(),
        "split": cfg.split, "combos": cfg.combos, "batch_size": cfg.batch_size, "limit": cfg.limit,
        "check_plaintext": cfg.check_plaintext,
    }))


def finished_summary(cfg: InferConfig) -> dict[str, Any] | None:
    """The ``summary.json`` of a complete run of exactly ``cfg`` in its output folder, else None
    (nothing there, an unfinished run, or another run's)."""
    cfg = with_absolute_paths(cfg)
    try:
        summary = json.loads((Path(cfg.out) / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return summary if summary.get("complete") and _previous_run(cfg) == _run_info(cfg) else None


def holds_other_run(cfg: InferConfig) -> bool:
    """Whether ``cfg``'s output folder holds a run of other settings (which :func:`run_infer` refuses
    to resume once it finished a batch)."""
    cfg = with_absolute_paths(cfg)
    previous = _previous_run(cfg)
    return previous is not None and previous != _run_info(cfg)


def _previous_run(cfg: InferConfig) -> dict[str, Any] | None:
    try:
        return json.loads((Path(cfg.out) / "run.json").read_text())
    except (OSError, ValueError):
        return None


def model_labels(cfg: InferConfig) -> int:
    """The owner's head size: ``num_labels`` when given, else the task's (1 for STS-B)."""
    from mpcformer.data.loading import resolve_task
    from mpcformer.errors import UserError

    spec = resolve_task(cfg.data)
    if cfg.num_labels is not None and (cfg.num_labels == 1) != spec.is_regression:
        kind = "a regression (num_labels 1)" if spec.is_regression else f"a classification ({spec.num_labels} labels)"
        raise UserError(f"num_labels = {cfg.num_labels} but task '{spec.name}' is {kind}: fix num_labels or leave it out")
    return cfg.num_labels if cfg.num_labels is not None else spec.num_labels


def _sources(cfg: InferConfig):
    from mpcformer.inference.party_ops import ModelSource, RunData

    source = ModelSource(cfg.model, model_labels(cfg), cfg.seed)
    out_dir = str(Path(cfg.out).resolve())  # the client actors write here: shared storage on a multi-node cluster
    run = RunData(
        cfg.data.model_dump_json(), cfg.split, cfg.seed, cfg.limit, cfg.batch_size, tuple(cfg.combos), out_dir
    )
    return source, run


def prepare_item(cfg: InferConfig):
    """The run's first step: party 0 publishes its public bundle, party 1 checks its examples."""
    from mpcformer.inference.party_ops import client_prepare, owner_prepare
    from mpcformer.cluster.party_group import PartyCall
    from mpcformer.cluster.scheduler import WorkItem

    source, run = _sources(cfg)
    return WorkItem("prepare", (PartyCall(owner_prepare, (source,)), PartyCall(client_prepare, (run,))))


def plan_run(cfg: InferConfig, num_examples: int, bundle_digest: str):
    """Batches of the run and the work item (one call per party) of each."""
    from mpcformer.inference.batches import plan_batches
    from mpcformer.inference.party_ops import ClientBatch, OwnerBatch, client_batch, owner_batch
    from mpcformer.cluster.party_group import PartyCall
    from mpcformer.cluster.scheduler import WorkItem

    source, run = _sources(cfg)
    reference = source if cfg.check_plaintext else None  # evaluation mode: the client loads the model
    batches = plan_batches(num_examples, cfg.batch_size, cfg.combos)
    items = {}
    for batch in batches:
        owner = PartyCall(owner_batch, (OwnerBatch(source, batch.combo, cfg.job_name),))
        client = PartyCall(client_batch, (ClientBatch(
            run, batch.combo, batch.batch_id, batch.example_ids, bundle_digest, cfg.model, reference, cfg.job_name,
        ),))
        items[batch.key] = WorkItem(batch.key, (owner, client))
    return batches, items


def summary_item(cfg: InferConfig, num_examples: int, header: dict[str, Any]):
    """The run's last step: the client summarises its committed records into ``summary.json``."""
    from mpcformer.inference.party_ops import ClientSummary, client_summarize, owner_idle
    from mpcformer.cluster.party_group import PartyCall
    from mpcformer.cluster.scheduler import WorkItem

    _, run = _sources(cfg)
    return WorkItem("summary", (PartyCall(owner_idle), PartyCall(client_summarize, (ClientSummary(run, num_examples, header),))))


def run_infer(
    cfg: InferConfig, progress: bool = True, on_batch: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Run (or resume) the job on the connected Ray cluster; return the driver's status (counts and
    paths, also in ``status.json``). The client writes the figures to ``summary.json``."""
    from mpcformer.inference.batches import BatchStore
    from mpcformer.cluster.scheduler import GroupPool

    if cfg.group.world_size != 2:
        raise ValueError("private inference has two parties (owner and client): set group.world_size: 2")
    cfg = with_absolute_paths(cfg)
    store = BatchStore(cfg.out)
    run_info = _run_info(cfg)
    store.check_same_run(run_info)
    pool = GroupPool(
        cfg.group, cfg.pool, name=cfg.job_name, on_failure=lambda e: _on_failure(store, cfg, e), model=cfg.model,
        keep_groups=True,
    )
    with contextlib.closing(pool):  # close() stops the groups kept between the steps
        prepared = _run_one(pool, prepare_item(cfg))
        num_examples, truncated = prepared[1]["examples"], prepared[1]["truncated_examples"]
        if truncated:  # once per run, before the batches
            print(
                f"infer: {truncated} of {num_examples} examples are longer than data.max_length = "
                f"{cfg.data.max_length} tokens and are cut to it (raise --max-length, up to the model's positions)",
                file=sys.stderr,
            )
        store.open(run_info)
        batches, items = plan_run(cfg, num_examples, prepared[0]["bundle_digest"])
        todo = [batch for batch in batches if not store.is_done(batch)]
        log.info("%d batches (%d examples x %d combos), %d to run", len(batches), num_examples, len(cfg.combos), len(todo))
        if len(todo) < len(batches):
            done = [batch for batch in batches if store.is_done(batch)]
            print(
                f"infer: resuming {cfg.out}: {len(done)} of {len(batches)} batches "
                f"({sum(len(b.example_ids) for b in done)} examples) already finished", file=sys.stderr,
            )
        tic = time.monotonic()
        try:
            _run_batches(pool, cfg, [items[batch.key] for batch in todo], len(batches), progress, on_batch)
        finally:  # also after a failure or an interruption: the driver's counts
            status = _status(cfg, store, batches, num_examples, truncated, pool.failures, time.monotonic() - tic)
            store.write_status(status)
        if status["complete"]:
            header = {key: status[key] for key in _SUMMARY_HEADER}
            summarized = _run_one(pool, summary_item(cfg, num_examples, header))[1]
            status = {**status, "summary": summarized["summary"], "combos": summarized["combos"]}
            store.write_status(status)
    return status


def _run_one(pool, item) -> list[Any]:
    """Results (by rank) of one work item run on the pool (its group stays up for the next step)."""
    (done,) = list(pool.run([item]))
    return done.results


def _run_batches(pool, cfg: InferConfig, items: list, total: int, progress: bool, on_batch) -> None:
    from tqdm import tqdm

    bar = tqdm(total=total, initial=total - len(items), desc="infer", unit="batch", disable=not progress)
    with contextlib.closing(pool.run(items)) as finished, bar:
        for done in finished:
            figures = done.results[1]  # the client's figures; no prediction reaches the driver
            _record_batch(cfg, figures)
            bar.update(1)
            bar.set_postfix(retries=len(pool.failures), refresh=False)
            if on_batch is not None:
                on_batch(figures)


def _on_failure(store, cfg: InferConfig, event) -> None:
    from dataclasses import asdict

    if store.root.is_dir():  # a failure of the prepare step of a new run leaves no folder behind
        store.log_event({"time": time.time(), "event": "group_failure", **asdict(event)})
    combo = event.item.split("/")[0]  # item keys are <combo>/<batch id>
    if combo in cfg.combos:
        _safe_metric("record_batch", job=cfg.job_name, model=cfg.model, approx=combo, sequences=0, failed=True)


def _record_batch(cfg: InferConfig, figures: dict[str, Any]) -> None:
    _safe_metric(
        "record_batch", job=cfg.job_name, model=cfg.model, approx=figures["combo"],
        sequences=figures["examples"], latency_s=figures["batch_latency_s"],
    )


def _safe_metric(name: str, *args, **kwargs) -> None:
    from mpcformer.observability import safe_record

    safe_record(name, *args, **kwargs)


#: Keys of the driver's status that head the client's summary.
_SUMMARY_HEADER = (
    "model", "split", "examples", "truncated_examples", "batch_size", "groups", "retries_this_run", "wall_s_this_run",
)


def _status(
    cfg: InferConfig, store, batches, num_examples: int, truncated: int, failures, wall_s: float
) -> dict[str, Any]:
    """The driver's view of the run: counts and paths only (which batch files exist)."""
    done = {combo: sum(store.is_done(b) for b in batches if b.combo == combo) for combo in cfg.combos}
    return {
        "model": cfg.model,
        "split": cfg.split,
        "examples": num_examples,
        "truncated_examples": truncated,  # longer than data.max_length, cut to it
        "batch_size": cfg.batch_size,
        "groups": cfg.pool.groups,
        "combos": {combo: {"batches": count} for combo, count in done.items()},  # committed
        "batches_planned": len(batches),
        "complete": all(store.is_done(b) for b in batches),
        "retries_this_run": len(failures),
        "wall_s_this_run": wall_s,
        "out": str(store.root),
    }
