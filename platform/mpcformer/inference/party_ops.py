"""The party operations of an encrypted-inference run, shipped by name to the party actors of a group.

A run is three steps, each a pair of calls (party 0, party 1) on one party group:

1. **prepare**: the model owner (party 0) publishes the public bundle of its model
   (:mod:`mpcformer.inference.bundle`: tokenizer files and architecture facts, never weights) to the
   client over the session's channel. The client (party 1) loads its examples, tokenises them
   with the bundle's tokenizer and checks every one against the bundle's facts
   (:mod:`mpcformer.validation`) before anything is shared or written; then it keeps the bundle
   in ``<out>/public-bundle/`` and returns the number of examples.
2. **batch** (once per batch): party 0 loads the weights from its own path and shares them; party
   1 tokenises its batch with the kept bundle, checks it again, learns the logits (revealed to it
   alone) and commits the batch's records to the output folder itself.
3. **summarize**: the client reads its committed records and writes ``summary.json`` (accuracy,
   agreement, task metrics, latency, rounds, bytes); party 0 has nothing to do. For a regression
   task (STS-B) a record's prediction is the score itself (a float), and the summary gives the
   task metric (Pearson, Spearman) and, with ``check_plaintext``, the largest absolute error
   against the plaintext score instead of an agreement rate. With ``check_plaintext`` each record
   also keeps the plaintext reference logits, and the summary the task metrics computed from them
   (``plaintext_task_metrics``, the same examples in plaintext).

The client reads nothing of the owner's: the bundle reaches it over the session. The driver
sends each party paths, ids and counts, and gets back counts, paths and cost figures (latency,
rounds, bytes), never a prediction or a figure computed from predictions.

``check_plaintext`` is an evaluation mode: the client also loads the owner's model from the
owner's path and computes the plaintext reference logits of the same approximated model, to
measure agreement. Never use it where the client must not read the weights.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpcformer.errors import UserError
from mpcformer.operations import party_operation

__all__ = [
    "ModelSource", "RunData", "OwnerBatch", "ClientBatch", "ClientSummary", "BUNDLE_DIR",
    "owner_prepare", "client_prepare", "owner_batch", "client_batch", "owner_idle", "client_summarize",
    "load_owner_model", "check_client_tensors",
]

log = logging.getLogger(__name__)

#: Folder of the output folder where the client keeps the owner's public bundle.
BUNDLE_DIR = "public-bundle"


@dataclass(frozen=True)
class ModelSource:
    """The owner's model: a preset name (tiny, minilm, bert-base, bert-large), a Hugging Face path, or a
    folder written by distillation (an approximated student)."""

    name_or_path: str
    num_labels: int = 2
    seed: int = 0


@dataclass(frozen=True)
class RunData:
    """The client's side of a run: its data, which examples, the batches and where the output goes."""

    data: str  # DataConfig as JSON (rebuilt in the actor)
    split: str
    seed: int
    limit: int | None
    batch_size: int
    combos: tuple[str, ...]
    out_dir: str

    @property
    def bundle_dir(self) -> str:
        return str(Path(self.out_dir) / BUNDLE_DIR)


@dataclass(frozen=True)
class OwnerBatch:
    """What party 0 needs for a batch: its model and the approximation combo (no batch content)."""

    model: ModelSource
    combo: str
    job: str = "infer"  # metrics label


@dataclass(frozen=True)
class ClientBatch:
    """What party 1 needs for a batch: its run, which examples, and the bundle it was prepared with."""

    run: RunData
    combo: str
    batch_id: int
    example_ids: tuple[int, ...]
    bundle_digest: str
    model_label: str  # metrics label
    reference: ModelSource | None = None  # check_plaintext (evaluation mode): the owner's model
    job: str = "infer"  # metrics label


@dataclass(frozen=True)
class ClientSummary:
    """What party 1 needs to summarise a run: its run and the public facts the driver adds."""

    run: RunData
    examples: int
    header: dict[str, Any]  # model, split, batch size, groups, retries, wall time (from the driver)


# -- loading, cached per actor process ----------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _load_owner(source: ModelSource) -> tuple[Any, Any]:
    from mpcformer.models.presets import load_preset

    model, tokenizer = load_preset(source.name_or_path, num_labels=source.num_labels, seed=source.seed)
    return model.eval(), tokenizer


