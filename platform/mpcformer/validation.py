"""Up-front checks of user input, before any model is loaded or any party joins a session.

Each check returns the value it validated (normalised) or raises :class:`InputError` (a
:class:`~mpcformer.errors.UserError`: the CLI prints it on one line and exits 2) naming the
input, the value and what to pass instead. Typical use, once the model's config is known:

    ids = check_model_inputs(model.config, input_ids, attention_mask, tokenizer_vocab=len(tokenizer))
    check_labels(labels, model.config.num_labels)

Checks (plain functions, no heavy imports at module level):

- :func:`check_positive_int`, :func:`check_batch_size`: integers ``>= 1`` (bools are refused);
- :func:`check_model_path`: a folder holding a Hugging Face ``config.json`` (or a preset name);
- :func:`check_vocab_match`: the tokenizer's ids fit in the model's embedding table;
- :func:`check_sequence_length`: ``1 <= T <= max_position_embeddings - position_offset``
  (RoBERTa counts positions from ``pad_token_id + 1``, so its offset is ``pad_token_id + 1``);
- :func:`check_token_ids`: a (B, T) integer batch with ``0 <= id < vocab_size``;
- :func:`check_attention_mask`: a 0/1 mask of the ids' shape, at least one real token per row;
- :func:`check_labels`: class ids in ``[0, num_labels)``, or finite floats when ``num_labels == 1``.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Any, Iterable

from mpcformer.errors import UserError

__all__ = [
    "InputError",
    "check_positive_int",
    "check_batch_size",
    "check_model_path",
    "check_vocab_match",
    "check_sequence_length",
    "check_token_ids",
    "check_attention_mask",
    "check_labels",
    "check_model_inputs",
    "position_offset",
]


class InputError(UserError, ValueError):
    """An input that fails an up-front check; the message says which, what it was and the fix."""


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_positive_int(name: str, value: Any) -> int:
    """``value`` as an ``int >= 1``; floats, strings and bools are refused, not coerced."""
    if not _is_int(value):
        raise InputError(f"{name} must be a whole number >= 1, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise InputError(f"{name} must be at least 1, got {value}")
    return int(value)


def check_batch_size(batch_size: Any) -> int:
    """Sequences per forward: an ``int >= 1``."""
    return check_positive_int("batch size", batch_size)


def check_model_path(path: Any, presets: Iterable[str] = ()) -> str:
    """A preset name from ``presets``, or a folder with a Hugging Face ``config.json``."""
    if not isinstance(path, (str, Path)) or not str(path).strip():
        raise InputError(f"model must be a preset name or a checkpoint folder, got {path!r}")
    presets = tuple(presets)
    if str(path) in presets:
        return str(path)
    hint = f"pass a preset ({', '.join(presets)}) or " if presets else "pass "
    try:
        folder = Path(path).expanduser()
        exists = folder.exists()
    except (OSError, ValueError, RuntimeError) as err:  # NUL byte, name too long, unknown ~user
        raise InputError(f"model path {str(path)[:80]!r} is not a usable path ({err}); {hint}a checkpoint folder") from None
    if not exists:
        raise InputError(f"model folder not found: {folder} ({hint}a folder written by save_pretrained)")
    if not folder.is_dir():
        raise InputError(f"model path {folder} is a file; {hint}the checkpoint folder that holds config.json")
    if not (folder / "config.json").is_file():
        raise InputError(f"{folder} has no config.json: not a Hugging Face checkpoint ({hint}a save_pretrained folder)")
    return str(folder)


def check_vocab_match(tokenizer_vocab: int, model_vocab: int) -> None:
    """The tokenizer may emit ids up to ``tokenizer_vocab - 1``: the embedding table must hold them."""
    check_positive_int("tokenizer vocabulary size", tokenizer_vocab)
    check_positive_int("model vocabulary size", model_vocab)
    if tokenizer_vocab > model_vocab:
        raise InputError(
            f"the tokenizer has {tokenizer_vocab} ids but the model's embedding table only {model_vocab}: "
            "use the tokenizer saved with this model (or resize the model's token embeddings)"
        )


def position_offset(model_config: Any) -> int:
    """Positions a family reserves before the first token: RoBERTa ``pad_token_id + 1``, else 0."""
    if getattr(model_config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        return int(getattr(model_config, "pad_token_id", 1) or 0) + 1
    return 0


def check_sequence_length(seq_len: Any, max_position_embeddings: int, offset: int = 0) -> int:
    """``1 <= seq_len <= max_position_embeddings - offset``."""
    seq_len = check_positive_int("sequence length", seq_len)
    limit = max_position_embeddings - offset
    if seq_len > limit:
        raise InputError(
            f"sequence length {seq_len} exceeds the model's {limit} positions "
            f"(max_position_embeddings={max_position_embeddings}); truncate to at most {limit} tokens"
        )
    return seq_len


def _as_long_2d(name: str, value: Any):
    import torch

    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise InputError(f"{name} must be a (batch, tokens) array of integers: {err}") from None
    if tensor.dim() != 2:
        raise InputError(f"{name} must be (batch, tokens), got shape {tuple(tensor.shape)}")
    if tensor.shape[0] < 1 or tensor.shape[1] < 1:
        raise InputError(f"{name} is empty (shape {tuple(tensor.shape)}): pass at least one token of one sequence")
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise InputError(f"{name} must hold integers, got {tensor.dtype}")
    return tensor.long()


def check_token_ids(input_ids: Any, vocab_size: int):
    """A (B, T) integer tensor with every id in ``[0, vocab_size)``; returned as ``torch.long``."""
    ids = _as_long_2d("input_ids", input_ids)
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise InputError(f"token id {bad} is outside the model's vocabulary 0..{vocab_size - 1}: tokenize with this model's tokenizer")
    return ids


def check_attention_mask(attention_mask: Any, shape: tuple[int, int]):
    """A 0/1 integer mask of ``shape`` (B, T) with at least one real token (1) per row."""
    mask = _as_long_2d("attention_mask", attention_mask)
    if tuple(mask.shape) != tuple(shape):
        raise InputError(f"attention_mask has shape {tuple(mask.shape)} but input_ids {tuple(shape)}")
    if bool(((mask != 0) & (mask != 1)).any()):
        raise InputError("attention_mask must hold only 0 (padding) and 1 (real token)")
    empty = (mask.sum(-1) == 0).nonzero().flatten().tolist()
    if empty:
        raise InputError(f"attention_mask rows {empty} have no real token: drop empty sequences")
    return mask


def check_labels(labels: Iterable[Any], num_labels: int) -> list:
    """Class ids in ``[0, num_labels)``; with ``num_labels == 1`` (regression) finite numbers."""
    num_labels = check_positive_int("num_labels", num_labels)
    values = list(labels.tolist() if hasattr(labels, "tolist") else labels)
    for i, value in enumerate(values):
        if num_labels == 1:
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise InputError(f"label #{i} is {value!r}: a regression task needs finite numbers")
        elif not _is_int(value) or not 0 <= value < num_labels:
            raise InputError(f"label #{i} is {value!r}: expected a class id in 0..{num_labels - 1}")
    return values


def check_model_inputs(model_config: Any, input_ids: Any, attention_mask: Any = None, tokenizer_vocab: int | None = None):
    """All checks of one batch against a Hugging Face model config; returns the ids as ``long``.

    Checks the tokenizer/model vocabulary match (when ``tokenizer_vocab`` is given), the ids'
    range, batch size and sequence length against ``max_position_embeddings``, and the mask.
    """
    vocab = check_positive_int("model vocabulary size", getattr(model_config, "vocab_size", None))
    if tokenizer_vocab is not None:
        check_vocab_match(tokenizer_vocab, vocab)
    ids = check_token_ids(input_ids, vocab)
    check_batch_size(int(ids.shape[0]))
    max_positions = getattr(model_config, "max_position_embeddings", None)
    if max_positions is not None:
        check_sequence_length(int(ids.shape[1]), int(max_positions), position_offset(model_config))
    if attention_mask is not None:
        check_attention_mask(attention_mask, tuple(ids.shape))
    return ids
