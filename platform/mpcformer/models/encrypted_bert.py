"""Encrypted BERT-family sequence classifiers (BERT, RoBERTa, MiniLM) built directly on CrypTensors.

Who holds what (two parties plus CrypTen's dealer):

- party 0, the model owner, secret-shares its Hugging Face weights: ``crypten.cryptensor(w, src=0)``
  on party 0, zeros of the same (public) shape on party 1;
- party 1, the client, secret-shares its token ids as one-hot rows (``src=1``);
- public to both: the architecture (:class:`EncryptedBertConfig`) and the batch
  (:class:`PublicBatch`: shape, attention mask, token-type ids, hence position ids).

The activation, the attention normaliser and LayerNorm's normaliser (its inverse square root)
come from an approximation :class:`~mpcformer.approx.Combo` (exact GeLU/softmax/inverse square
root, or MPCFormer's quad, relu, 2quad, 2relu, ...); the pooler's tanh and everything else are
computed as in the plaintext model. Every operation runs inside a
:class:`~mpcformer.mpc.costs.CostLedger` scope: ``embedding``, ``linear``, ``attention-matmul``,
``softmax`` (every normaliser), ``activation``, ``layernorm``, ``pooler``, ``classifier``; encoder
layers also set the layer index, and their reshapes count as that layer's ``other``.

The file reads bottom-up (as nanoGPT's ``model.py``): config, weights, linear, layer norm,
embeddings, attention, feed-forward, layer, classifier. Shape letters: B batch, T tokens,
H hidden, nh heads, hs = H / nh head size, I intermediate size, V vocabulary, L labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping

import torch
from pydantic import Field, model_validator

from mpcformer.approx import Combo
from mpcformer.approx.functions import INV_SQRT_RANGE, encrypted_inv_sqrt
from mpcformer.config import StrictModel
from mpcformer.errors import UserError
from mpcformer.mpc import progress
from mpcformer.mpc.compat import crypten
from mpcformer.mpc.costs import CostLedger
from mpcformer.mpc.fixed_operand import FixedOperand, release_masks, rmatmul_all
from mpcformer.mpc.row_factor import times_row_factor
from mpcformer.models.surgery import CALIBRATION_KEY, encoder_family, layernorm_calibration

__all__ = [
    "SUPPORTED_FAMILIES",
    "INV_SQRT_RANGE",
    "EncryptedBertConfig",
    "PublicBatch",
    "OwnerWeights",
    "EncryptedBertForSequenceClassification",
    "hf_key",
    "embeddings_input_scale",
    "encrypted_inv_sqrt",
]

CrypTensor = Any  # crypten.CrypTensor (kept loose: CrypTen has no type stubs)
#: Most one-hot elements the word lookup sends in one message (bert-base at 128 tokens: 3.9M, one message).
ONE_MESSAGE_ELEMENTS = 1 << 23
Activation = Callable[[CrypTensor], CrypTensor]
Normaliser = Callable[[CrypTensor, torch.Tensor], Any]  # -> RowScaled (mpcformer.approx.functions)
InvSqrt = Callable[[CrypTensor, str], CrypTensor]  # (variance, LayerNorm name) -> 1/sqrt(variance)

#: Hugging Face ``model_type`` values this file encrypts (MiniLM checkpoints are ``bert``).
SUPPORTED_FAMILIES = ("bert", "roberta")


# ----------------------------------------------------------------------------- public config
class EncryptedBertConfig(StrictModel):
    """Public architecture of an encrypted BERT-family classifier: what the owner tells the client.

    No weights, only sizes, the family (weight names, position ids), LayerNorm's eps and two public
    input scales that give LayerNorm's variance enough fixed-point precision (see
    :class:`EncryptedLayerNorm`), and, for a student calibrated with
    :func:`~mpcformer.models.surgery.calibrate_layernorms`, each LayerNorm's fitted variance
    ranges (two per LayerNorm: what the owner's model shows on the calibration sentences).
    ``vocab_chunk`` bounds the memory of the one-hot lookup.
    """

    family: Literal["bert", "roberta"] = "bert"
    vocab_size: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    num_hidden_layers: int = Field(ge=0)
    num_attention_heads: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    max_position_embeddings: int = Field(gt=0)
    type_vocab_size: int = Field(gt=0)
    num_labels: int = Field(gt=0)
    layer_norm_eps: float = Field(default=1e-12, ge=0)
    pad_token_id: int = Field(default=0, ge=0, description="RoBERTa: padded tokens sit at this position")
    embeddings_ln_input_scale: int = Field(default=1, ge=1, description="power of 2, embeddings LayerNorm")
    encoder_ln_input_scale: int = Field(default=1, ge=1, description="power of 2, encoder LayerNorms")
    vocab_chunk: int = Field(default=4096, gt=0, description="vocabulary rows per one-hot matmul")
    layernorm_calibration: dict[str, Any] = Field(
        default_factory=dict, description="per-LayerNorm ranges of a calibrated normaliser (surgery.calibrate_layernorms)"
    )

    @model_validator(mode="after")
    def _check_shapes_and_scales(self) -> "EncryptedBertConfig":
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of {self.num_attention_heads} heads")
        for scale in (self.embeddings_ln_input_scale, self.encoder_ln_input_scale):
            if scale & (scale - 1):
                raise ValueError(f"LayerNorm input scales must be powers of 2, got {scale}")
        return self

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_hf(cls, model: torch.nn.Module, **overrides: Any) -> "EncryptedBertConfig":
        """Owner side: read the public architecture of a ``*ForSequenceClassification`` model.

        The embeddings LayerNorm input scale is estimated from the owner's weights, no data needed
        (:func:`embeddings_input_scale`); ``overrides`` replace any field.
        """
        hf = model.config
        family = encoder_family(hf)
        if family not in SUPPORTED_FAMILIES:
            raise UserError(
                f"no encrypted model for the {family} family yet; supported: {', '.join(SUPPORTED_FAMILIES)}"
            )
        fields = dict(
            family=family, vocab_size=hf.vocab_size, hidden_size=hf.hidden_size,
            num_hidden_layers=hf.num_hidden_layers, num_attention_heads=hf.num_attention_heads,
            intermediate_size=hf.intermediate_size, max_position_embeddings=hf.max_position_embeddings,
            type_vocab_size=hf.type_vocab_size, num_labels=hf.num_labels, layer_norm_eps=hf.layer_norm_eps,
            pad_token_id=hf.pad_token_id or 0,
        )
        calibration = getattr(hf, CALIBRATION_KEY, None)
        if calibration:
            fields["layernorm_calibration"] = dict(calibration)
        if "embeddings_ln_input_scale" not in overrides:
            state = model.state_dict()
            table = lambda name: state[hf_key(family, f"embeddings.{name}.weight")]  # noqa: E731
            first_position = fields["pad_token_id"] + 1 if family == "roberta" else 0
            fields["embeddings_ln_input_scale"] = embeddings_input_scale(
                table("word_embeddings"), table("position_embeddings"), table("token_type_embeddings"), first_position
            )
        return cls(**{**fields, **overrides})


def embeddings_input_scale(
    word: torch.Tensor, position: torch.Tensor, token_type: torch.Tensor, first_position: int = 0
) -> int:
    """Public power of 2, ``k``, with ``k^2 * median(var(word_i + position_j + token_type_0)) ~ 1``.

    Computed by the owner from its own tables (every vocabulary row, positions cycling through
    the first 128): the embeddings' LayerNorm input is small (trained MiniLM: variance 0.003-0.03,
    k = 16; random init: ~3 * 0.02^2, k = 32), so at 16 fractional bits its variance would keep
    only ~8 significant bits. Reveals one rounded number about the owner's embedding tables.
    """
    positions = torch.arange(word.shape[0]) % min(128, position.shape[0] - first_position) + first_position
    with torch.no_grad():
        rows = word.float() + position.float()[positions] + token_type.float()[0]  # (V, H)
        median = rows.var(-1, unbiased=False).median().clamp(min=1e-8).item()
    return int(2 ** max(0, round(-math.log2(median) / 2)))


@dataclass(frozen=True)
class PublicBatch:
    """What both parties know about the client's batch: which tokens are real and their types.

    ``attention_mask`` (B, T) 0/1 float reveals each sentence's length; ``token_type_ids`` (B, T)
    reveal segment boundaries; position ids follow from both (RoBERTa counts real tokens from
    ``pad_token_id + 1`` and puts padding at ``pad_token_id``, as Hugging Face does when the
    padding tokens are exactly the masked ones).
    """

    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor
    position_ids: torch.Tensor

    @classmethod
    def build(
        cls, config: EncryptedBertConfig, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> "PublicBatch":
        mask = torch.as_tensor(attention_mask).to(torch.float32)  # (B, T)
        if mask.dim() != 2:
            raise UserError(f"attention_mask must be (batch, tokens), got shape {tuple(mask.shape)}")
        if token_type_ids is None:
            types = torch.zeros(mask.shape, dtype=torch.long)  # (B, T)
        else:
            types = torch.as_tensor(token_type_ids).long()  # (B, T)
        if types.shape != mask.shape:
            raise UserError(f"token_type_ids shape {tuple(types.shape)} differs from attention_mask {tuple(mask.shape)}")
        if config.family == "roberta":
            positions = (mask.cumsum(1) * mask).long() + config.pad_token_id  # (B, T)
        else:
            positions = torch.arange(mask.shape[1]).expand(mask.shape)  # (B, T)
        if int(positions.max()) >= config.max_position_embeddings:
            raise UserError(
                f"{mask.shape[1]} tokens exceed the model's {config.max_position_embeddings} positions; "
                "truncate the input"
            )
        if int(types.max()) >= config.type_vocab_size or int(types.min()) < 0:
            raise UserError(f"token_type_ids must lie in 0..{config.type_vocab_size - 1}")
        return cls(mask, types, positions)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.attention_mask.shape)  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> "PublicBatch":
        """The same batch on ``device`` (public tensors must sit where the shares are)."""
        return PublicBatch(*(t.to(device) for t in (self.attention_mask, self.token_type_ids, self.position_ids)))

    def key_mask(self) -> torch.Tensor:
        """(B, 1, 1, T) public 0/1 mask over attention keys, the normalisers' ``mask``."""
        return self.attention_mask[:, None, None, :]