def load_owner_model(source: ModelSource):
    """The owner's plaintext model in eval mode (a distilled student reloads with its approximation)."""
    return _load_owner(source)[0]


_mismatches_said: set[tuple[str, str]] = set()  # said once per (trained, run) combination in a party process


def _warn_on_combo_mismatch(model, combo: str) -> None:
    from mpcformer.models.surgery import combo_of

    trained = combo_of(model)
    if trained is None or trained.name == combo or (trained.name, combo) in _mismatches_said:
        return
    _mismatches_said.add((trained.name, combo))
    if trained.name == "exact":
        log.warning("the model was trained with exact GeLU and softmax and runs with %s undistilled (drop-in): "
                    "its accuracy is not the trained model's (docs/results.md, drop-in)", combo)
    else:
        log.warning("the model was distilled for %s but runs with %s: expect lower accuracy", trained.name, combo)


@functools.lru_cache(maxsize=4)
def _client_examples(data_json: str, split: str, seed: int):
    from mpcformer.data import DataConfig, load_split

    return load_split(DataConfig.model_validate(json.loads(data_json)), split, seed=seed)  # type: ignore[arg-type]


def _max_length(run: RunData) -> int:
    from mpcformer.data import DataConfig

    return DataConfig.model_validate(json.loads(run.data)).max_length


def _tensors(run: RunData, tokenizer, example_ids) -> tuple[dict[str, Any], list[Any]]:
    """Tokenise examples ``example_ids`` and pad them to the longest: ``input_ids`` etc. (B, T)."""
    from mpcformer.data import TextExamples, collate, encode

    examples = _client_examples(run.data, run.split, run.seed)
    texts, labels = [examples.texts[i] for i in example_ids], [examples.labels[i] for i in example_ids]
    encoded = encode(TextExamples(examples.spec, texts, labels, examples.source), tokenizer, _max_length(run))
    tensors = collate([encoded[i] for i in range(len(encoded))], pad_token_id=tokenizer.pad_token_id or 0)
    return tensors, labels


def check_client_tensors(facts: dict[str, Any], tokenizer_vocab: int, tensors: dict[str, Any], where: str) -> None:
    """The client's input against the owner's public facts, before anything is shared: the tokenizer's
    vocabulary fits the model's, token ids in ``[0, vocab)``, a 0/1 mask, lengths within the positions.

    Raises :class:`~mpcformer.validation.InputError` (one line, prefixed with ``where``).
    """
    from types import SimpleNamespace

    from mpcformer.validation import InputError, check_model_inputs

    try:
        check_model_inputs(
            SimpleNamespace(**facts), tensors["input_ids"], tensors.get("attention_mask"), tokenizer_vocab=tokenizer_vocab
        )
    except InputError as err:
        raise InputError(f"{where}: {err}") from None


# -- step 1: prepare ----------------------------------------------------------------------------
@party_operation
def owner_prepare(rank: int, source: ModelSource) -> dict[str, Any]:
    """Party 0: send the public bundle of its model to the client; return the bundle's digest."""
    from mpcformer.inference.bundle import build_public_bundle
    from mpcformer.mpc.compat import crypten

    model, tokenizer = _load_owner(source)
    bundle = build_public_bundle(model, tokenizer)
    crypten.communicator.get().broadcast_obj({"facts": bundle.facts, "files": bundle.files}, src=0)
    return {"bundle_digest": bundle.digest}


_CHECK_CHUNK = 256  # examples tokenised and checked at a time in prepare


