"""One party's side of a private inference: the owner's model on the client's tokens, under MPC.

Both parties call :func:`run_private_inference` inside an open MPC session
(:class:`~mpcformer.mpc.session.MPCSession`, a Ray party actor or ``run_local``) with the same combo:

    # party 0, the model owner                        # party 1, the client
    run_private_inference(0, model=hf_model,           run_private_inference(1, input_ids=ids,
                          combo="quad+2quad")                attention_mask=mask, combo="quad+2quad")

What becomes public (sent in the clear inside this function, one broadcast each way):

- owner -> client: :class:`~mpcformer.models.encrypted_bert.EncryptedBertConfig`: family, vocabulary,
  hidden, intermediate and label sizes, layers, heads, positions, token types, LayerNorm eps and
  the two public LayerNorm input scales (one rounded number derived from the embedding tables);
  for a student calibrated for ``ln:fit``, each LayerNorm's two variance ranges.
- client -> owner: the batch shape (B, T), the attention mask (each sentence's length), the
  token-type ids (where a second segment starts); position ids follow from these.
- both: the approximation combo's name and parameters (checked equal on both sides).
- owner -> client: a fingerprint of the owner's weights, keyed with a secret the owner draws from
  the OS for each session (it tells the client whether the weights changed since its last call in
  this session, nothing else: without the key it cannot confirm a guessed checkpoint, and two
  sessions with the same weights send unrelated fingerprints); both: whether each still holds the
  model built then.

Private: the owner's weights (only ever party 0's shares), the client's token ids (party 1's
shares of one-hot rows), every intermediate activation. Only the client learns the logits.

**One build per session.** Building the encrypted model (sharing the small weights and, with
reusable weight masks, sending each weight matrix once under its mask:
:mod:`mpcformer.mpc.fixed_operand`) is kept for the next call in the same MPC session when the
owner's weights are unchanged, so a party group serving many batches pays it once. The result's
``setup`` says what the call paid for it.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import secrets
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch

from mpcformer.approx import Combo
from mpcformer.errors import UserError
from mpcformer.mpc.compat import crypten
from mpcformer.mpc.costs import CostLedger
from mpcformer.mpc.reveal import reveal_to
from mpcformer.mpc.session import on_session_close, session_device, session_generation
from mpcformer.models.encrypted_bert import (
    EncryptedBertConfig,
    EncryptedBertForSequenceClassification,
    OwnerWeights,
    PublicBatch,
)

__all__ = ["OWNER", "CLIENT", "run_private_inference", "plaintext_logits", "weights_fingerprint"]

log = logging.getLogger(__name__)

OWNER, CLIENT = 0, 1  # party ranks: the model owner secret-shares weights, the client its tokens


def _as_combo(combo: Combo | str) -> Combo:
    return combo if isinstance(combo, Combo) else Combo.parse(combo)


def _check_role_inputs(rank: int, model: Any, input_ids: Any) -> None:
    if rank not in (OWNER, CLIENT):
        raise UserError(f"private inference has two parties (0 = owner, 1 = client), got rank {rank}")
    if rank == OWNER and model is None:
        raise UserError("party 0 (the model owner) must pass model=<a Hugging Face *ForSequenceClassification model>")
    if rank == CLIENT and input_ids is None:
        raise UserError("party 1 (the client) must pass input_ids (batch, tokens)")
    if rank == OWNER and input_ids is not None:
        raise UserError("party 0 (the model owner) must not receive the client's input_ids")
    if rank == CLIENT and model is not None:
        raise UserError("party 1 (the client) must not hold the model; pass it on party 0")


def _broadcast(rank: int, src: int, build: Callable[[], dict[str, Any]], what: str) -> dict[str, Any]:
    """``src`` builds a plain dict and broadcasts it; a :class:`UserError` there reaches every party."""
    sent = None
    if rank == src:
        try:
            sent = {"value": build()}
        except UserError as err:
            sent = {"error": str(err)}
    received = crypten.communicator.get().broadcast_obj(sent, src=src)
    if "error" in received:
        who = "this party" if rank == src else f"party {src}"
        raise UserError(f"{who} could not send the {what}: {received['error']}")
    return received["value"]


# -- the encrypted model, built once per session ------------------------------------------------
@dataclass
class _BuiltModel:
    generation: int  # the MPC session it was built in (mpcformer.mpc.session.session_generation)
    key: str  # weights_fingerprint + architecture + device
    model: EncryptedBertForSequenceClassification


_built: _BuiltModel | None = None  # this process's (a party runs one session at a time)


def _forget_built_model() -> None:
    """Session closed: its encrypted model (the owner's weights or their masked copy) is of no further use."""
    global _built
    _built = None


on_session_close(_forget_built_model)


_fingerprint: dict[str, Any] = {}  # the last model hashed: weak reference, tensor identities, hash


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A hash of every tensor of the owner's ``state_dict`` (names, shapes, dtypes, bytes); the owner
    keeps it and sends only a keyed hash of it (:func:`_fingerprint_key`).

    Hashing bert-base takes ~0.6 s, so the last hash is kept while the same model object lives
    and none of its tensors is replaced (``data_ptr``) or modified in place (torch's ``_version``
    counter; writes through ``tensor.data`` bypass it: reload the model after such surgery).
    """
    state = model.state_dict()
    identity = tuple((name, t.data_ptr(), t._version) for name, t in state.items())
    if _fingerprint and _fingerprint["model"]() is model and _fingerprint["identity"] == identity:
        return _fingerprint["hash"]
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in state.items():
        flat = tensor.detach().cpu().contiguous().view(-1)
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(flat.view(torch.uint8).numpy())
    _fingerprint.update(model=weakref.ref(model), identity=identity, hash=digest.hexdigest())
    return _fingerprint["hash"]


_architectures: dict[str, EncryptedBertConfig] = {}  # the last model's, by weights and HF config


def _architecture(model: torch.nn.Module, fingerprint: str) -> EncryptedBertConfig:
    """``EncryptedBertConfig.from_hf(model)``, kept while the weights (``fingerprint``) and the HF
    config stay the same (it scans the embedding tables: ~0.6 s on bert-base, on the client's
    critical path)."""
    key = f"{fingerprint}|{model.config.to_json_string()}"
    if key not in _architectures:
        _architectures.clear()
        _architectures[key] = EncryptedBertConfig.from_hf(model)
    return _architectures[key]


def _held_key() -> str | None:
    """Key of the model this party built earlier in the open session, if any."""
    return _built.key if _built is not None and _built.generation == session_generation() else None


def _encrypted_model(
    rank: int, config: EncryptedBertConfig, model: torch.nn.Module | None, device: str, key: str, reuse: bool
) -> tuple[EncryptedBertForSequenceClassification, dict[str, Any]]:
    """The session's encrypted model: the one built before (``reuse``, agreed by both parties) or a
    new one, built now; and what this call paid for it (time, rounds, bytes)."""
    global _built
    if reuse:
        if _built is None:  # cannot happen: both parties said they hold the model with this key
            raise RuntimeError(f"party {rank} agreed to reuse an encrypted model it does not hold")
        free = {name: 0.0 for name in ("time_s", "rounds", "bytes", "dealer_rounds", "dealer_bytes")}
        return _built.model, {**free, "reused": True}
    ledger = CostLedger()
    with ledger.active():
        if _held_key() is not None:
            _built.model.release()  # the dealer drops the old masks (party 0 asks; the others only forget)
        _built = None
        state = model.state_dict() if rank == OWNER else None
        encrypted = EncryptedBertForSequenceClassification(config, OwnerWeights(config.family, state, device))
    _built = _BuiltModel(session_generation(), key, encrypted)
    cost, dealer = ledger.total(), ledger.dealer
    return encrypted, {
        "time_s": cost.time_s, "rounds": cost.rounds, "bytes": cost.bytes,
        "dealer_rounds": dealer.rounds, "dealer_bytes": dealer.bytes, "reused": False,
    }


_session_secret: dict[int, bytes] = {}  # the owner's fingerprint key, by session


def _fingerprint_key() -> bytes:
    """The owner's secret for fingerprints in the open session (128 bits from the OS, drawn once)."""
    generation = session_generation()
    if generation not in _session_secret:
        _session_secret.clear()
        _session_secret[generation] = secrets.token_bytes(16)
    return _session_secret[generation]


on_session_close(_session_secret.clear)


def _exchange_architecture(
    rank: int, model: torch.nn.Module | None, combo: Combo, device: str
) -> tuple[EncryptedBertConfig, dict]:
    """Owner broadcasts the public architecture, its combo (checked in :func:`_check_same_combo`),
    the key of the encrypted model to use and the key of the one it holds."""
    def build() -> dict[str, Any]:
        fingerprint = weights_fingerprint(model)
        config = _architecture(model, fingerprint)
        key = f"{fingerprint}|{config.model_dump_json()}|{device}"
        key = hashlib.blake2b(key.encode(), digest_size=16, key=_fingerprint_key()).hexdigest()
        return {"config": config.model_dump(), "combo": combo.to_dict(), "key": key, "held": _held_key()}

    received = _broadcast(rank, OWNER, build, "model architecture")
    return EncryptedBertConfig(**received["config"]), received


def _public_batch_fields(input_ids: torch.Tensor, attention_mask: Any, token_type_ids: Any) -> dict[str, Any]:
    if input_ids.dim() != 2:
        raise UserError(f"input_ids must be (batch, tokens), got shape {tuple(input_ids.shape)}")
    mask = torch.ones(input_ids.shape) if attention_mask is None else torch.as_tensor(attention_mask)
    if tuple(mask.shape) != tuple(input_ids.shape):
        raise UserError(f"attention_mask shape {tuple(mask.shape)} differs from input_ids {tuple(input_ids.shape)}")
    types = None if token_type_ids is None else torch.as_tensor(token_type_ids).long().tolist()
    return {"attention_mask": mask.to(torch.float32).tolist(), "token_type_ids": types}


def _exchange_batch(
    rank: int, config: EncryptedBertConfig, input_ids: torch.Tensor | None, attention_mask: Any, token_type_ids: Any,
    combo: Combo,
) -> tuple[PublicBatch, dict]:
    """Client broadcasts the public part of its batch (attention mask, token-type ids) and its combo."""
    def build() -> dict[str, Any]:
        return {
            **_public_batch_fields(input_ids, attention_mask, token_type_ids), "combo": combo.to_dict(),
            "held": _held_key(),
        }

    received = _broadcast(rank, CLIENT, build, "batch's public fields")
    batch = PublicBatch.build(config, torch.tensor(received["attention_mask"]), received["token_type_ids"])
    return batch, received


def _check_same_combo(owner_combo: dict, client_combo: dict) -> None:
    """Both parties hold both records after the two broadcasts, so both raise together."""
    if owner_combo != client_combo:
        raise UserError(f"the parties disagree on the approximation: owner {owner_combo}, client {client_combo}")


def run_private_inference(
    rank: int,
    *,
    model: torch.nn.Module | None = None,
    input_ids: Any = None,
    attention_mask: Any = None,
    token_type_ids: Any = None,
    combo: Combo | str,
    ledger: CostLedger | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Run the encrypted forward of the owner's classifier on the client's batch; plain data out.

    Rank 0 (owner) passes ``model``; rank 1 (client) passes ``input_ids`` (B, T) and optionally
    ``attention_mask`` (B, T, 1 = real token; default all ones) and ``token_type_ids``. ``ledger``
    (inactive; this function activates it) records time, comm time, rounds and bytes per
    operation category and layer of the exchanges and the forward. Building the encrypted model
    (sharing the small weights, sending the matrices under their masks) is accounted apart as
    ``setup`` (time, rounds and bytes with the other party and with the dealer, and ``reused``:
    the model built by an earlier call of this session served again, at no cost); ``setup_s`` is
    its time. ``device`` (default: the open session's,
    :func:`~mpcformer.mpc.session.session_device`) is where the shares live and the arithmetic runs.

    Returns on the client ``{"combo", "logits": [[float]], "predictions": [int], "setup", "setup_s",
    "costs"}``, on the owner the same without logits and predictions.
    """
    _check_role_inputs(rank, model, input_ids)
    combo = _as_combo(combo)
    device = device or session_device()
    ledger = ledger if ledger is not None else CostLedger()
    client_ids = torch.as_tensor(input_ids).long() if rank == CLIENT else None
    with ledger.active():
        config, owner = _exchange_architecture(rank, model, combo, device)
        batch, client = _exchange_batch(rank, config, client_ids, attention_mask, token_type_ids, combo)
        _check_same_combo(owner["combo"], client["combo"])
    reuse = owner["key"] == owner["held"] == client["held"]  # both parties see the same three keys
    encrypted, setup = _encrypted_model(rank, config, model, device, owner["key"], reuse)
    log.info(
        "party %d: %s model %s in %.2fs; batch %s", rank, config.family,
        "reused" if reuse else "built", setup["time_s"], batch.shape,
    )
    with ledger.active():
        logits = encrypted(client_ids, batch, combo, ledger)  # (B, L) encrypted
        with ledger.scope("classifier"):
            revealed = reveal_to(logits, CLIENT)  # None on the owner: it receives nothing
    result: dict[str, Any] = {
        "combo": combo.name, "setup": setup, "setup_s": setup["time_s"], "costs": ledger.to_dict(),
    }
    if rank == CLIENT:
        revealed = revealed.cpu()
        result["logits"] = revealed.tolist()
        result["predictions"] = revealed.argmax(-1).tolist()
    return result


def plaintext_logits(
    model: torch.nn.Module,
    combo: Combo | str,
    input_ids: Any,
    attention_mask: Any = None,
    token_type_ids: Any = None,
) -> torch.Tensor:
    """Reference: logits (B, L) of a copy of ``model`` with the combo's plaintext functions swapped in."""
    from mpcformer.models.surgery import approximate

    approximated = approximate(copy.deepcopy(model), _as_combo(combo)).eval()
    ids = torch.as_tensor(input_ids).long()
    mask = torch.ones_like(ids) if attention_mask is None else torch.as_tensor(attention_mask).long()
    kwargs = {} if token_type_ids is None else {"token_type_ids": torch.as_tensor(token_type_ids).long()}
    with torch.no_grad():
        return approximated(input_ids=ids, attention_mask=mask, **kwargs).logits
