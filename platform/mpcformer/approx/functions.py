"""MPC-friendly functions, each with its plaintext and encrypted form side by side.

Encrypted forms take CrypTensors (and, for normalisers, the public plaintext key mask) and use only
operations CrypTen evaluates under MPC. Plaintext forms compute the reference maths in torch, so a
plaintext model with an approximation is the encrypted model's reference; where the encrypted form
rearranges the maths for fixed point (e.g. dividing by a public scale before a reciprocal), the
rearrangement is an identity and the plaintext form keeps the plain formula.

Fixed-point notes (CrypTen, 16 fractional bits, delta = 2^-16):
- ``exp`` is the limit ``(1 + x/2^k)^(2^k)`` with ``k = functions.exp_iterations`` (8): it is only
  valid for ``x > -2^k``; below, the base leaves [-1, 1] and the powers overflow.
- a Newton-Raphson reciprocal of ``z`` has relative error ~ ``z * delta`` in the form used here
  (``y <- y (2 - z y)``), and ~ ``z^2 * delta`` in CrypTen's (``y <- 2y - z y^2``). Every reciprocal
  below is therefore taken of ``x / scale`` with a public ``scale`` that brings realistic inputs
  near 1 (see :func:`_scaled_reciprocal`).
"""

from __future__ import annotations

import math
import operator

import torch
import torch.nn.functional as F

from mpcformer.approx.registry import Approximation, register

__all__: list[str] = []  # functions are reached through the registry

# Scores of padded keys are pushed this far below the rest before a max (fits 16-bit fixed point).
_MASK_SHIFT = 1.0e4