@party_operation
def client_prepare(rank: int, run: RunData) -> dict[str, Any]:
    """Party 1: receive the owner's bundle, check every example of the run against it, then keep the
    bundle and tidy the output folder. Writes nothing when a check fails. Returns counts and paths."""
    from mpcformer.inference.batches import BatchStore, plan_batches
    from mpcformer.inference.bundle import PublicBundle, bundle_tokenizer, install_public_bundle
    from mpcformer.data import overlong_examples, reject_empty_examples
    from mpcformer.mpc.compat import crypten

    sent = crypten.communicator.get().broadcast_obj(None, src=0)
    bundle = PublicBundle(sent["facts"], sent["files"])
    tokenizer = bundle_tokenizer(bundle)
    examples = _client_examples(run.data, run.split, run.seed).head(run.limit)
    count = len(examples)
    if count == 0:
        raise UserError(f"the {run.split} split has no examples: nothing to infer")
    reject_empty_examples(examples, run.split)
    truncated = len(overlong_examples(examples, tokenizer, _max_length(run)))
    for start in range(0, count, _CHECK_CHUNK):
        ids = range(start, min(start + _CHECK_CHUNK, count))
        tensors, _ = _tensors(run, tokenizer, ids)
        where = f"examples {ids.start}..{ids.stop - 1} of the {run.split} split"
        check_client_tensors(bundle.facts, len(tokenizer), tensors, where)
    install_public_bundle(bundle, run.bundle_dir)
    BatchStore(run.out_dir).rebuild_predictions(plan_batches(count, run.batch_size, run.combos))
    return {"examples": count, "truncated_examples": truncated, "bundle": run.bundle_dir, "bundle_digest": bundle.digest}


# -- step 2: one batch --------------------------------------------------------------------------
@party_operation
def owner_batch(rank: int, request: OwnerBatch) -> dict[str, Any]:
    """Party 0: share the model, run the encrypted forward; send its own cost totals to the client."""
    from mpcformer.inference.protocol import run_private_inference
    from mpcformer.mpc.compat import crypten

    model = load_owner_model(request.model)
    _warn_on_combo_mismatch(model, request.combo)
    out = run_private_inference(rank, model=model, combo=request.combo)
    crypten.communicator.get().broadcast_obj(_cost_totals(out["costs"]), src=0)  # public figures
    _record_forward(out["costs"], request.combo, request.model.name_or_path, request.job, rank, sequences=0)
    return {"costs": out["costs"], "setup_s": out["setup_s"]}


@party_operation
def client_batch(rank: int, request: ClientBatch) -> dict[str, Any]:
    """Party 1: check its tokens, run the encrypted forward on them, learn the logits, commit the
    records; return figures."""
    from mpcformer.inference.batches import commit_batch
    from mpcformer.inference.bundle import load_public_bundle
    from mpcformer.inference.protocol import run_private_inference
    from mpcformer.mpc.compat import crypten

    tokenizer, bundle = load_public_bundle(request.run.bundle_dir, request.bundle_digest)
    tensors, labels = _tensors(request.run, tokenizer, request.example_ids)
    check_client_tensors(bundle.facts, len(tokenizer), tensors, f"batch {request.batch_id} ({request.combo})")
    types = tensors.get("token_type_ids")
    tic = time.perf_counter()
    out = run_private_inference(
        rank, input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"],
        token_type_ids=types, combo=request.combo,
    )
    latency_s = time.perf_counter() - tic
    forward_done_at = time.time()  # wall clock, comparable with Prometheus sample timestamps
    owner = crypten.communicator.get().broadcast_obj(None, src=0)
    _record_forward(out["costs"], request.combo, request.model_label, request.job, rank, len(request.example_ids))
    mine = _cost_totals(out["costs"])
    figures = {
        "batch_latency_s": latency_s,
        "forward_done_at": forward_done_at,
        "rounds": mine["rounds"],
        "bytes": mine["bytes"] + owner["bytes"],  # party-to-party traffic, both directions
        "dealer_bytes": mine["dealer_bytes"] + owner["dealer_bytes"],
    }
    reference = _plaintext_reference(request, tensors) if request.reference is not None else None
    regression = _spec(request.run).is_regression
    predictions = [row[0] for row in out["logits"]] if regression else out["predictions"]
    records = _records(request, out["logits"], predictions, labels, reference, figures, regression)
    committed = commit_batch(request.run.out_dir, request.combo, request.batch_id, records)
    return {
        "combo": request.combo, "batch_id": request.batch_id, "examples": len(records), "committed": committed,
        **figures,
    }


# -- step 3: summarize --------------------------------------------------------------------------
@party_operation
def owner_idle(rank: int) -> None:
    """Party 0's side of a step in which only the client works."""
    return None


