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

import functools
import math
import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from mpcformer.approx.registry import Approximation, register

__all__ = ["INV_SQRT_RANGE", "RowScaled", "as_rows", "encrypted_inv_sqrt", "fitted_polynomial", "fit_error"]  # the rest: through the registry

# Scores of padded keys are pushed this far below the rest before a max (fits 16-bit fixed point).
_MASK_SHIFT = 1.0e4


def _full_mask(mask: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    return mask.to(torch.float32).expand(shape).contiguous()


def _valid_keys(full: torch.Tensor) -> torch.Tensor:
    """Public count of real keys per row, (B, H, Tq, 1); at least 1 so empty rows stay finite."""
    return full.sum(-1, keepdim=True).clamp(min=1.0)


@dataclass(frozen=True)
class RowScaled:
    """Encrypted attention probabilities as ``numerator * inverse / divisor``: every encrypted
    normaliser ends with one factor per row (``inverse``, encrypted (B, nh, Tq, 1); ``divisor``, public),
    so the attention can apply it after ``probs @ V`` and open (Tq, hs) per head instead of (Tq, Tk).
    ``inverse`` is ``None`` when ``numerator`` already holds the probabilities."""

    numerator: Any  # (B, nh, Tq, Tk)
    inverse: Any = None  # (B, nh, Tq, 1)
    divisor: Any = 1.0  # a float or (B, nh, Tq, 1)

    def scale(self, rows):
        """``rows`` (B, nh, Tq, ...) times each row's factor."""
        return rows if self.inverse is None else rows * self.inverse / self.divisor

    def probs(self):
        return self.scale(self.numerator)


def as_rows(normalised) -> RowScaled:
    """An encrypted normaliser's result as :class:`RowScaled` (one registered elsewhere may return plain probabilities)."""
    return normalised if isinstance(normalised, RowScaled) else RowScaled(normalised)


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


# ----------------------------------------------------------------------------- fitted powers
# A reciprocal or inverse square root in few rounds: a polynomial fitted to x^exponent over the
# range of inputs a trained model shows, then a few fused Newton-type steps. No comparison, no bit
# decomposition; outside the fitted range the error grows quickly (the polynomial is not clamped).
_FIT_SAMPLES = 4001
_LAWSON_ITERATIONS = 40


@functools.lru_cache(maxsize=64)
def fitted_polynomial(exponent: float, low: float, high: float, degree: int) -> tuple[float, ...]:
    """Coefficients ``c_0 .. c_degree`` (lowest first) of ``p(u) ~ u^exponent``, ``u = x / sqrt(low high)``,
    for ``x`` in ``[low, high]``.

    Weighted least squares on the relative error ``p(u) u^-exponent - 1`` at log-uniform samples,
    the weights moved towards the minimax fit by Lawson's rule. float64; the coefficients are
    rounded to 10 significant digits, so parties on different machines encode the same public
    values (a coefficient that differed by one unit of 2^-16 between the parties would scale
    their random shares differently).
    """
    centre = math.sqrt(low * high)
    u = torch.logspace(math.log10(low / centre), math.log10(high / centre), _FIT_SAMPLES, dtype=torch.float64)
    design = torch.stack([u**j for j in range(degree + 1)], dim=1) / (u**exponent)[:, None]  # (N, d+1)
    ones = torch.ones(len(u), 1, dtype=torch.float64)
    weights = torch.full((len(u), 1), 1.0 / len(u), dtype=torch.float64)
    for _ in range(_LAWSON_ITERATIONS):
        coefficients = torch.linalg.lstsq(design * weights.sqrt(), ones * weights.sqrt()).solution  # (d+1, 1)
        weights = weights * (design @ coefficients - ones).abs()
        weights = weights / weights.sum()
    return tuple(float(f"{c:.10g}") for c in coefficients[:, 0].tolist())


def _polynomial(powers: list, coefficients: tuple[float, ...], times=operator.mul):
    """``c_0 + sum_j c_j u^j`` from ``powers = [u, u^2, ...]``; ``times(value, public coefficient)``."""
    value = coefficients[0]
    for power, coefficient in zip(powers, coefficients[1:]):
        value = times(power, coefficient) + value
    return value


def _plain_powers(u: torch.Tensor, degree: int) -> list[torch.Tensor]:
    return [u**j for j in range(1, degree + 1)]


def _encrypted_powers(u, degree: int) -> list:
    """``[u, u^2, ..., u^degree]`` of an encrypted ``u`` in ceil(log2 degree) rounds: each round
    multiplies the powers known so far by the highest, in one product (u^2 by one square)."""
    from mpcformer.mpc.compat import crypten

    powers = [u]
    while len(powers) < degree:
        top, count = powers[-1], min(len(powers), degree - len(powers))
        if len(powers) == 1:
            powers.append(u.square())
        elif count == 1:
            powers.append(powers[0] * top)
        else:
            powers += _rows(crypten.stack(powers[:count]) * crypten.stack([top] * count))
    return powers


def _fit_scale(low: float, high: float) -> float:
    return math.sqrt(low * high)


def _inv_sqrt_steps_plain(u: torch.Tensor, y: torch.Tensor, steps: int) -> torch.Tensor:
    for _ in range(steps):
        y = y * 1.5 - (u * y) * (y * y) * 0.5
    return y


def _position_ranges(low: float, high: float, first_low: float, first_high: float, tokens: int):
    """``[(start, length, low, high)]`` along the token dimension: without a first range, one entry
    for every position; with one, position 0 (public: always [CLS] or <s>) on ``[first_low,
    first_high]`` and the others on ``[low, high]``."""
    if not first_low:
        return [(0, tokens, low, high)]
    return [(0, 1, first_low, first_high)] + ([(1, tokens - 1, low, high)] if tokens > 1 else [])


def fitted_inv_sqrt_plain(
    variance: torch.Tensor, low: float, high: float, degree: float, steps: float,
    first_low: float = 0.0, first_high: float = 0.0,
) -> torch.Tensor:
    """``1/sqrt(v)`` as :func:`fitted_inv_sqrt_encrypted` computes it, in torch, of ``v`` clamped to
    ``[low, high]``: the two agree inside the range; outside it the encrypted form's polynomial
    grows without bound (a clamp would take a comparison), where the clamp keeps a student's
    training finite. With ``first_low``, ``variance`` is (..., T, 1) and position 0 has its own range."""
    if first_low:
        return torch.cat([
            fitted_inv_sqrt_plain(variance.narrow(-2, start, n), lo, hi, degree, steps)
            for start, n, lo, hi in _position_ranges(low, high, first_low, first_high, variance.size(-2))
        ], dim=-2)
    centre = _fit_scale(low, high)
    u = variance.clamp(low, high) / centre
    y = _polynomial(_plain_powers(u, int(degree)), fitted_polynomial(-0.5, low, high, int(degree)))
    return _inv_sqrt_steps_plain(u, y, int(steps)) / math.sqrt(centre)


def fitted_inv_sqrt_encrypted(
    variance, low: float, high: float, degree: float, steps: float, first_low: float = 0.0, first_high: float = 0.0,
):
    """``1/sqrt(v)`` for encrypted ``v`` in ``[low, high]``: with ``u = v / sqrt(low high)``, the
    polynomial :func:`fitted_polynomial` ``(-1/2, low, high, degree)`` of ``u``, then ``steps``
    Newton steps ``y <- 3y/2 - (u y)(y^2)/2`` (``u y`` and ``y^2`` in one product: 2 rounds a
    step), divided by ``(low high)^(1/4)``.

    Rounds: ceil(log2 degree) + 2 steps. Relative error over ``[low, high]``: :func:`fit_error`.
    Reads no CrypTen setting.

    With ``first_low`` (and ``first_high``), ``variance`` is (..., T, 1) and position 0 takes its
    own range, scale and coefficients: the powers are computed once for every position, so a
    second range costs no round, only local products. A distilled student's ranges come from
    :func:`~mpcformer.models.surgery.calibrate_layernorms`, one pair per LayerNorm.

    ``ln:fit``'s defaults, ``[0.125, 128]``, degree 4, no step (2 rounds; a LayerNorm of 4 rounds
    instead of 19), cover the variances (times the input scale squared) of every LayerNorm of
    the pretrained all-MiniLM-L6-v2 on 256 SST-2 dev sentences: 0.13-131, the top from the
    [CLS] token (125-131 in layer 0's output LayerNorm, 16-95 in layers 1-3), the other tokens
    0.13-27. Over three decades a degree-4 polynomial is a coarse normaliser: relative error up to
    0.64 (float64), a smooth token-dependent gain that a student distilled with the plaintext twin
    trains with; it is not a drop-in. Narrower ranges are far more precise (``[0.3, 3]``: 0.021;
    degree 2 and one step on ``[0.1, 1.3]``: 0.026). Beyond ``high`` the polynomial grows (no
    clamp without a comparison).
    """
    from mpcformer.mpc.compat import crypten

    parts = _position_ranges(low, high, first_low, first_high, variance.size(-2) if first_low else 0)

    def by_part(value, fn):  # fn(value, low, high) on each position range, joined again (local)
        if len(parts) == 1:
            return fn(value, *parts[0][2:])
        return crypten.cat([fn(value.narrow(-2, start, n), lo, hi) for start, n, lo, hi in parts], dim=-2)

    u = by_part(variance, lambda v, lo, hi: _times(v, 1.0 / _fit_scale(lo, hi)))
    powers = _encrypted_powers(u, int(degree))  # once for every position: the ranges cost no round
    y = by_part(
        crypten.stack(powers),  # (degree, ..., T, 1)
        lambda p, lo, hi: _polynomial(_rows(p), fitted_polynomial(-0.5, lo, hi, int(degree)), times=_times),
    )
    for _ in range(int(steps)):
        y_squared, u_y = _rows(crypten.stack([y, u]) * crypten.stack([y, y]))
        y = y * 1.5 - (u_y * y_squared) * 0.5
    return by_part(y, lambda v, lo, hi: _times(v, 1.0 / math.sqrt(_fit_scale(lo, hi))))


def _reciprocal_steps_plain(u: torch.Tensor, y: torch.Tensor, steps: int) -> torch.Tensor:
    error = 1.0 - u * y
    for _ in range(steps):
        y, error = y * (1.0 + error), error * error
    return y


def fitted_reciprocal_plain(x: torch.Tensor, low: float, high: float, degree: int, steps: int) -> torch.Tensor:
    """``sqrt(low high) / x`` as :func:`fitted_reciprocal_encrypted` computes it, in torch, of ``x``
    clamped to ``[low, high]`` (as :func:`fitted_inv_sqrt_plain`: outside the range the encrypted
    form's steps diverge)."""
    u = x.clamp(low, high) / _fit_scale(low, high)
    y = _polynomial(_plain_powers(u, degree), fitted_polynomial(-1.0, low, high, degree))
    return _reciprocal_steps_plain(u, y, steps)


def fitted_reciprocal_encrypted(x, low: float, high: float, degree: int, steps: int):
    """``sqrt(low high) / x`` (a value near 1, precise in fixed point) for encrypted ``x`` in
    ``[low, high]``: with ``u = x / sqrt(low high)``, the polynomial :func:`fitted_polynomial`
    ``(-1, low, high, degree)`` of ``u``, then ``steps`` Goldschmidt steps ``y <- y (1 + e)``,
    ``e <- e^2`` from ``e = 1 - u y`` (the same iterates as Newton's ``y (2 - u y)``, but the next
    ``e`` comes in the same product: 1 round a step).

    Rounds: ceil(log2 degree) without steps, else ceil(log2(degree + 1)) + steps. Reads no
    CrypTen setting.
    """
    from mpcformer.mpc.compat import crypten

    u = _times(x, 1.0 / _fit_scale(low, high))
    coefficients = fitted_polynomial(-1.0, low, high, degree)
    powers = _encrypted_powers(u, degree + 1 if steps else degree)
    y = _polynomial(powers, coefficients, times=_times)
    if not steps:
        return y
    error = 1.0 - _polynomial(powers[1:], (0.0, *coefficients[1:]), times=_times) - _times(u, coefficients[0])
    for step in range(steps):
        if step == steps - 1:
            return y * (error + 1.0)
        y, error = _rows(crypten.stack([y, error]) * crypten.stack([error + 1.0, error]))
    return y


def fit_error(kind: str, low: float, high: float, degree: float, steps: float, span: float = 1.0) -> float:
    """Largest relative error (float64, no fixed point) of the fitted ``"inv_sqrt"`` or
    ``"reciprocal"`` over ``[low / span, high * span]``."""
    degree, steps = int(degree), int(steps)
    x = torch.logspace(math.log10(low / span), math.log10(high * span), 20001, dtype=torch.float64)
    if kind == "inv_sqrt":
        got, exact = fitted_inv_sqrt_plain(x, low, high, degree, steps), x.rsqrt()
    elif kind == "reciprocal":
        got, exact = fitted_reciprocal_plain(x, low, high, degree, steps), _fit_scale(low, high) / x
    else:
        raise ValueError(f"fit_error's kind must be 'inv_sqrt' or 'reciprocal', got '{kind}'")
    return float((got / exact - 1.0).abs().max())


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
    """PUMA GeLU under MPC: the three knot comparisons in one batch, by the coarse sign
    (:mod:`mpcformer.mpc.coarse_sign`: resolution 1/16, ``|x - knot| < 32768``), x^2, x^3, x^4, x^6 in
    three rounds, then one batched product ``[b1-b0, b2-b1, 1-b2] . [F0, F1, x]``.

    Within 1/16 above a knot the lower piece may be taken: the pieces differ there by at most 0.032
    (F1 against x just above 3), so the error against GeLU is at most 0.036 (0.020 with exact
    knots). Beyond the coarse sign's range (|x - knot| >= 32768) a selector may be wrong and the
    result garbage, where CrypTen's full comparison stays right. For |x| > ~35 ``x^6`` wraps around the
    64-bit ring, but its selector is an exact 0 there and ring products are exact, so the result
    stays right.
    """
    from mpcformer.mpc.compat import crypten
    from mpcformer.mpc.coarse_sign import less_than_zero

    b0, b1, b2 = _rows(less_than_zero(crypten.stack([x - k for k in _PUMA_KNOTS])))
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
    return _softmax_rows(scores, mask, lambda shifted: shifted.max(-1, keepdim=True)[0])


def softmax_coarse_max_encrypted(scores, mask: torch.Tensor):
    """:func:`softmax_encrypted` with the row maximum found by the coarse sign
    (:func:`mpcformer.mpc.coarse_sign.maximum`): softmax does not depend on the value subtracted,
    which only keeps ``exp``'s argument at most 0 (here at most 7/16 for 128 keys), so the
    probabilities are softmax's, for a fraction of the comparisons' bytes. Valid while real scores
    span less than 256 and lie within ``32768 - 10^4`` of each other (padded keys sit 10^4 lower
    during the max)."""
    from mpcformer.mpc.coarse_sign import maximum

    return _softmax_rows(scores, mask, lambda shifted: maximum(shifted, -1))


def _softmax_rows(scores, mask: torch.Tensor, row_max) -> RowScaled:
    """Softmax over real keys with ``row_max(scores pushed down at padded keys)`` subtracted."""
    full = _full_mask(mask, scores.size())
    maximum = row_max(scores + (full - 1.0) * _MASK_SHIFT)
    numerator = ((scores - maximum) * full).exp() * full
    inverse = _scaled_reciprocal(numerator.sum(-1, keepdim=True), _SOFTMAX_SCALE)
    return RowScaled(numerator, inverse, _SOFTMAX_SCALE)


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
    return RowScaled(numerator, inverse, _SOFTMAX_SCALE)


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
    return RowScaled(numerator, inverse, n * scale)


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
    return RowScaled(numerator, inverse, n * _TWO_QUAD_SCALE)


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
    return RowScaled(numerator, inverse, n)


def two_quad_fit_plain(
    scores: torch.Tensor, mask: torch.Tensor, c: float = 5.0, low: float = 2.0, high: float = 512.0,
    degree: float = 3.0, steps: float = 6.0,
) -> torch.Tensor:
    """2Quad with the fitted reciprocal of :func:`two_quad_fit_encrypted`, in torch (the student
    trains with it)."""
    full = _full_mask(mask, scores.shape)
    numerator = (scores + c).square() * full
    n = _valid_keys(full)
    inverse = fitted_reciprocal_plain(numerator.sum(-1, keepdim=True) / n, low, high, int(degree), int(steps))
    return numerator * inverse / (n * _fit_scale(low, high))


def two_quad_fit_encrypted(
    scores, mask: torch.Tensor, c: float = 5.0, low: float = 2.0, high: float = 512.0, degree: float = 3.0,
    steps: float = 6.0,
):
    """2Quad whose division takes the reciprocal of the row mean ``m`` by
    :func:`fitted_reciprocal_encrypted` over ``[low, high]`` (the range the row means of a
    trained model take) instead of ``reciprocal_nr_iters`` Newton steps from an ``exp`` start:
    ceil(log2(degree + 1)) + steps rounds for the reciprocal instead of 28 (defaults: 8, relative error
    5e-4 on ``[2, 512]``; MiniLM's row means on SST-2 span 3.7-404, 1.2-404 with quad before
    distillation). Outside ``[low, high]`` the reciprocal's error grows quickly (:func:`fit_error`);
    the plaintext twin computes the same numbers, so distillation sees them. Reads no CrypTen
    setting."""
    full = _full_mask(mask, scores.size())
    numerator = (scores + c).square() * full
    n = _valid_keys(full)
    inverse = fitted_reciprocal_encrypted(numerator.sum(-1, keepdim=True) / n, low, high, int(degree), int(steps))
    return RowScaled(numerator, inverse, n * _fit_scale(low, high))


def two_relu_fit_plain(
    scores: torch.Tensor, mask: torch.Tensor, eps: float = 1e-2, low: float = 0.02, high: float = 16.0,
    degree: float = 3.0, steps: float = 7.0,
) -> torch.Tensor:
    """2ReLU with the fitted reciprocal of :func:`two_relu_fit_encrypted`, in torch."""
    full = _full_mask(mask, scores.shape)
    numerator = torch.relu(scores) * full
    n = _valid_keys(full)
    inverse = fitted_reciprocal_plain(numerator.sum(-1, keepdim=True) / n + eps, low, high, int(degree), int(steps))
    return numerator * inverse / (n * _fit_scale(low, high))


def two_relu_fit_encrypted(
    scores, mask: torch.Tensor, eps: float = 1e-2, low: float = 0.02, high: float = 16.0, degree: float = 3.0,
    steps: float = 7.0,
):
    """2ReLU whose division takes the reciprocal of ``mean + eps`` by
    :func:`fitted_reciprocal_encrypted` over ``[low, high]``: one comparison per score, then
    ceil(log2(degree + 1)) + steps rounds for the reciprocal (defaults: 9, relative error 7e-3 on
    ``[0.02, 16]``; MiniLM's row means + eps on SST-2: 0.01-13.5, 0.018 at the 0.01% quantile;
    a row whose mean is eps has no positive score and stays 0). Reads no CrypTen setting."""
    full = _full_mask(mask, scores.size())
    numerator = scores.relu() * full
    n = _valid_keys(full)
    inverse = fitted_reciprocal_encrypted(numerator.sum(-1, keepdim=True) / n + eps, low, high, int(degree), int(steps))
    return RowScaled(numerator, inverse, n * _fit_scale(low, high))


# ----------------------------------------------------------------------------- layernorm normalisers
#: Inputs for which :func:`encrypted_inv_sqrt` (3 Newton-Raphson steps, 16 fractional bits) has
#: relative error < 5e-3; CrypTen's own ``inv_sqrt`` only manages about [0.1, 150].
INV_SQRT_RANGE = (2.0**-10, 2.0**17)


def _fixed_point_bits(bits):
    """Comparison results (CrypTen encodes them with scale 1) re-encoded at the session precision,
    by an exact multiplication with the public integer scale, so they mix with public floats."""
    from crypten.encoder import FixedPointEncoder

    encoder = FixedPointEncoder()
    encoded = bits * int(encoder.scale)  # an int: exact, no truncation
    encoded.encoder = encoder
    return encoded


def inv_sqrt_plain(variance: torch.Tensor) -> torch.Tensor:
    """1/sqrt(v): LayerNorm's own normaliser."""
    return torch.rsqrt(variance)


def encrypted_inv_sqrt(x, low_exponent: int = -10, high_exponent: int = 16):
    """1/sqrt(x), elementwise, for encrypted x > 0, accurate over [2^low_exponent, 2^(high_exponent + 1)).

    Start: y0 = 2^(-(j + 1/2)/2) on [2^j, 2^(j+1)), read off one batched comparison of x with the
    public thresholds 2^low .. 2^high (below 2^low: the value of [2^(low-1), 2^low)), so
    y0 sqrt(x) lies in [2^-1/4, 2^1/4]. Then Newton-Raphson y <- y (3 - (x y) y) / 2, which
    converges quadratically from there (worst relative error 0.19 -> 0.06 -> 8e-3 -> 1e-4).
    Measured at 16 fractional bits: relative error < 1.5e-3 on [5e-4, 1e5], the ends limited by the
    fixed-point resolution of x and of y; as many rounds as CrypTen's ``inv_sqrt`` (17), whose
    exp-based start is only right on about [0.1, 150] (it returns garbage at 1e3).
    Configuration parameters: ``functions.sqrt_nr_iters`` (CrypTen's default 3).
    """
    from crypten.config import cfg

    exponents = torch.arange(low_exponent, high_exponent + 1, dtype=torch.float64, device=x.device)  # (K,)
    starts = 2.0 ** (-(exponents + 0.5) / 2)  # y0 on [2^j, 2^(j+1)), (K,)
    below = 2.0 ** (-(low_exponent - 0.5) / 2)
    steps = starts - torch.cat([starts.new_tensor([below]), starts[:-1]])  # (K,)
    at_least = _fixed_point_bits(x.unsqueeze(-1).ge((2.0 ** exponents).float()))  # (..., 1) vs (K,) -> (..., K)
    y = (at_least * steps.float()).sum(-1) + below  # (...)
    for _ in range(cfg.functions.sqrt_nr_iters):
        y = y * (3 - (x * y) * y) * 0.5
    return y


def exact_inv_sqrt_encrypted(variance):
    """:func:`encrypted_inv_sqrt` (comparison start, ``functions.sqrt_nr_iters`` Newton steps)."""
    return encrypted_inv_sqrt(variance)


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


def _check_fit(params: dict[str, float]) -> None:
    low, high, degree, steps = (params[key] for key in ("low", "high", "degree", "steps"))
    if not 0.0 < low < high <= 1e6 * low:
        raise ValueError(f"the fitted range needs 0 < low < high <= 1e6 low, got [{low:g}, {high:g}]")
    if degree != int(degree) or not 1 <= degree <= 4:
        raise ValueError(f"the fitted polynomial's degree must be an integer in 1..4, got {degree:g}")
    if steps != int(steps) or not 0 <= steps <= 8:
        raise ValueError(f"the number of steps after the fitted polynomial must be an integer in 0..8, got {steps:g}")


def _check_layernorm_fit(params: dict[str, float]) -> None:
    _check_fit(params)
    first_low, first_high = params["first_low"], params["first_high"]
    if (first_low or first_high) and not 0.0 < first_low < first_high <= 1e6 * first_low:
        raise ValueError(
            f"the first position's range needs 0 < first_low < first_high <= 1e6 first_low (or both 0: "
            f"the same range as the others), got [{first_low:g}, {first_high:g}]"
        )


def _check_c_and_fit(params: dict[str, float]) -> None:
    _check_c(params)
    _check_fit(params)


def _check_eps_and_fit(params: dict[str, float]) -> None:
    _check_eps(params)
    _check_fit(params)


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
    "puma-gelu", "activation", "0 | F0 deg-3 | F1 deg-6 | x, knots -4, -1.95, 3; MPC: knots to 1/16", puma_gelu_plain, puma_gelu_encrypted,
    reference="PUMA (Dong et al., 2023)",
))
register(Approximation(
    "softmax", "normaliser", "exp(s_i - max) / sum_j exp(s_j - max)", softmax_plain, softmax_encrypted,
    reference="CrypTen (Knott et al., NeurIPS 2021)",
))
register(Approximation(
    "softmax-coarse-max", "normaliser", "softmax; MPC: its max by 20-bit comparisons (same probabilities)",
    softmax_plain, softmax_coarse_max_encrypted,
    reference="CrypTen's softmax; comparison on kept bits, bit-sliced (this project)",
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
register(Approximation(
    "2quad-fit", "normaliser", "(s_i + c)^2 / sum_j (s_j + c)^2, reciprocal: fitted polynomial + Goldschmidt steps",
    two_quad_fit_plain, two_quad_fit_encrypted,
    params={"c": 5.0, "low": 2.0, "high": 512.0, "degree": 3.0, "steps": 6.0},
    reference="MPCFormer's 2Quad; Goldschmidt division (Goldschmidt 1964)", check=_check_c_and_fit,
))
register(Approximation(
    "2relu-fit", "normaliser", "ReLU(s_i) / (sum_j ReLU(s_j) + eps n), reciprocal: fitted polynomial + Goldschmidt steps",
    two_relu_fit_plain, two_relu_fit_encrypted,
    params={"eps": 1e-2, "low": 0.02, "high": 16.0, "degree": 3.0, "steps": 7.0},
    reference="MPCFormer's 2ReLU; Goldschmidt division (Goldschmidt 1964)", check=_check_eps_and_fit,
))
register(Approximation(
    "ln:exact", "layernorm", "1/sqrt(v); MPC: comparison start + Newton", inv_sqrt_plain, exact_inv_sqrt_encrypted,
    reference="Ba et al. 2016; start from 27 thresholds (this project)",
))
register(Approximation(
    "ln:fit", "layernorm", "1/sqrt(v): fitted polynomial on [low, high] + fused Newton steps",
    fitted_inv_sqrt_plain, fitted_inv_sqrt_encrypted,
    params={"low": 0.125, "high": 128.0, "degree": 4.0, "steps": 0.0, "first_low": 0.0, "first_high": 0.0},
    reference="this project (fit to MiniLM's LayerNorm variances)", check=_check_layernorm_fit,
))
