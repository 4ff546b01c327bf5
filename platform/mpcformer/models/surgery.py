"""Plaintext model surgery: an HF encoder with its GeLU, attention softmax and (if the combo says
so) LayerNorm normaliser swapped for an approximation combo, same weights (MPCFormer stage 1).

    model = approximate(AutoModelForSequenceClassification.from_pretrained(path), Combo.parse("quad+2quad"))
    model.save_pretrained(out)             # config.json records {"mpcformer": combo.to_dict()}
    model = load_approximated(out)         # ... and this restores the approximation

The attention normaliser is plugged in through transformers' attention interface (the
``"mpcformer"`` implementation registered in ``ALL_ATTENTION_FUNCTIONS``, with boolean masks
from ``ALL_MASK_ATTENTION_FUNCTIONS``); the activation module of each feed-forward block is
replaced by :class:`ApproximatedActivation`, and, with a LayerNorm normaliser other than
``ln:exact``, every ``nn.LayerNorm`` by :class:`ApproximatedLayerNorm` (same parameters; the
embeddings' one takes its public input scale from the weights at surgery time, as the encrypted
model does from the weights it serves). Teachers go through the same code path with the
``exact`` combo (gelu+softmax), which reproduces the untouched model's logits.

:func:`calibrate_layernorms` fits ``ln:fit`` to one model's LayerNorms, each with its own ranges
([CLS] apart), recorded as ``config.mpcformer_layernorm_calibration`` beside the combo; surgery
and the encrypted model both apply it.

Supported families (``encoder_family``): BERT and its variants (MiniLM, ...), RoBERTa, DistilBERT.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from mpcformer.approx.registry import DEFAULT_LAYERNORM, Combo, get
from mpcformer.errors import UserError

__all__ = [
    "ATTENTION_IMPLEMENTATION",
    "ApproximatedActivation",
    "ApproximatedLayerNorm",
    "approximate",
    "approximated_attention",
    "calibrate_layernorms",
    "combo_of",
    "encoder_family",
    "layernorm_calibration",
    "load_approximated",
    "record_attention_scores",
]

log = logging.getLogger(__name__)

#: the name under which the approximated attention is registered with transformers
ATTENTION_IMPLEMENTATION = "mpcformer"
#: config attribute holding ``Combo.to_dict()`` (saved in config.json)
CONFIG_KEY = "mpcformer"
#: config attribute holding the LayerNorm normaliser's per-LayerNorm ranges (:func:`calibrate_layernorms`)
CALIBRATION_KEY = "mpcformer_layernorm_calibration"
# model_type -> family; a family fixes where the activations and self-attention modules are
_FAMILIES = {"bert": "bert", "roberta": "roberta", "distilbert": "distilbert"}
_RECORD_ATTR = "_mpcformer_score_sink"
_MASKED_BELOW = -1.0e3  # additive float masks: entries below this are padding (HF uses dtype min)


# ----------------------------------------------------------------------------- families
def encoder_family(model_or_config: Any) -> str:
    """``"bert" | "roberta" | "distilbert"`` from a model or its config's ``model_type``."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    family = _FAMILIES.get(model_type or "")
    if family is None:
        raise UserError(
            f"model type '{model_type}' is not supported by the MPC surgery; supported: {', '.join(sorted(_FAMILIES))}"
        )
    return family


