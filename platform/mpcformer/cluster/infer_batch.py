"""The two sides of one encrypted-inference batch, shipped to the party actors of a group.

Data locality: the driver sends each party only paths and ids. The model owner (party 0) loads the
weights from its own path; the client (party 1) loads and tokenises its examples, learns the
logits (revealed to it alone) and commits the batch's records to the output folder itself. The
driver gets back figures only (latency, rounds, bytes), never a prediction.

With ``check_plaintext`` (evaluation runs) the client also computes the plaintext reference logits
of the same approximated model, which means loading the owner's model on the client: use it to
measure agreement, never in a deployment where the client must not see the weights.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from mpcformer.errors import UserError

__all__ = [
    "ModelSource", "OwnerBatch", "ClientBatch", "owner_batch", "client_batch", "load_owner_model",
    "load_client_tokenizer",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    """The owner's model: a preset name (tiny, minilm, bert-base, bert-large), a Hugging Face path, or a
    folder written by distillation (an approximated student)."""

    name_or_path: str
    num_labels: int = 2
    seed: int = 0


@dataclass(frozen=True)
class OwnerBatch:
    """What party 0 needs for a batch: its model and the approximation combo (no batch content)."""

    model: ModelSource
    combo: str
    job: str = "infer"  # metrics label


@dataclass(frozen=True)
class ClientBatch:
    """What party 1 needs: where its data is, which examples, and where to commit the results."""

    model: ModelSource  # for the public tokenizer (and the plaintext reference when check_plaintext)
    data: str  # DataConfig as JSON (rebuilt in the actor)
    split: str
    combo: str
    batch_id: int
    example_ids: tuple[int, ...]
    out_dir: str
    check_plaintext: bool = False
    job: str = "infer"  # metrics label


# -- loading, cached per actor process ----------------------------------------------------------
@functools.lru_cache(maxsize=4)
def load_owner_model(source: ModelSource):
    """The owner's plaintext model in eval mode (a distilled student reloads with its approximation)."""
    from mpcformer.models.presets import load_preset

    model, _tokenizer = load_preset(source.name_or_path, num_labels=source.num_labels, seed=source.seed)
    return model.eval()


@functools.lru_cache(maxsize=4)
def load_client_tokenizer(source: ModelSource):
    """The model's tokenizer, without its weights: public, the owner publishes it with the model.

    Presets use the shipped MiniLM (BERT uncased) tokenizer; a folder or hub name its own.
    """
    from transformers import AutoTokenizer

    from mpcformer.models.presets import PRESETS, minilm_path

    name = source.name_or_path
    try:
        return AutoTokenizer.from_pretrained(str(minilm_path()) if name in PRESETS else name)
    except OSError as err:
        raise UserError(f"could not load the tokenizer of model '{name}': {err}") from err


def _warn_on_combo_mismatch(model, combo: str) -> None:
    from mpcformer.models.surgery import combo_of

    trained = combo_of(model)
    if trained is not None and trained.name != combo:
        log.warning("the model was distilled for %s but runs with %s: expect lower accuracy", trained.name, combo)


@functools.lru_cache(maxsize=4)
def _client_examples(data_json: str, split: str, seed: int):
    from mpcformer.data import DataConfig, load_split

    return load_split(DataConfig.model_validate(json.loads(data_json)), split, seed=seed)  # type: ignore[arg-type]


def _client_tensors(request: ClientBatch) -> tuple[dict[str, Any], list[Any]]:
    """Tokenise the batch's examples and pad them to the longest: ``input_ids`` etc. (B, T)."""
    from mpcformer.data import DataConfig, TextExamples, collate, encode

    examples = _client_examples(request.data, request.split, request.model.seed)
    ids = request.example_ids
    texts, labels = [examples.texts[i] for i in ids], [examples.labels[i] for i in ids]
    subset = TextExamples(examples.spec, texts, labels, examples.source)
    tokenizer = load_client_tokenizer(request.model)
    max_length = DataConfig.model_validate(json.loads(request.data)).max_length
    encoded = encode(subset, tokenizer, max_length)
    tensors = collate([encoded[i] for i in range(len(encoded))], pad_token_id=tokenizer.pad_token_id or 0)
    return tensors, subset.labels