# ----------------------------------------------------------------------------- owner's weights
def hf_key(family: str, name: str) -> str:
    """Hugging Face state-dict key of a weight named in BERT's layout (``encoder.layer.0...``).

    BERT: ``bert.<name>``, head ``classifier.*``. RoBERTa: ``roberta.<name>``; its classification
    head ``classifier.dense`` / ``classifier.out_proj`` plays BERT's ``pooler.dense`` / ``classifier``.
    """
    if family == "roberta" and name.startswith("pooler.dense."):
        return "classifier.dense." + name.removeprefix("pooler.dense.")
    if name.startswith("classifier."):
        return "classifier.out_proj." + name.removeprefix("classifier.") if family == "roberta" else name
    return f"{family}.{name}"


class OwnerWeights:
    """The owner's weights entering the computation as party 0's secret shares, one tensor at a time.

    Party 0 passes its plaintext ``state_dict``; every other party passes ``None`` and contributes
    zeros of the public shape (``crypten.cryptensor(src=0)`` needs the shape on every party).
    Sharing is local (pseudo-random zero shares): it costs time, no communication. The shares
    live on ``device``, and so does everything computed from them.
    """

    def __init__(
        self, family: str, state_dict: Mapping[str, torch.Tensor] | None = None, device: torch.device | str = "cpu"
    ):
        self.family = family
        self.state_dict = state_dict
        self.device = torch.device(device)

    def value(self, name: str, shape: tuple[int, ...]) -> torch.Tensor | None:
        """The plaintext weight (float32, on ``device``) on party 0; ``None`` on the other parties."""
        if self.state_dict is None:
            return None
        key = hf_key(self.family, name)
        tensor = self.state_dict.get(key)
        if tensor is None:
            raise UserError(
                f"the owner's model has no weight '{key}'; "
                f"pass a {self.family.capitalize()}ForSequenceClassification model"
            )
        if tuple(tensor.shape) != tuple(shape):
            raise UserError(f"weight '{key}' has shape {tuple(tensor.shape)}, the config implies {tuple(shape)}")
        return tensor.detach().to(self.device, torch.float32)

    def share(self, name: str, shape: tuple[int, ...]) -> CrypTensor:
        """The weight secret-shared by party 0."""
        value = self.value(name, shape)
        return crypten.cryptensor(torch.zeros(shape, device=self.device) if value is None else value, src=0)