def _activation_slots(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(parent module, attribute) of every feed-forward activation: BERT/RoBERTa
    ``*Intermediate.intermediate_act_fn``, DistilBERT ``FFN.activation``."""
    attribute = "activation" if encoder_family(model) == "distilbert" else "intermediate_act_fn"
    return [
        (module, attribute)
        for module in model.modules()
        if hasattr(module, attribute) and (attribute != "activation" or type(module).__name__ == "FFN")
    ]


def _self_attention_modules(model: nn.Module) -> list[nn.Module]:
    """The self-attention module of each layer (BertSelfAttention, RobertaSelfAttention, ...)."""
    return [m for m in model.modules() if type(m).__name__.endswith("SelfAttention")]


def _layer_count(config: Any) -> int:
    return int(getattr(config, "num_hidden_layers", None) or getattr(config, "n_layers"))


# ----------------------------------------------------------------------------- activation
class ApproximatedActivation(nn.Module):
    """The registry activation ``name`` (plaintext form) with fixed ``params``; picklable."""

    def __init__(self, name: str, params: dict[str, float] | None = None):
        super().__init__()
        self.approximation = name
        self.params = get(name, "activation").resolve_params(params)
        self._fn = get(name, "activation").plain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fn(x, **self.params)

    def extra_repr(self) -> str:
        return ", ".join([self.approximation, *(f"{k}={v:g}" for k, v in self.params.items())])


# ----------------------------------------------------------------------------- layer norm
class ApproximatedLayerNorm(nn.LayerNorm):
    """LayerNorm whose ``1/sqrt(var + eps)`` is the registry LayerNorm normaliser ``name`` (plaintext
    form), evaluated where the encrypted model evaluates it: on the variance of ``input_scale * x``
    (the public power of 2 of :class:`~mpcformer.models.encrypted_bert.EncryptedLayerNorm`).
    Same parameters (``weight``, ``bias``) and state-dict keys as the module it replaces."""

    def __init__(self, layer_norm: nn.LayerNorm, name: str, params: dict[str, float] | None = None, input_scale: int = 1):
        super().__init__(layer_norm.normalized_shape, eps=layer_norm.eps, elementwise_affine=True)
        self.weight, self.bias = layer_norm.weight, layer_norm.bias  # the same Parameters: optimisers keep them
        self.approximation, self.input_scale = name, int(input_scale)
        self.params = get(name, "layernorm").resolve_params(params)
        self._fn = get(name, "layernorm").plain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.input_scale
        centred = x - x.mean(-1, keepdim=True)  # (..., H)
        variance = centred.square().mean(-1, keepdim=True)  # (..., 1)
        inv_std = self._fn(variance * k**2 + self.eps * k**2, **self.params) * k  # 1/sqrt(var + eps), (..., 1)
        return centred * inv_std * self.weight + self.bias

    def extra_repr(self) -> str:
        params = ", ".join(f"{key}={value:g}" for key, value in self.params.items())
        return f"{self.approximation}, input_scale={self.input_scale}" + (f", {params}" if params else "")

    def restored(self) -> nn.LayerNorm:
        """A plain ``nn.LayerNorm`` holding the same parameters."""
        plain = nn.LayerNorm(self.normalized_shape, eps=self.eps, elementwise_affine=True)
        plain.weight, plain.bias = self.weight, self.bias
        return plain


def _layer_norm_slots(model: nn.Module) -> list[tuple[str, nn.Module, str, nn.LayerNorm]]:
    """(name, parent, attribute, module) of every LayerNorm of the encoder and its embeddings; the
    name is the module's path, as in the checkpoint's keys (``bert.encoder.layer.0.output.LayerNorm``)."""
    return [
        (f"{prefix}.{attribute}" if prefix else attribute, parent, attribute, child)
        for prefix, parent in model.named_modules()
        for attribute, child in parent.named_children()
        if isinstance(child, nn.LayerNorm)
    ]


def _embeddings_input_scale(model: nn.Module, parent: nn.Module) -> int:
    """The public input scale the encrypted model gives the embeddings' LayerNorm (1 elsewhere)."""
    if "Embeddings" not in type(parent).__name__ or encoder_family(model) not in ("bert", "roberta"):
        return 1
    from mpcformer.models.encrypted_bert import embeddings_input_scale

    family = encoder_family(model)
    first_position = (model.config.pad_token_id or 0) + 1 if family == "roberta" else 0
    return embeddings_input_scale(
        parent.word_embeddings.weight, parent.position_embeddings.weight, parent.token_type_embeddings.weight,
        first_position,
    )


def _swap_layer_norms(model: nn.Module, combo: Combo) -> None:
    """Every LayerNorm with the combo's normaliser: HF's own module for ``ln:exact``, else an
    :class:`ApproximatedLayerNorm` (modules already approximated are rebuilt or restored), with its
    calibrated parameters where the checkpoint has them for this normaliser."""
    calibrated = layernorm_calibration(getattr(model.config, CALIBRATION_KEY, None), combo.layernorm)
    for name, parent, attribute, module in _layer_norm_slots(model):
        plain = module.restored() if isinstance(module, ApproximatedLayerNorm) else module
        if combo.layernorm == DEFAULT_LAYERNORM and not combo.layernorm_params:
            setattr(parent, attribute, plain)
        else:
            scale = _embeddings_input_scale(model, parent)
            params = {**combo.layernorm_params, **calibrated.get(name, {})}
            setattr(parent, attribute, ApproximatedLayerNorm(plain, combo.layernorm, params, scale))


# ----------------------------------------------------------------------------- calibration
def layernorm_calibration(record: dict[str, Any] | None, normaliser: str) -> dict[str, dict[str, float]]:
    """LayerNorm name -> calibrated parameters of ``normaliser``, from a calibration record (an HF
    config's ``mpcformer_layernorm_calibration``); empty when it has none for that normaliser."""
    record = record or {}
    return dict(record.get("params", {})) if record.get("layernorm") == normaliser else {}


def _widened(low: float, high: float, margin: float) -> tuple[float, float]:
    """``[low / margin, high * margin]`` rounded outwards to 4 significant digits (a readable record)."""
    def rounded(value: float, up: bool) -> float:
        digits = 3 - math.floor(math.log10(value))
        return (math.ceil if up else math.floor)(value * 10**digits) / 10**digits

    return rounded(low / margin, up=False), rounded(high * margin, up=True)


@torch.no_grad()
def calibrate_layernorms(
    model: nn.Module, combo: Combo, inputs: Iterable[dict[str, torch.Tensor]], margin: float = 1.5
) -> dict[str, Any]:
    """Fit ``combo``'s LayerNorm normaliser (``ln:fit``) to the variances ``model`` shows, LayerNorm
    by LayerNorm, then re-approximate ``model`` with it (in place).

    Runs ``model`` as it is (a distilled student with exact LayerNorm, typically) on ``inputs``
    (Hugging Face keyword batches with an ``attention_mask``) and records each LayerNorm's
    variance as the encrypted model evaluates it (input scale and eps included), for position 0
    ([CLS] / <s>: public, so a range of its own costs no round) and for the other real tokens
    apart. Each range is widened by ``margin`` both ways. The record, saved in ``config.json`` by
    ``save_pretrained``, is public: the owner sends it to the client with the architecture.
    Returns it.
    """
    params = get(combo.layernorm, "layernorm").params
    if "first_low" not in params:
        raise UserError(f"LayerNorm normaliser '{combo.layernorm}' takes no calibrated range; use ln:fit")
    seen: dict[str, list[float]] = {}
    mask: dict[str, torch.Tensor] = {}
    hooks = []
    for name, parent, _, module in _layer_norm_slots(model):
        scale = _embeddings_input_scale(model, parent)

        def record(module: nn.Module, args: tuple, output: Any, name: str = name, k: int = scale) -> None:
            x = args[0].float()
            variance = ((x - x.mean(-1, keepdim=True)).square().mean(-1) + module.eps) * k**2  # (B, T)
            first, rest = variance[:, 0], variance[:, 1:][mask["now"][:, 1:].bool()]
            bounds = seen.setdefault(name, [math.inf, 0.0, math.inf, 0.0])
            bounds[0], bounds[1] = min(bounds[0], first.min().item()), max(bounds[1], first.max().item())
            if rest.numel():
                bounds[2], bounds[3] = min(bounds[2], rest.min().item()), max(bounds[3], rest.max().item())

        hooks.append(module.register_forward_hook(record))
    was_training = model.training
    model.eval()
    try:
        examples = 0
        for batch in inputs:
            mask["now"] = batch["attention_mask"]
            model(**batch)
            examples += len(batch["attention_mask"])
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    if not seen:
        raise UserError("no calibration input reached the model's LayerNorms; pass at least one batch")
    calibrated = {}
    for name, (first_low, first_high, low, high) in seen.items():
        if low == math.inf:  # one-token inputs only: the other positions take the first one's range
            low, high = first_low, first_high
        calibrated[name] = dict(zip(("first_low", "first_high"), _widened(first_low, first_high, margin)))
        calibrated[name].update(zip(("low", "high"), _widened(low, high, margin)))
        get(combo.layernorm, "layernorm").resolve_params({**combo.layernorm_params, **calibrated[name]})
    record = {"layernorm": combo.layernorm, "margin": margin, "examples": examples, "params": calibrated}
    setattr(model.config, CALIBRATION_KEY, record)
    approximate(model, combo)
    log.info("calibrated %d LayerNorms' %s ranges on %d examples", len(calibrated), combo.layernorm, examples)
    return record


# ----------------------------------------------------------------------------- attention
@functools.lru_cache(maxsize=64)
def _normaliser(record_json: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return Combo.from_dict(json.loads(record_json)).normaliser_fn(encrypted=False)


def _keep_mask(attention_mask: torch.Tensor | None, scores: torch.Tensor) -> torch.Tensor:
    """Public 0/1 float mask from the mask HF passes in: (B, 1, 1, Tk) when it is the same for
    every query (padding), else (B, 1, Tq, Tk). Bool masks: True = attend; float masks are additive."""
    batch, _, _, keys = scores.shape
    if attention_mask is None:
        return scores.new_ones(batch, 1, 1, keys)
    keep = attention_mask if attention_mask.dtype == torch.bool else attention_mask > _MASKED_BELOW
    keep = keep.to(scores.dtype)  # (B, 1, Tq or 1, Tk)
    first_query = keep[:, :, :1, :]
    return first_query if torch.equal(keep, first_query.expand_as(keep)) else keep


def approximated_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention with the normaliser recorded in ``module.config.mpcformer``.

    query/key/value (B, H, T, hd) -> output (B, Tq, H, hd) and probabilities (B, H, Tq, Tk).
    Scores are ``q k^T * scaling`` (the 1/sqrt(hd) included), the normaliser's input.
    """
    record = getattr(module.config, CONFIG_KEY, None)
    if record is None:
        raise UserError("attention implementation 'mpcformer' needs a model prepared with mpcformer's approximate()")
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, H, Tq, hd) @ (B, H, hd, Tk) -> (B, H, Tq, Tk)
    sink = getattr(module, _RECORD_ATTR, None)
    if sink is not None:
        sink.append(scores)
    probs = _normaliser(json.dumps(record, sort_keys=True))(scores, _keep_mask(attention_mask, scores))
    probs = F.dropout(probs, p=dropout, training=module.training)
    output = torch.matmul(probs, value)  # (B, H, Tq, Tk) @ (B, H, Tk, hd) -> (B, H, Tq, hd)
    return output.transpose(1, 2).contiguous(), probs  # (B, Tq, H, hd)


@functools.lru_cache(maxsize=1)
def _register_attention() -> None:
    """Register the attention function and its (boolean, always materialised) mask builder once."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION_IMPLEMENTATION, approximated_attention)
    AttentionMaskInterface.register(ATTENTION_IMPLEMENTATION, sdpa_mask)


# ----------------------------------------------------------------------------- public API
def approximate(model: nn.Module, combo: Combo) -> nn.Module:
    """Swap ``model``'s feed-forward activation, attention normaliser and LayerNorm normaliser for
    ``combo`` (in place).

    Records ``combo.to_dict()`` as ``model.config.mpcformer`` so ``save_pretrained`` +
    :func:`load_approximated` restore it. Works on an already approximated model (re-surgery).
    Returns ``model``.
    """
    family = encoder_family(model)
    slots = _activation_slots(model)
    if len(slots) != _layer_count(model.config) or len(_self_attention_modules(model)) != len(slots):
        raise UserError(
            f"found {len(slots)} feed-forward activations and {len(_self_attention_modules(model))} self-attention "
            f"modules in this {family} model, expected {_layer_count(model.config)} of each; is it a standard HF encoder?"
        )
    hidden_act = getattr(model.config, "hidden_act", getattr(model.config, "activation", "gelu"))
    if combo.is_exact and hidden_act != "gelu":
        log.warning("exact combo uses erf-GeLU but this model was trained with '%s'", hidden_act)
    _register_attention()
    for parent, attribute in slots:
        setattr(parent, attribute, ApproximatedActivation(combo.activation, combo.activation_params))
    _swap_layer_norms(model, combo)
    setattr(model.config, CONFIG_KEY, combo.to_dict())
    model.set_attn_implementation(ATTENTION_IMPLEMENTATION)
    log.info("approximated %s model with %s", family, combo.name)
    return model


def combo_of(model: nn.Module) -> Combo | None:
    """The combo ``model`` currently runs with, or None if it did not go through :func:`approximate`."""
    record = getattr(model.config, CONFIG_KEY, None)
    if record is None or model.config._attn_implementation != ATTENTION_IMPLEMENTATION:
        return None
    return Combo.from_dict(record)


def load_approximated(path_or_name: str, **from_pretrained_kwargs: Any) -> nn.Module:
    """``AutoModelForSequenceClassification.from_pretrained`` plus the surgery recorded in its config.

    A checkpoint without a record loads as the plain HF model (``combo_of`` is then None).
    """
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(path_or_name, **from_pretrained_kwargs)
    record = getattr(model.config, CONFIG_KEY, None)
    if record is None:
        log.info("%s has no recorded approximation; loaded as the plain model", path_or_name)
        return model
    return approximate(model, Combo.from_dict(record))


@contextlib.contextmanager
def record_attention_scores(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Within the block, each forward pass of ``model`` appends one (B, H, T, T) tensor per layer
    (in layer order): the pre-normaliser scores ``q k^T / sqrt(hd)``, padding *not* applied, with
    their autograd graph (for distillation losses; mask padded keys in the loss)."""
    if combo_of(model) is None:
        raise UserError("record_attention_scores needs an approximated model: call approximate(model, combo) first")
    scores: list[torch.Tensor] = []
    modules = _self_attention_modules(model)
    for module in modules:
        setattr(module, _RECORD_ATTR, scores)
    try:
        yield scores
    finally:
        for module in modules:
            delattr(module, _RECORD_ATTR)