def _full_mask(mask: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    return mask.to(torch.float32).expand(shape).contiguous()


def _valid_keys(full: torch.Tensor) -> torch.Tensor:
    """Public count of real keys per row, (B, H, Tq, 1); at least 1 so empty rows stay finite."""
    return full.sum(-1, keepdim=True).clamp(min=1.0)


def _rows(stacked) -> list:
    """The slices of a CrypTensor along dim 0 (one batched comparison, then its parts)."""
    return [stacked[i] for i in range(stacked.size(0))]


def _times(x, coefficient: float):
    """``x * coefficient`` for a public scalar, keeping ~16 significant bits of small coefficients.

    A public float is encoded with 16 fractional bits, so 0.0018 loses 0.4% of itself; multiplying
    by ``coefficient * 2^k`` (in [1, 2)) and dividing by the public ``2^k`` keeps it exact to 2^-16.
    """
    if coefficient == 0.0 or abs(coefficient) >= 1.0:
        return x * coefficient
    shift = 2 ** math.ceil(-math.log2(abs(coefficient)))
    return x * (coefficient * shift) / shift


def _scaled_reciprocal(x, scale: float, initial=None, iterations: int | None = None):
    """``scale / x`` for an encrypted ``x > 0``: Newton-Raphson on ``z = x / scale``.

    Iterates ``y <- y (2 - z y)`` (relative error ~ ``z * 2^-16`` at 16 bits, against
    ``z^2 * 2^-16`` for CrypTen's ``2y - z y^2``) from CrypTen's start ``3 exp(1 - 2z) + 0.003``
    unless ``initial`` is given. Converges for ``0 < z < 256`` (the start's ``exp`` overflows
    beyond); accurate to ~1e-3 relative for ``z`` in [0.02, 100].

    Configuration parameters: ``functions.reciprocal_nr_iters`` (10) unless ``iterations`` is
    given; ``functions.exp_iterations`` through the start value.
    """
    from crypten.config import cfg

    z = x / scale
    y = 3 * (1 - 2 * z).exp() + 0.003 if initial is None else initial
    for _ in range(iterations or cfg.functions.reciprocal_nr_iters):
        y = y * (2 - z * y)
    return y


# ----------------------------------------------------------------------------- activations
def gelu_plain(x: torch.Tensor) -> torch.Tensor:
    """GeLU(x) = x/2 (1 + erf(x/sqrt(2))), as Hugging Face's "gelu"."""
    return F.gelu(x)


_GELU_SATURATION = 6.0  # |x| beyond which sigma(2 sqrt(2/pi)(x + 0.044715 x^3)) is within 1e-11 of 0/1


def gelu_encrypted(x):
    """GeLU under MPC, tanh form x sigma(z(x)), z(x) = 2 sqrt(2/pi) (x + 0.044715 x^3), rewritten
    with ``a = |x|`` as ``GeLU(x) = (x + a)/2 - a sigma(-z(min(a, T)))``, ``T = 6``.

    Taking ``z`` of the clipped ``|x|`` keeps ``exp(-z)`` inside the limit exp's range, so large
    inputs are exact (CrypTen's own ``tanh`` overflows once ``|x| > ~19``: ``exp(-2 tanh-arg)``
    leaves the range of ``(1 + x/256)^256``). One batched comparison ``[x<0], [x<-T], [x<T]``; then
    ``sigma(-z) = e r`` with ``e = exp(-z)`` and ``r = 1/(1 + e)`` by 3 Newton-Raphson steps from the
    minimax start ``24/17 - 8/17 (1 + e)`` on [1, 2]. The tanh form differs from erf-GeLU by
    < 5e-4; CrypTen's erf is a Taylor series that diverges for |x| > ~2 and is not used.
    Configuration parameters: ``functions.exp_iterations``.
    """
    from mpcformer.mpc.compat import crypten

    t = _GELU_SATURATION
    negative, below, inside_top = _rows(crypten.stack([x, x + t, x - t]).lt(0))
    a = x * (1 - 2 * negative)  # |x|
    saturated = below + 1 - inside_top
    u = a + saturated * (t - a)  # min(|x|, T)
    z = (u + _times(u.square() * u, 0.044715)) * math.sqrt(8.0 / math.pi)
    e = (-z).exp()
    denominator = e + 1.0
    r = _scaled_reciprocal(denominator, 1.0, initial=24.0 / 17.0 - denominator * (8.0 / 17.0), iterations=3)
    return (x + a) * 0.5 - a * (e * r)


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


# PUMA's GeLU pieces: F0 on [-4, -1.95), F1 on [-1.95, 3), coefficients lowest degree first.
_PUMA_F0 = (-0.5054031199708174, -0.42226581151983866, -0.11807612951181953, -0.011034134030615728)
_PUMA_F1 = (0.008526321541038084, 0.5, 0.3603292692789629, 0.0, -0.037688200365904236, 0.0, 0.0018067462606141187)
_PUMA_KNOTS = (-4.0, -1.95, 3.0)


def _puma_pieces(x, x2, x3, x4, x6, times=operator.mul):
    """F0 and F1 from the powers of x; ``times(value, public coefficient)``."""
    f0 = times(x3, _PUMA_F0[3]) + times(x2, _PUMA_F0[2]) + times(x, _PUMA_F0[1]) + _PUMA_F0[0]
    f1 = times(x6, _PUMA_F1[6]) + times(x4, _PUMA_F1[4]) + times(x2, _PUMA_F1[2]) + x * _PUMA_F1[1] + _PUMA_F1[0]
    return f0, f1


def puma_gelu_plain(x: torch.Tensor) -> torch.Tensor:
    """PUMA's piecewise-polynomial GeLU: 0 (x < -4); F0(x), degree 3 (-4 <= x < -1.95);
    F1(x), degree 6 even + x/2 (-1.95 <= x < 3); x (x >= 3). Max error vs GeLU 2.0e-2 (just below x = 3)."""
    x2 = x * x
    f0, f1 = _puma_pieces(x, x2, x2 * x, x2 * x2, (x2 * x) ** 2)
    b0, b1, b2 = (x < k for k in _PUMA_KNOTS)
    return torch.where(b0, torch.zeros_like(x), torch.where(b1, f0, torch.where(b2, f1, x)))


def puma_gelu_encrypted(x):
    """PUMA GeLU under MPC: the three knot comparisons in one batch, x^2, x^3, x^4, x^6 in three
    rounds, then one batched product ``[b1-b0, b2-b1, 1-b2] . [F0, F1, x]``.

    For |x| > ~35 ``x^6`` wraps around the 64-bit ring, but its selector is an exact 0 there and
    ring products are exact, so the result stays right.
    """
    from mpcformer.mpc.compat import crypten

    b0, b1, b2 = _rows(crypten.stack([x - k for k in _PUMA_KNOTS]).lt(0))
    x2 = x.square()
    x3, x4 = x2 * x, x2.square()
    f0, f1 = _puma_pieces(x, x2, x3, x4, x3.square(), times=_times)
    selectors = crypten.stack([b1 - b0, b2 - b1, 1 - b2])
    return (selectors * crypten.stack([f0, f1, x])).sum(0)


# ----------------------------------------------------------------------------- normalisers
def softmax_plain(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax over real keys: exp(s_i - max) m_i / sum_j exp(s_j - max) m_j."""
    full = _full_mask(mask, scores.shape)
    shifted = scores - (scores + (full - 1.0) * _MASK_SHIFT).amax(-1, keepdim=True)
    numerator = torch.exp(shifted * full) * full
    return numerator / numerator.sum(-1, keepdim=True)


_SOFTMAX_SCALE = 8.0  # exp-sums lie in [1, Tk]; /8 keeps them in the reciprocal's accurate range up to Tk ~ 800


def softmax_encrypted(scores, mask: torch.Tensor):
    """CrypTen's softmax recipe (max by log-reduction, limit exp, Newton-Raphson reciprocal)
    restricted to real keys. Masked logits are zeroed *before* exp (a public multiplication) so
    padding can never overflow the fixed-point exp; the row sum (in [1, Tk]) is divided by 8
    before the reciprocal (CrypTen's reciprocal of the raw sum loses 7% at 100 and overflows
    above 256). Valid while each row's real scores span less than ``2^exp_iterations`` (256).
    Configuration parameters: ``functions.max_method``, ``exp_iterations``, ``reciprocal_nr_iters``.
    """
    full = _full_mask(mask, scores.size())
    maximum = (scores + (full - 1.0) * _MASK_SHIFT).max(-1, keepdim=True)[0]
    numerator = ((scores - maximum) * full).exp() * full
    inverse = _scaled_reciprocal(numerator.sum(-1, keepdim=True), _SOFTMAX_SCALE)
    return numerator * inverse / _SOFTMAX_SCALE


def lim_softmax_plain(scores: torch.Tensor, mask: torch.Tensor, n: float = 3.0) -> torch.Tensor:
    """Clipped limit-exp softmax: e_i = ReLU(1 + (s_i - max)/2^n)^(2^n), p_i = e_i m_i / sum_j e_j m_j.

    ``(1 + x/2^n)^(2^n) -> exp(x)``; clipping the base at 0 makes e exactly 0 for x < -2^n and
    keeps it in [0, 1], so small ``n`` (n squarings) is safe where the unclipped limit overflows.
    """
    full = _full_mask(mask, scores.shape)
    shifted = (scores - (scores + (full - 1.0) * _MASK_SHIFT).amax(-1, keepdim=True)) * full
    numerator = torch.relu(1.0 + shifted / 2 ** int(n))
    for _ in range(int(n)):
        numerator = numerator.square()
    numerator = numerator * full
    return numerator / numerator.sum(-1, keepdim=True)


def lim_softmax_encrypted(scores, mask: torch.Tensor, n: float = 3.0):
    """Clipped limit-exp softmax under MPC: max (log-reduction), one comparison per score (the
    ReLU clip), ``n`` squarings instead of ``exp_iterations`` (8), one reciprocal per row of the
    sum / 8. Configuration parameters: ``functions.max_method``, ``reciprocal_nr_iters``."""
    full = _full_mask(mask, scores.size())
    maximum = (scores + (full - 1.0) * _MASK_SHIFT).max(-1, keepdim=True)[0]
    numerator = (((scores - maximum) * full) / 2 ** int(n) + 1.0).relu()
    for _ in range(int(n)):
        numerator = numerator.square()
    numerator = numerator * full
    inverse = _scaled_reciprocal(numerator.sum(-1, keepdim=True), _SOFTMAX_SCALE)
    return numerator * inverse / _SOFTMAX_SCALE


def _taylor_exp(x, x2, x3, x4, order: int, times=operator.mul):
    """1 + x + x^2/2 (+ x^3/6 + x^4/24): exp's even-order Taylor polynomial, > 0 for every x."""
    value = x + 1.0 + x2 * 0.5
    if order == 4:
        value = value + times(x3, 1.0 / 6.0) + times(x4, 1.0 / 24.0)
    return value


def taylor_softmax_plain(scores: torch.Tensor, mask: torch.Tensor, order: float = 2.0) -> torch.Tensor:
    """Taylor softmax: T(s_i) m_i / sum_j T(s_j) m_j, T = exp's Taylor polynomial of even order 2 or 4.

    An even-order Taylor polynomial of exp has no real root, so no max shift, comparison or clip
    is needed; order 2 is ((s + 1)^2 + 1) / 2.
    """
    full = _full_mask(mask, scores.shape)
    x2 = scores * scores
    numerator = _taylor_exp(scores, x2, x2 * scores, x2 * x2, int(order)) * full
    return numerator / numerator.sum(-1, keepdim=True)


# row means of T(s) for s ~ N(0, 4^2) are 9 (order 2) and 41 (order 4), for s ~ N(0, 12^2) 73 and 3500
_TAYLOR_SCALE = {2: 16.0, 4: 256.0}


def taylor_softmax_encrypted(scores, mask: torch.Tensor, order: float = 2.0):
    """Taylor softmax under MPC: x^2 (and x^3, x^4 for order 4) then one reciprocal per row of the
    row mean / 16 (order 2) or / 256 (order 4); no comparisons, no max. Configuration parameters:
    ``reciprocal_nr_iters``."""
    full = _full_mask(mask, scores.size())
    x2 = scores.square()
    x3, x4 = (x2 * scores, x2.square()) if int(order) == 4 else (None, None)
    numerator = _taylor_exp(scores, x2, x3, x4, int(order), times=_times) * full
    n = _valid_keys(full)
    scale = _TAYLOR_SCALE[int(order)]
    inverse = _scaled_reciprocal(numerator.sum(-1, keepdim=True) / n, scale)
    return numerator * inverse / (n * scale)


def two_quad_plain(scores: torch.Tensor, mask: torch.Tensor, c: float = 5.0) -> torch.Tensor:
    """2Quad: (s_i + c)^2 m_i / sum_j (s_j + c)^2 m_j  (MPCFormer, c = 5)."""
    full = _full_mask(mask, scores.shape)
    numerator = (scores + c).square() * full
    return numerator / numerator.sum(-1, keepdim=True)


_TWO_QUAD_SCALE = 32.0  # row means of (s+c)^2 are ~c^2 + Var(s) (25-100 in BERT); /32 brings them near 1


def two_quad_encrypted(scores, mask: torch.Tensor, c: float = 5.0):
    """2Quad under MPC: one square, then one Newton-Raphson reciprocal per row of the row *mean*
    over real keys divided by 32 (accurate for means in ~[0.6, 3000]; CrypTen's reciprocal of the
    raw mean lost ~2% at the typical mean 41). Configuration parameters: ``reciprocal_nr_iters``."""
    full = _full_mask(mask, scores.size())
    numerator = (scores + c).square() * full
    n = _valid_keys(full)
    inverse = _scaled_reciprocal(numerator.sum(-1, keepdim=True) / n, _TWO_QUAD_SCALE)
    return numerator * inverse / (n * _TWO_QUAD_SCALE)


def two_relu_plain(scores: torch.Tensor, mask: torch.Tensor, eps: float = 1e-2) -> torch.Tensor:
    """2ReLU: ReLU(s_i) m_i / (sum_j ReLU(s_j) m_j + eps n)  (MPCFormer; n = number of real keys)."""
    full = _full_mask(mask, scores.shape)
    numerator = torch.relu(scores) * full
    n = _valid_keys(full)
    return numerator / (numerator.sum(-1, keepdim=True) / n + eps) / n


def two_relu_encrypted(scores, mask: torch.Tensor, eps: float = 1e-2):
    """2ReLU under MPC: one comparison per score, one reciprocal per row of the mean (+eps, so
    an all-negative row gives zeros instead of dividing by zero). Configuration parameters:
    ``reciprocal_nr_iters``."""
    full = _full_mask(mask, scores.size())
    numerator = scores.relu() * full
    n = _valid_keys(full)
    inverse = _scaled_reciprocal(numerator.sum(-1, keepdim=True) / n + eps, 1.0)
    return numerator * inverse / n


# ----------------------------------------------------------------------------- parameter checks
def _check_c(params: dict[str, float]) -> None:
    if not 0.0 <= params["c"] <= 64.0:
        raise ValueError(f"2quad's shift c must be in [0, 64] (MPCFormer uses 5), got {params['c']}")


def _check_eps(params: dict[str, float]) -> None:
    if not 1e-4 <= params["eps"] <= 10.0:
        raise ValueError(f"2relu's eps must be in [1e-4, 10] (it keeps the reciprocal finite), got {params['eps']}")


def _check_n(params: dict[str, float]) -> None:
    n = params["n"]
    if n != int(n) or not 1 <= n <= 8:
        raise ValueError(f"lim-softmax's n (squarings; exp ~ (1 + x/2^n)^(2^n)) must be an integer in 1..8, got {n}")


def _check_order(params: dict[str, float]) -> None:
    if params["order"] not in (2.0, 4.0):
        raise ValueError(f"taylor-softmax's order must be 2 or 4 (even orders stay positive), got {params['order']}")


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
    "puma-gelu", "activation", "0 | F0 deg-3 | F1 deg-6 | x, knots -4, -1.95, 3", puma_gelu_plain, puma_gelu_encrypted,
    reference="PUMA (Dong et al., 2023)",
))
register(Approximation(
    "softmax", "normaliser", "exp(s_i - max) / sum_j exp(s_j - max)", softmax_plain, softmax_encrypted,
    reference="CrypTen (Knott et al., NeurIPS 2021)",
))
register(Approximation(
    "2quad", "normaliser", "(s_i + c)^2 / sum_j (s_j + c)^2", two_quad_plain, two_quad_encrypted,
    params={"c": 5.0}, reference="MPCFormer (Li et al., ICLR 2023)", check=_check_c,
))
register(Approximation(
    "2relu", "normaliser", "ReLU(s_i) / (sum_j ReLU(s_j) + eps n)", two_relu_plain, two_relu_encrypted,
    params={"eps": 1e-2}, reference="MPCFormer (Li et al., ICLR 2023)", check=_check_eps,
))
register(Approximation(
    "lim-softmax", "normaliser", "e_i / sum_j e_j, e = ReLU(1 + (s - max)/2^n)^(2^n)",
    lim_softmax_plain, lim_softmax_encrypted, params={"n": 3.0},
    reference="limit exp of CrypTen (Knott et al. 2021), clipped as in PUMA (Dong et al. 2023)", check=_check_n,
))
register(Approximation(
    "taylor-softmax", "normaliser", "T(s_i) / sum_j T(s_j), T(x) = 1 + x + x^2/2 (+ x^3/6 + x^4/24)",
    taylor_softmax_plain, taylor_softmax_encrypted, params={"order": 2.0},
    reference="Taylor softmax (Vincent et al. 2015; de Brebisson & Vincent, ICLR 2016)", check=_check_order,
))