# ----------------------------------------------------------------------------- building blocks
class _Module:
    """Plain container of CrypTensors with a ``forward`` (CrypTen has no LayerNorm/GeLU modules)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)


class EncryptedLinear(_Module):
    """y = x W^T + b, with the owner's W (out, in) and b (out,); b secret-shared.

    W^T is a :class:`~mpcformer.mpc.fixed_operand.FixedOperand` (party 0 holds it): with reusable
    weight masks it is sent once under its mask when the model is built, and each forward sends
    only x's masked share.

    ``after``: the LayerNorm whose output feeds this layer. Its input is then that LayerNorm's
    normalised value n (:class:`EncryptedLayerNorm`), and the owner folds the LayerNorm's gamma
    and beta into the weights: y = n (diag(gamma) W^T) + (beta W^T + b). With ``residual`` the
    forward also returns the LayerNorm's output gamma * n + beta (the next residual), from the
    same message as the product (``FixedOperand.rmatmul_and_scale``): LayerNorm's affine costs no
    opening of its own.
    """

    def __init__(
        self, weights: OwnerWeights, names: list[str], in_features: int, out_features: int,
        after: str | None = None, residual: bool = False,
    ):
        # Several names are concatenated along the output: one matmul sends x once for Q, K and V.
        shape = (in_features, len(names) * out_features)
        values = [weights.value(f"{n}.weight", (out_features, in_features)) for n in names]  # (out, in) each
        value = None if values[0] is None else torch.cat([v.t() for v in values], dim=1)  # (in, k*out)
        biases = [weights.value(f"{n}.bias", (out_features,)) for n in names]
        bias = None if biases[0] is None else torch.cat(biases)  # (k*out,)
        self.gamma = self.beta = None
        if after is not None:
            gamma, beta = (weights.value(f"{after}.{w}", (in_features,)) for w in ("weight", "bias"))  # (in,) each
            if value is not None:
                value, bias = gamma[:, None] * value, bias + beta @ value  # (in, k*out), (k*out,)
            if residual:
                self.gamma = FixedOperand(None if gamma is None else gamma[None], (1, in_features), weights.device)
                self.beta = weights.share(f"{after}.bias", (in_features,))
        self.weight_t = FixedOperand(value, shape, weights.device)
        self.bias = crypten.cryptensor(torch.zeros(shape[1], device=weights.device) if bias is None else bias, src=0)

    def forward(self, x: CrypTensor) -> Any:
        """x (..., in) @ (in, k*out) + b; with ``residual`` also the LayerNorm's output (..., in)."""
        y, scaled = self.weight_t.rmatmul_and_scale(x, self.gamma)
        return y + self.bias if self.gamma is None else (y + self.bias, scaled + self.beta)


