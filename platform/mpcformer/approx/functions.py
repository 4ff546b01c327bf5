"""MPC-friendly functions, each with its plaintext and encrypted form side by side.

Encrypted forms take CrypTensors (and, for normalisers, the public plaintext key mask) and use only
operations CrypTen evaluates under MPC. Plaintext forms compute exactly the same maths in torch,
so a plaintext model with an approximation is the encrypted model's reference.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mpcformer.approx.registry import Approximation, register

__all__: list[str] = []  # functions are reached through the registry

# Scores of padded keys are pushed this far below the rest before a max (fits 16-bit fixed point).
_MASK_SHIFT = 1.0e4


def _full_mask(mask: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    return mask.to(torch.float32).expand(shape).contiguous()


# ----------------------------------------------------------------------------- activations
def gelu_plain(x: torch.Tensor) -> torch.Tensor:
    """GeLU(x) = x/2 (1 + erf(x/sqrt(2))), as Hugging Face's "gelu"."""
    return F.gelu(x)


def gelu_encrypted(x):
    """GeLU under MPC, tanh form: x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).

    CrypTen's own ``erf`` is a Taylor series that diverges for |x| > ~2 (BERT activations reach
    +-10), so the exact baseline uses CrypTen's ``tanh`` (sigmoid via exp and reciprocal, with a
    sign comparison); it differs from erf-GeLU by < 1e-3 in plaintext. Reads CrypTen's
    ``functions.exp_iterations`` and ``reciprocal_*`` settings.
    """
    inner = (x + x.pos_pow(3) * 0.044715) * math.sqrt(2.0 / math.pi)
    return x * (inner.tanh() + 1.0) * 0.5


def quad_plain(x: torch.Tensor) -> torch.Tensor:
    """Quad(x) = 0.125 x^2 + 0.25 x + 0.5 (MPCFormer's GeLU replacement)."""
    return 0.125 * x * x + 0.25 * x + 0.5


def quad_encrypted(x):
    """Quad(x) = 0.125 x^2 + 0.25 x + 0.5: one multiplication (one round)."""
    return x.square() * 0.125 + x * 0.25 + 0.5


def relu_plain(x: torch.Tensor) -> torch.Tensor:
    """ReLU(x) = max(x, 0)."""
    return torch.relu(x)


def relu_encrypted(x):
    """ReLU(x) = x * [x > 0]: one secure comparison and one multiplication."""
    return x.relu()


# ----------------------------------------------------------------------------- normalisers
def softmax_plain(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax over real keys: exp(s_i - max) m_i / sum_j exp(s_j - max) m_j."""
    full = _full_mask(mask, scores.shape)
    shifted = scores - (scores + (full - 1.0) * _MASK_SHIFT).amax(-1, keepdim=True)
    numerator = torch.exp(shifted * full) * full
    return numerator / numerator.sum(-1, keepdim=True)


def softmax_encrypted(scores, mask: torch.Tensor):
    """CrypTen's softmax recipe (max by log-reduction, exp by repeated squaring, reciprocal by
    Newton-Raphson) restricted to real keys. Masked logits are zeroed *before* exp (a public
    multiplication) so padding can never overflow the fixed-point exp.
    Reads ``functions.max_method``, ``exp_iterations``, ``reciprocal_nr_iters``."""
    from crypten.config import cfg

    full = _full_mask(mask, scores.size())
    maximum = (scores + (full - 1.0) * _MASK_SHIFT).max(-1, keepdim=True)[0]
    numerator = ((scores - maximum) * full).exp() * full
    with cfg.temp_override({"functions.reciprocal_all_pos": True}):
        inverse = numerator.sum(-1, keepdim=True).reciprocal()
    return numerator * inverse


def _valid_keys(full: torch.Tensor) -> torch.Tensor:
    return full.sum(-1, keepdim=True).clamp(min=1.0)


def two_quad_plain(scores: torch.Tensor, mask: torch.Tensor, c: float = 5.0) -> torch.Tensor:
    """2Quad: (s_i + c)^2 m_i / sum_j (s_j + c)^2 m_j  (MPCFormer, c = 5)."""
    full = _full_mask(mask, scores.shape)
    numerator = (scores + c).square() * full
    n = _valid_keys(full)
    return numerator / (numerator.sum(-1, keepdim=True) / n) / n


def two_quad_encrypted(scores, mask: torch.Tensor, c: float = 5.0):
    """2Quad under MPC: one square, then one Newton-Raphson reciprocal of the row *mean*
    (dividing by the public count of real keys keeps it inside the reciprocal's convergence
    range, ~(0.05, 600)). Reads ``functions.reciprocal_nr_iters``."""
    from crypten.config import cfg

    full = _full_mask(mask, scores.size())
    numerator = (scores + c).square() * full
    n = _valid_keys(full)
    with cfg.temp_override({"functions.reciprocal_all_pos": True}):
        inverse = (numerator.sum(-1, keepdim=True) / n).reciprocal()
    return numerator * inverse / n


def two_relu_plain(scores: torch.Tensor, mask: torch.Tensor, eps: float = 1e-2) -> torch.Tensor:
    """2ReLU: ReLU(s_i) m_i / (sum_j ReLU(s_j) m_j + eps n)  (MPCFormer)."""
    full = _full_mask(mask, scores.shape)
    numerator = torch.relu(scores) * full
    n = _valid_keys(full)
    return numerator / (numerator.sum(-1, keepdim=True) / n + eps) / n


def two_relu_encrypted(scores, mask: torch.Tensor, eps: float = 1e-2):
    """2ReLU under MPC: one comparison per score, one reciprocal per row of the mean (+eps, so
    an all-negative row gives zeros instead of dividing by zero). Reads ``reciprocal_nr_iters``."""
    from crypten.config import cfg

    full = _full_mask(mask, scores.size())
    numerator = scores.relu() * full
    n = _valid_keys(full)
    with cfg.temp_override({"functions.reciprocal_all_pos": True}):
        inverse = (numerator.sum(-1, keepdim=True) / n + eps).reciprocal()
    return numerator * inverse / n


# ----------------------------------------------------------------------------- registrations
register(Approximation(
    "gelu", "activation", "x/2 (1 + erf(x/sqrt2)); MPC: tanh form", gelu_plain, gelu_encrypted,
    reference="Hendrycks & Gimpel 2016",
))
register(Approximation(
    "quad", "activation", "0.125 x^2 + 0.25 x + 0.5", quad_plain, quad_encrypted,
    reference="MPCFormer (Li et al., ICLR 2023)",
))
register(Approximation("relu", "activation", "max(x, 0)", relu_plain, relu_encrypted, reference="MPCFormer"))
register(Approximation(
    "softmax", "normaliser", "exp(s_i - max) / sum_j exp(s_j - max)", softmax_plain, softmax_encrypted,
    reference="CrypTen",
))
register(Approximation(
    "2quad", "normaliser", "(s_i + c)^2 / sum_j (s_j + c)^2, c=5", two_quad_plain, two_quad_encrypted,
    params={"c": 5.0}, reference="MPCFormer (Li et al., ICLR 2023)",
))
register(Approximation(
    "2relu", "normaliser", "ReLU(s_i) / (sum_j ReLU(s_j) + eps)", two_relu_plain, two_relu_encrypted,
    params={"eps": 1e-2}, reference="MPCFormer",
))