# -- the two parties ----------------------------------------------------------------------------
def owner_batch(rank: int, request: OwnerBatch) -> dict[str, Any]:
    """Party 0: share the model, run the encrypted forward; send its own cost totals to the client."""
    from mpcformer.models.private_inference import run_private_inference
    from mpcformer.mpc.compat import crypten

    model = load_owner_model(request.model)
    _warn_on_combo_mismatch(model, request.combo)
    out = run_private_inference(rank, model=model, combo=request.combo)
    crypten.communicator.get().broadcast_obj(_cost_totals(out["costs"]), src=0)  # public figures
    _record_forward(out["costs"], request.combo, request.model, request.job, rank, sequences=0)
    return {"costs": out["costs"], "setup_s": out["setup_s"]}


def client_batch(rank: int, request: ClientBatch) -> dict[str, Any]:
    """Party 1: encrypted forward on its tokens, learn the logits, commit the records; return figures."""
    from mpcformer.cluster.batches import commit_batch
    from mpcformer.models.private_inference import run_private_inference
    from mpcformer.mpc.compat import crypten

    tensors, labels = _client_tensors(request)
    types = tensors.get("token_type_ids")
    tic = time.perf_counter()
    out = run_private_inference(
        rank, input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"],
        token_type_ids=types, combo=request.combo,
    )
    latency_s = time.perf_counter() - tic
    owner = crypten.communicator.get().broadcast_obj(None, src=0)
    _record_forward(out["costs"], request.combo, request.model, request.job, rank, len(request.example_ids))
    mine = _cost_totals(out["costs"])
    figures = {
        "batch_latency_s": latency_s,
        "rounds": mine["rounds"],
        "bytes": mine["bytes"] + owner["bytes"],  # party-to-party traffic, both directions
        "dealer_bytes": mine["dealer_bytes"] + owner["dealer_bytes"],
    }
    reference = _plaintext_reference(request, tensors) if request.check_plaintext else None
    records = _records(request, out["logits"], out["predictions"], labels, reference, figures)
    committed = commit_batch(request.out_dir, request.combo, request.batch_id, records)
    return {
        "combo": request.combo, "batch_id": request.batch_id, "examples": len(records), "committed": committed,
        **figures,
    }


def _record_forward(costs: dict[str, Any], combo: str, model: ModelSource, job: str, rank: int, sequences: int) -> None:
    """Prometheus metrics of this party's forward; a metrics problem never fails the batch."""
    try:
        from mpcformer.observability import record_forward

        record_forward(costs, approx=combo, model=model.name_or_path, job=job, rank=rank, sequences=sequences)
    except Exception as err:  # pragma: no cover - depends on the metrics backend
        log.debug("forward metrics not recorded: %s", err)


def _cost_totals(costs: dict[str, Any]) -> dict[str, float]:
    return {"rounds": costs["total"]["rounds"], "bytes": costs["total"]["bytes"], "dealer_bytes": costs["dealer"]["bytes"]}


def _plaintext_reference(request: ClientBatch, tensors: dict[str, Any]) -> list[list[float]]:
    """Logits (B, L) of the same approximated model in plaintext (evaluation only, see module doc)."""
    from mpcformer.models.private_inference import plaintext_logits

    model = load_owner_model(request.model)
    logits = plaintext_logits(
        model, request.combo, tensors["input_ids"], tensors["attention_mask"], tensors.get("token_type_ids")
    )
    return logits.tolist()


def _records(
    request: ClientBatch,
    logits: list[list[float]],
    predictions: list[int],
    labels: list[Any],
    reference: list[list[float]] | None,
    figures: dict[str, float],
) -> list[dict[str, Any]]:
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
            record["plaintext_prediction"] = max(range(len(ref)), key=ref.__getitem__)
            record["max_abs_logit_error"] = max(abs(a - b) for a, b in zip(logits[row], ref))
        records.append(record)
    return records