class EncryptedLayerNorm(_Module):
    """LayerNorm under MPC over the last dim, without its affine: n = (x - mean) / sqrt(var + eps).

    Its gamma and beta are applied by the layer that reads n (:class:`EncryptedLinear` with
    ``after``): folded into that layer's weights, and gamma * n + beta for the residual from the
    same message.

    ``1/sqrt`` is the combination's LayerNorm normaliser (``inv_sqrt``, passed to each forward);
    the default, ``ln:exact``, is :func:`encrypted_inv_sqrt`, right for variances in :data:`INV_SQRT_RANGE`
    (about [1e-3, 1.3e5]): MiniLM's encoder LayerNorms see 0.13-131, and up to 1.4e3 with quad
    before distillation, where CrypTen's ``inv_sqrt`` fails. Small variances lose precision in
    fixed point, so x is first multiplied by a public power of 2, ``input_scale`` = k (an exact
    integer product): LayerNorm(k x) = LayerNorm(x), and var(k x) = k^2 var(x) keeps more
    significant bits (embeddings: variance 0.003-0.03 in MiniLM, k = 16 from
    :func:`embeddings_input_scale`; encoder: k = 1). BERT's eps = 1e-12 is below the fixed-point
    resolution (2^-16) and vanishes. The plaintext twin of an approximate normaliser
    (:class:`~mpcformer.models.surgery.ApproximatedLayerNorm`) applies the same input scale, so
    both evaluate it on the same variances.
    """

    def __init__(self, weights: OwnerWeights, name: str, hidden_size: int, eps: float, input_scale: int = 1):
        self.eps, self.input_scale = eps, int(input_scale)
        self.key = hf_key(weights.family, name)  # its name in the checkpoint (and in a calibration)

    def forward(self, x: CrypTensor, inv_sqrt: InvSqrt = lambda variance, key: encrypted_inv_sqrt(variance)) -> CrypTensor:
        scaled = x * self.input_scale if self.input_scale != 1 else x  # (B, T, H), exact
        centred = scaled - scaled.mean(-1, keepdim=True)  # (B, T, H)
        eps = self.eps * self.input_scale**2
        # centred * inv_sqrt(variance (B, T, 1)), centred opened once for both products
        return times_row_factor(centred, lambda variance: inv_sqrt(variance + eps, self.key))  # (B, T, H)