@party_operation
def client_summarize(rank: int, request: ClientSummary) -> dict[str, Any]:
    """Party 1: write ``summary.json`` from its committed records; return counts and its path."""
    from mpcformer.inference.batches import BatchStore, plan_batches, summarize_records

    run = request.run
    store = BatchStore(run.out_dir)
    batches = plan_batches(request.examples, run.batch_size, run.combos)
    store.rebuild_predictions(batches)
    combos, counts = {}, {}
    regression = _spec(run).is_regression
    for combo in run.combos:
        records = store.records([b for b in batches if b.combo == combo])
        combos[combo] = {**summarize_records(records, regression), **_task_metrics(run, records)}
        counts[combo] = {"examples": combos[combo]["examples"], "batches": combos[combo]["batches"]}
    complete = all(store.is_done(b) for b in batches)
    path = store.write_summary({**request.header, "combos": combos, "complete": complete})
    return {"summary": str(path), "combos": counts, "complete": complete}


def _task_metrics(run: RunData, records: list[dict[str, Any]]) -> dict[str, Any]:
    """GLUE's metric(s) of the task from the encrypted logits (e.g. F1 for MRPC, Matthews for CoLA)
    and, in evaluation mode, from the plaintext reference logits of the same examples."""
    if not records:
        return {}
    metrics = {"task_metrics": _metrics_of(run, records, "logits")}
    if all("plaintext_logits" in r for r in records):
        metrics["plaintext_task_metrics"] = _metrics_of(run, records, "plaintext_logits")
    return metrics


def _metrics_of(run: RunData, records: list[dict[str, Any]], key: str) -> dict[str, float]:
    import numpy as np

    from mpcformer.data import compute_metrics

    logits = np.asarray([r[key] for r in records], dtype=np.float64)
    return compute_metrics(logits, [r["label"] for r in records], _spec(run))


def _spec(run: RunData):
    from mpcformer.data import DataConfig, resolve_task

    return resolve_task(DataConfig.model_validate(json.loads(run.data)))


def _record_forward(costs: dict[str, Any], combo: str, model: str, job: str, rank: int, sequences: int) -> None:
    """Prometheus metrics of this party's forward; a metrics problem never fails the batch."""
    try:
        from mpcformer.mpc import runtime
        from mpcformer.observability import record_forward, record_protocol

        record_forward(costs, approx=combo, model=model, job=job, rank=rank, sequences=sequences)
        path = runtime.describe()
        if path is not None:
            record_protocol(runtime.protocol_label(path), job=job)
    except Exception as err:  # pragma: no cover - depends on the metrics backend
        log.debug("forward metrics not recorded: %s", err)


def _cost_totals(costs: dict[str, Any]) -> dict[str, float]:
    return {"rounds": costs["total"]["rounds"], "bytes": costs["total"]["bytes"], "dealer_bytes": costs["dealer"]["bytes"]}


def _plaintext_reference(request: ClientBatch, tensors: dict[str, Any]) -> list[list[float]]:
    """Logits (B, L) of the same approximated model in plaintext (evaluation mode, see module doc)."""
    from mpcformer.inference.protocol import plaintext_logits

    model = load_owner_model(request.reference)
    logits = plaintext_logits(
        model, request.combo, tensors["input_ids"], tensors["attention_mask"], tensors.get("token_type_ids")
    )
    return logits.tolist()


def _records(
    request: ClientBatch,
    logits: list[list[float]],
    predictions: list[int] | list[float],
    labels: list[Any],
    reference: list[list[float]] | None,
    figures: dict[str, float],
    regression: bool = False,
) -> list[dict[str, Any]]:
    """One record per example; a regression prediction is the score, compared to the plaintext score."""
    records = []
    for row, example_id in enumerate(request.example_ids):
        record = {
            "example_id": example_id,
            "combo": request.combo,
            "batch_id": request.batch_id,
            "prediction": predictions[row],
            "label": labels[row],
            "logits": logits[row],
            **figures,
        }
        if reference is not None:
            ref = reference[row]
            record["plaintext_logits"] = ref
            record["plaintext_prediction"] = ref[0] if regression else max(range(len(ref)), key=ref.__getitem__)
            record["max_abs_logit_error"] = max(abs(a - b) for a, b in zip(logits[row], ref))
            if regression:
                record["abs_error"] = abs(predictions[row] - ref[0])
        records.append(record)
    return records
