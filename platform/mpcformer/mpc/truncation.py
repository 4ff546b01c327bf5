"""Exact two-party truncation with the TTP dealer: division of shares by a public integer that is
never off by ``2^64 / y``.

CrypTen divides a 2-party ``ArithmeticSharedTensor`` by a public integer ``y`` (after every
fixed-point product, every product with a public float) by dividing each share locally. Shares
are uniform, so the two shares of ``x`` add up across ``2^64`` with probability ``|x| / 2^64``,
and then the result is off by ``2^64 / y`` (``2^32`` in real units with 16 fractional bits,
``x`` at double scale after a product). CrypTen's wraps-based ``beaver.truncate`` (its path for
3+ parties) drops a carry term and is not exact either. Here, for ``|x| <= 2^62 - y``:

1. **Offset.** ``K = y·⌊2^62 / y⌋`` (public, a multiple of ``y``, ``2^62 - y < K <= 2^62``);
   party 0 adds it: ``x' = x + K`` lies in ``[0, 2^63)``.
2. **Dealer's values** (no round trip: the ``trunc/<y>`` streams of
   :mod:`mpcformer.mpc.triple_stream`): shares of a uniform ``r`` (each party's own keystream),
   of ``⌊r / y⌋`` and of ``msb(r)`` (``r`` read unsigned; both ring elements).
3. **Open** ``c = x' + r mod 2^64`` (one round, both ways, CrypTen's ``reveal``).
4. **Local.** ``x' + r`` wrapped past ``2^64`` exactly when ``w = msb(r)·(1 - msb(c)) = 1``
   (``x' < 2^63``: ``r < 2^63`` cannot wrap; ``r >= 2^63`` wraps iff ``c < 2^63``), so
   ``x' = c - r + w·2^64`` and ``⌊x'/y⌋ = ⌊c/y⌋ - ⌊r/y⌋ + w·⌊2^64/y⌋ + e`` with a carry
   ``e`` in {-1, 0, 1} ({-1, 0} when ``y`` divides ``2^64``). Party ``i`` holds
   ``(1 - msb(c))·⌊2^64/y⌋·[msb r]_i - [⌊r/y⌋]_i``; party 0 adds ``⌊c/y⌋ - K/y`` (``c``
   unsigned).

The result is ``⌊x / y⌋`` plus 0 or 1 for a power of two ``y`` (1 with probability
``frac(x / y)``: unbiased rounding), within 1 of it for any other ``y``; never off by
``2^64 / y``. So a zero divided by a ``y`` that is not a power of two may come out as -1 (CrypTen's
local division keeps it 0): the encrypted attention zeroes its padded pairs on the shares rather
than rely on a masked product staying 0 (:mod:`mpcformer.models.encrypted_bert`). Outside
``|x| <= 2^62 - y`` (real values above ``2^30`` before a 16-bit truncation) it fails as CrypTen's
division would.

**Security** (semi-honest, as CrypTen's TTP): ``r = r_0 + r_1`` with ``r_i`` from the keystream
party ``i`` shares with the dealer, so ``r`` is uniform to the other party and ``c`` is uniform
whatever ``x``: the opening tells neither party anything. Party 1's ``⌊r/y⌋`` and ``msb(r)``
shares are its own keystream; party 0's are the dealer's values minus those, uniform to party 0.
Each stream position is used once. The dealer sees only which divisors were used and how many
elements each truncated (the lengths of the ranges party 0 asks for), as for every stream.

**Where.** 2 parties, the TTP dealer, CPU shares, OS-keyed streams
(:func:`mpcformer.mpc.beaver.session_streams`), mpcformer's Beaver steps on (they keep party 0's
dealer answers in order), and a public integer ``2 <= |y| < 2^62`` or a tensor of them and ones
(each distinct divisor's elements apart, e.g. each row's count of real tokens). Elsewhere (more
parties, CUDA, other divisors, CrypTen's insecure seeding, CrypTen's Beaver steps as shipped)
CrypTen's own division runs. The session's runtime (patch ``truncation`` of
:mod:`mpcformer.mpc.runtime`, ``MPCConfig.exact_truncation``) puts :func:`exact_div` in place of
``ArithmeticSharedTensor.div_`` and restores CrypTen's method when the session closes.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch

from mpcformer.mpc.compat import crypten  # noqa: F401  (import order: compat first)
from crypten import communicator as comm
from crypten.mpc.primitives import ArithmeticSharedTensor

__all__ = [
    "exact_div", "exact_under", "divide_", "divide_by_tensor_", "unsigned_floordiv",
    "dealer_values", "stream_kind",
]

log = logging.getLogger(__name__)

_OFFSET = 1 << 62  # party 0's offset before masking (rounded down to a multiple of y)
_MAX_DIVISOR = 1 << 62


def _ring(value: int) -> int:
    """``value mod 2^64`` as a signed int64."""
    value %= 1 << 64
    return value - (1 << 64) if value >= 1 << 63 else value


def unsigned_floordiv(v: torch.Tensor, y: int) -> torch.Tensor:
    """``⌊v / y⌋`` with the int64 ``v`` read as unsigned (``0 .. 2^64 - 1``), for ``2 <= y < 2^62``."""
    if y & (y - 1) == 0:  # a power of two: logical shift
        k = y.bit_length() - 1
        return (v >> k) & ((1 << (64 - k)) - 1)
    quotient, remainder = divmod(1 << 64, y)  # v < 0 reads as v + 2^64 = v + remainder + quotient·y
    high = torch.div(v + remainder, y, rounding_mode="floor") + _ring(quotient)
    return torch.where(v < 0, high, torch.div(v, y, rounding_mode="floor"))


def stream_kind(y: int) -> str:
    """The triple-stream kind of truncations by ``y``."""
    return f"trunc/{y}"


def dealer_values(r: torch.Tensor, y: int) -> torch.Tensor:
    """What the dealer shares for a range of ``trunc/<y>``: positions pair up, ``(2k, 2k + 1)`` is one
    element, whose mask is ``r[2k]``; ``⌊r[2k] / y⌋`` (unsigned) at ``2k``, ``msb(r[2k])`` at ``2k + 1``."""
    if r.numel() % 2:
        raise ValueError(f"a range of truncation values has an even length, got {r.numel()}")
    masks = r[0::2]
    out = torch.empty_like(r)
    out[0::2] = unsigned_floordiv(masks, y)
    out[1::2] = (masks < 0).long()
    return out


def divide_(x: Any, y: int, streams: Any) -> Any:
    """Replace ``x``'s shares by shares of ``⌊x / y⌋`` (+0/1) by the protocol of the module doc."""
    size = x.share.size()
    n = size.numel()
    if n == 0:
        return x
    values = streams.take(stream_kind(abs(y)), torch.Size([2 * n]))  # 2 stream positions per element
    r, q, m = (values[role][offset::2].reshape(size) for role, offset in (("r", 0), ("c", 0), ("c", 1)))
    divisor = abs(y)
    offset = divisor * (_OFFSET // divisor)  # K
    rank = comm.get().get_rank()
    masked = x.share + r
    if rank == 0:
        masked += offset
    c = ArithmeticSharedTensor.from_shares(masked, precision=0).reveal()  # uniform: r is
    z = (c >= 0).long() * _ring((1 << 64) // divisor) * m  # (1 - msb c)·⌊2^64/y⌋·[msb r]
    z -= q
    if rank == 0:
        z += unsigned_floordiv(c, divisor) - offset // divisor
    x.share = z.neg_() if y < 0 else z
    return x


def divide_by_tensor_(x: Any, y: torch.Tensor, streams: Any) -> Any:
    """``x / y`` for a public integer tensor ``y`` (e.g. each row's count of real tokens): each distinct
    divisor's elements by :func:`divide_` (both parties hold ``y``, so they group alike)."""
    divisors = torch.broadcast_to(y.long(), x.share.size())
    share = x.share.clone()
    for value in divisors.unique().tolist():
        if value == 1:
            continue
        where = divisors == value
        part = ArithmeticSharedTensor.from_shares(share[where], precision=0)
        share[where] = divide_(part, value, streams).share
    x.share = share
    return x


def _integer_divisors(y: Any) -> torch.Tensor | None:
    """``y`` as a tensor of divisors the exact path takes (integers, each 1 or ``2 <= |y| < 2^62``)."""
    if not torch.is_tensor(y) or y.is_floating_point() and y.frac().ne(0).any():
        return None
    y = y.long()
    return y if ((y.abs() >= 2) & (y.abs() < _MAX_DIVISOR) | (y == 1)).all() else None


def _streams_for(x: Any, y: Any) -> Any:
    """The session's streams when the exact path applies to ``x / y``, else ``None``."""
    if comm.get().get_world_size() != 2:
        return None
    if not (isinstance(y, int) and 2 <= abs(y) < _MAX_DIVISOR or _integer_divisors(y) is not None):
        return None
    from mpcformer.mpc import beaver, runtime

    if not runtime.applied("beaver"):  # CrypTen's Beaver steps as shipped: its dealer requests, its division
        return None
    return beaver.session_streams(x.device)


def exact_div(original: Callable[[Any, Any], Any], config: Any = None) -> Callable[[Any, Any], Any]:
    """CrypTen's ``ArithmeticSharedTensor.div_`` (``original``) with exact truncation where it applies."""

    def div_(self: Any, y: Any) -> Any:
        if isinstance(y, float) and int(y) == y:
            y = int(y)
        streams = _streams_for(self, y)
        if streams is None:
            return original(self, y)
        if torch.is_tensor(y):
            return divide_by_tensor_(self, _integer_divisors(y), streams)
        return divide_(self, y, streams)

    return div_


def exact_under(config: Any, parties: int = 2) -> bool:
    """Whether a session of this :class:`~mpcformer.mpc.config.MPCConfig` truncates exactly (the
    runtime's ``truncation`` patch applies to it)."""
    from mpcformer.mpc import runtime

    return any(p.applies(config, parties) for p in runtime.MANIFEST if p.name == "truncation")