class EncryptedBertEmbeddings(_Module):
    """word + position + token-type embeddings, then LayerNorm (normalised: gamma and beta are
    applied by the first layer's query/key/value projection).

    The word lookup is a product of the client's one-hot (B, T, V), shared by party 1, and the
    owner's table (V, H), computed ``vocab_chunk`` rows at a time (one masked product each, their
    inputs sent in one message). Position and token-type ids are public, so their rows are
    selected from the encrypted tables without communication.
    """

    def __init__(self, config: EncryptedBertConfig, weights: OwnerWeights):
        H, share = config.hidden_size, weights.share
        table = weights.value("embeddings.word_embeddings.weight", (config.vocab_size, H))  # (V, H) on party 0
        self.word_chunks = [  # (c, H) each
            FixedOperand(None if table is None else table[s:stop], (stop - s, H), weights.device)
            for s in range(0, config.vocab_size, config.vocab_chunk)
            for stop in [min(s + config.vocab_chunk, config.vocab_size)]
        ]
        self.device = weights.device
        self.position_embeddings = share("embeddings.position_embeddings.weight", (config.max_position_embeddings, H))
        self.token_type_embeddings = share("embeddings.token_type_embeddings.weight", (config.type_vocab_size, H))
        self.LayerNorm = EncryptedLayerNorm(
            weights, "embeddings.LayerNorm", H, config.layer_norm_eps, config.embeddings_ln_input_scale
        )

    def forward(
        self, client_ids: torch.Tensor | None, batch: PublicBatch, inv_sqrt: InvSqrt, ledger: CostLedger
    ) -> CrypTensor:
        with ledger.scope("embedding"):
            words = self.lookup_words(client_ids, batch.shape)  # (B, T, H)
            positions = self.position_embeddings[batch.position_ids]  # (B, T, H)
            types = self.token_type_embeddings[batch.token_type_ids]  # (B, T, H)
            summed = words + positions + types
        with ledger.scope("layernorm"):
            return self.LayerNorm(summed, inv_sqrt)

    def lookup_words(self, client_ids: torch.Tensor | None, shape: tuple[int, int]) -> CrypTensor:
        """sum over chunks c of one_hot(ids)[..., c] @ word_embeddings[c]; ``client_ids`` only on party 1.

        The chunks' one-hot inputs go in one message (``rmatmul_all``: one round, not one per chunk)
        as long as they hold at most ``ONE_MESSAGE_ELEMENTS`` together; larger batches take several.
        """
        device = self.device
        ids = None if client_ids is None else client_ids.to(device)[..., None]  # (B, T, 1)
        words, start, group = None, 0, []
        for index, chunk in enumerate(self.word_chunks):
            stop = start + chunk.shape[0]
            if ids is None:
                one_hot = torch.zeros(*shape, stop - start, device=device)  # (B, T, c): party 1 provides the values
            else:
                one_hot = (ids == torch.arange(start, stop, device=device)).to(torch.float32)  # (B, T, c)
            group.append((crypten.cryptensor(one_hot, src=1), chunk))
            start = stop
            held = sum(x.numel() for x, _ in group)
            if index + 1 == len(self.word_chunks) or held + one_hot.numel() > ONE_MESSAGE_ELEMENTS:
                for part in rmatmul_all(*map(list, zip(*group))):  # (B, T, c) @ (c, H) each
                    words = part if words is None else words + part  # (B, T, H)
                group = []
        return words


def _real_pairs_only(probs: CrypTensor, query_mask: torch.Tensor, key_mask: torch.Tensor) -> CrypTensor:
    """``probs`` (or a normaliser's numerator) with every pair that involves a padding token (as query
    or key) exactly 0.

    Each party multiplies its own share by the public 0/1 pair mask: local, no truncation, so no
    rounding. Without it, padding can reach real tokens through ``probs @ V``: padded tokens'
    values are unbounded under MPC (their statistics lie outside every fitted range, where the
    encrypted reciprocals diverge and the plaintext twins clamp), and exact truncation rounds a
    masked zero to one unit when it divides by a count of real keys that is not a power of two
    (2^-16 times a padded value of 2^31 is an error of 2^15).
    """
    pairs = (query_mask * key_mask).long()  # (B, 1, Tq, 1) x (B, 1, 1, T) -> (B, 1, Tq, T)
    out = probs.clone()
    out._tensor.share.mul_(pairs)  # (B, nh, Tq, T) shares, each times 0 or 1
    return out


class EncryptedBertSelfAttention(_Module):
    """Multi-head attention: probs = normaliser(Q K^T / sqrt(hs), key mask); context = probs V, computed
    as (numerator V) times each row's factor (:class:`~mpcformer.approx.functions.RowScaled`).

    With ``first_only`` only position 0 queries (Tq = 1, else Tq = T): the last layer's, since the
    classifier reads [CLS] alone; keys and values still come from every token.
    """

    def __init__(self, config: EncryptedBertConfig, weights: OwnerWeights, prefix: str, after: str):
        names = [f"{prefix}.query", f"{prefix}.key", f"{prefix}.value"]
        self.qkv = EncryptedLinear(weights, names, config.hidden_size, config.hidden_size, after, residual=True)
        self.num_heads, self.head_size = config.num_attention_heads, config.head_size

    def forward(
        self, normalised: CrypTensor, key_mask: torch.Tensor, normaliser: Normaliser, ledger: CostLedger,
        first_only: bool = False,
    ) -> tuple[CrypTensor, CrypTensor]:
        """(context (B, Tq, H), the layer input x = the LayerNorm ``after``'s output (B, T, H))."""
        B, T, H = normalised.size()
        with ledger.scope("linear"):
            # (B, T, 3H) and x (B, T, H): one masked message of n serves Q, K, V and gamma * n
            qkv, x = self.qkv(normalised)
        q, k, v = (self._split_heads(qkv[:, :, i * H:(i + 1) * H]) for i in range(3))  # (B, nh, T, hs) each
        if first_only:
            q = q[:, :, :1]  # (B, nh, 1, hs)
        query_mask = key_mask[..., : q.size(2)].transpose(-1, -2)  # (B, 1, Tq, 1)
        with ledger.scope("attention-matmul"):
            # (B, nh, Tq, hs) @ (B, nh, hs, T) -> (B, nh, Tq, T)
            scores = q.matmul(k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_size))
        with ledger.scope("softmax"):
            rows = normaliser(scores, key_mask)  # probs = numerator * per-row factor, (B, nh, Tq, T)
            numerator = _real_pairs_only(rows.numerator, query_mask, key_mask)  # (B, nh, Tq, T)
        with ledger.scope("attention-matmul"):
            context = numerator.matmul(v)  # (B, nh, Tq, T) @ (B, nh, T, hs) -> (B, nh, Tq, hs)
        with ledger.scope("softmax"):
            # each row's factor after the product: its operand is (Tq, hs) per head, not (Tq, T)
            context = rows.scale(context)  # (B, nh, Tq, hs)
        return context.transpose(1, 2).reshape(B, q.size(2), H), x  # (B, Tq, nh, hs) -> (B, Tq, H)

    def _split_heads(self, x: CrypTensor) -> CrypTensor:
        B, T, _ = x.size()
        return x.reshape(B, T, self.num_heads, self.head_size).transpose(1, 2)  # (B, T, nh, hs) -> (B, nh, T, hs)


class EncryptedBertResidualOutput(_Module):
    """LayerNorm(dense(x) + residual): BERT's ``attention.output`` and ``output`` blocks."""

    def __init__(self, config: EncryptedBertConfig, weights: OwnerWeights, prefix: str, in_features: int):
        H = config.hidden_size
        self.dense = EncryptedLinear(weights, [f"{prefix}.dense"], in_features, H)
        self.LayerNorm = EncryptedLayerNorm(
            weights, f"{prefix}.LayerNorm", H, config.layer_norm_eps, config.encoder_ln_input_scale
        )

    def forward(self, x: CrypTensor, residual: CrypTensor, inv_sqrt: InvSqrt, ledger: CostLedger) -> CrypTensor:
        with ledger.scope("linear"):
            summed = self.dense(x) + residual  # (B, T, in) @ (in, H) + (B, T, H)
        with ledger.scope("layernorm"):
            return self.LayerNorm(summed, inv_sqrt)  # (B, T, H), normalised


class EncryptedBertLayer(_Module):
    """One encoder layer: attention, add & norm, feed-forward with the combo's activation, add & norm.

    With ``first_only`` (the last layer) everything after the keys and values runs for position 0
    alone: (B, T, H) in, (B, 1, H) out, the same [CLS] row as the full layer's.

    In and out are LayerNorms' normalised values (:class:`EncryptedLayerNorm`): ``after`` names the
    LayerNorm whose gamma and beta the query/key/value projection applies.
    """

    def __init__(self, config: EncryptedBertConfig, weights: OwnerWeights, index: int, after: str):
        prefix, H, I = f"encoder.layer.{index}", config.hidden_size, config.intermediate_size  # noqa: E741
        self.index = index
        self.attention = EncryptedBertSelfAttention(config, weights, f"{prefix}.attention.self", after)
        self.attention_output = EncryptedBertResidualOutput(config, weights, f"{prefix}.attention.output", H)
        self.intermediate = EncryptedLinear(
            weights, [f"{prefix}.intermediate.dense"], H, I, after=f"{prefix}.attention.output.LayerNorm", residual=True
        )
        self.output = EncryptedBertResidualOutput(config, weights, f"{prefix}.output", I)

    def forward(
        self, normalised: CrypTensor, key_mask: torch.Tensor, activation: Activation, normaliser: Normaliser,
        inv_sqrt: InvSqrt, ledger: CostLedger, first_only: bool = False,
    ) -> CrypTensor:
        with ledger.scope("other", layer=self.index):  # inner scopes inherit the layer index
            attended, x = self.attention(normalised, key_mask, normaliser, ledger, first_only)  # (B, Tq, H), (B, T, H)
            residual = x[:, :1] if first_only else x  # (B, Tq, H)
            normalised = self.attention_output(attended, residual, inv_sqrt, ledger)  # (B, Tq, H)
            with ledger.scope("linear"):
                hidden, x = self.intermediate(normalised)  # (B, Tq, H) @ (H, I) -> (B, Tq, I); x (B, Tq, H)
            with ledger.scope("activation"):
                hidden = activation(hidden)  # (B, Tq, I)
            return self.output(hidden, x, inv_sqrt, ledger)  # (B, Tq, H), normalised


def _layernorm_normaliser(combo: Combo, config: EncryptedBertConfig) -> InvSqrt:
    """The combination's LayerNorm normaliser, with each LayerNorm's calibrated parameters where the
    owner's model has them for this normaliser (as the plaintext twin's surgery applies them)."""
    fn = combo.layernorm_fn(encrypted=True)
    calibrated = layernorm_calibration(config.layernorm_calibration, combo.layernorm)
    return lambda variance, key: fn(variance, **calibrated.get(key, {}))


class EncryptedBertForSequenceClassification(_Module):
    """Embeddings, encoder layers, pooler (dense + tanh on the first token), classifier.

    RoBERTa's classification head (dense + tanh + out_proj on ``<s>``) has the same shape and
    maps onto the pooler and classifier (:func:`hf_key`). Dropout is off (inference).
    """

    def __init__(self, config: EncryptedBertConfig, weights: OwnerWeights):
        H = config.hidden_size
        self.config = config
        self.embeddings = EncryptedBertEmbeddings(config, weights)
        # each layer reads the previous LayerNorm's normalised output and applies its gamma and beta
        before = ["embeddings.LayerNorm"] + [f"encoder.layer.{i}.output.LayerNorm" for i in range(config.num_hidden_layers)]
        self.layers = [EncryptedBertLayer(config, weights, i, before[i]) for i in range(config.num_hidden_layers)]
        self.pooler = EncryptedLinear(weights, ["pooler.dense"], H, H, after=before[-1])
        self.classifier = EncryptedLinear(weights, ["classifier"], H, config.num_labels)

    def forward(
        self, client_ids: torch.Tensor | None, batch: PublicBatch, combo: Combo, ledger: CostLedger | None = None
    ) -> CrypTensor:
        """Encrypted logits (B, L). ``client_ids`` (B, T) on the client (party 1), ``None`` elsewhere."""
        ledger = ledger if ledger is not None else CostLedger()  # an inactive ledger: free no-op scopes
        activation, normaliser = combo.activation_fn(encrypted=True), combo.normaliser_rows_fn()
        inv_sqrt = _layernorm_normaliser(combo, self.config)
        batch = batch.to(self.embeddings.device)  # public tensors beside the shares
        key_mask = batch.key_mask()  # (B, 1, 1, T)
        hidden = self.embeddings(client_ids, batch, inv_sqrt, ledger)  # (B, T, H), normalised (EncryptedLayerNorm)
        last = len(self.layers)
        for done, layer in enumerate(self.layers, start=1):
            # (B, T, H) each; the last layer computes [CLS] only, all the classifier reads: (B, 1, H)
            hidden = layer(hidden, key_mask, activation, normaliser, inv_sqrt, ledger, first_only=done == last)
            progress.report(kind="layer", done=done, total=last)
        with ledger.scope("pooler"):
            pooled = self.pooler(hidden[:, 0]).tanh()  # (B, H) @ (H, H) -> (B, H)
        with ledger.scope("classifier"):
            return self.classifier(pooled)  # (B, H) @ (H, L) -> (B, L)

    def fixed_operands(self) -> list[FixedOperand]:
        """Every weight matrix that enters a matmul, then every LayerNorm gamma applied beside one."""
        linears = [self.pooler, self.classifier]
        for layer in self.layers:
            linears += [layer.attention.qkv, layer.attention_output.dense, layer.intermediate, layer.output.dense]
        gammas = [linear.gamma for linear in linears if linear.gamma is not None]
        return self.embeddings.word_chunks + [linear.weight_t for linear in linears] + gammas

    def release(self) -> None:
        """Free the dealer's copies of this model's weight masks (every party calls this together)."""
        release_masks(self.fixed_operands())
