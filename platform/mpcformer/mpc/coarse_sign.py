"""``[x < 0]`` at a chosen precision and range, for comparisons whose result may be wrong by a
hair: the knots of a piecewise approximation, the running maximum that keeps ``exp`` in range.

CrypTen's comparison decomposes all 64 bits of the ring into binary shares and runs a 64-bit adder
circuit on them (6 rounds of ANDs on one int64 word per element), then converts the sign bit back:
~400 bytes per element between the two parties. Most of those bits say nothing a piecewise
function needs. Here (2 parties, CrypTen's TTP dealer, CPU; CrypTen's comparison elsewhere):

1. **Keep ``width`` bits** (local). Each party takes bits ``[drop, drop + width)`` of its share:
   ``s_p = (x_p >> drop) mod 2^width``. Then ``s_0 + s_1 = floor(x / 2^drop) - c (mod 2^width)``
   with ``c`` in {0, 1} (the carry out of the dropped bits), exactly, with no probabilistic
   error: a wrap of the 64-bit ring is a multiple of ``2^(64 - drop)``, invisible mod
   ``2^width``. The sign of that ``width``-bit number is the sign of ``x`` as long as
   ``|x| < 2^(drop + width - 1) - 2^drop`` ring units (``- c`` must not wrap either); inputs in
   ``[0, 2^drop)`` units may read negative (``c = 1``). The caller states both in real units:
   ``fraction_bits`` (resolution ``2^-fraction_bits``) and ``integer_bits`` (range
   ``|x| < 2^integer_bits - 2^-fraction_bits``), so ``drop = precision - fraction_bits`` and
   ``width = fraction_bits + integer_bits + 1``. The defaults, 4 and 15: 20 bits kept, a
   resolution of 1/16 and a range of 32768 - 1/16.
2. **The sign bit** is ``msb(s_0) ^ msb(s_1) ^ carry``, ``carry = [a_0 + a_1 >= 2^(width-1)]``
   for the low ``m = width - 1`` bits ``a_p`` of each share: a millionaires' problem. Its
   generate/propagate bits ``g_j = a_0j & a_1j``, ``p_j = a_0j ^ a_1j`` are combined by a
   prefix tree, ``(G, P)_hi o (G, P)_lo = (G_hi ^ P_hi & G_lo, P_hi & P_lo)``: 1 + ceil(log2 m)
   rounds of ANDs. The bits are **sliced**: bit ``j`` of 64 elements shares one int64 word, so an
   AND moves 2 bits per element each way (CrypTen's: 128), and XORs are local.
3. **To arithmetic shares** with a random bit the dealer holds in both forms (the ``b2a`` triple
   stream): open the packed ``bit ^ r``, then ``bit = e + r - 2 e r`` (1 round, 1 bit each way).

For the defaults: 7 rounds and 101 bits (~12.6 bytes) per element from each party (CrypTen's
counters, sends and receives: ~25 bytes; CrypTen's comparison: ~430). The ANDs are CrypTen's
binary Beaver step (:func:`mpcformer.mpc.beaver.and_`, triples from the session's streams) and the
openings CrypTen's reveals, so the costs ledger, the network model and the leak tap see every
message. What a party holds: its own share bits, openings of its bits XOR fresh stream masks
(uniform), and the result's arithmetic share; the sign itself stays secret.
"""

from __future__ import annotations

import math
from typing import Any

import numpy
import torch

from mpcformer.mpc.compat import crypten  # import order: compat first
from crypten import communicator as comm
from crypten.mpc import MPCTensor
from crypten.mpc.primitives import BinarySharedTensor

from mpcformer.mpc import runtime

__all__ = ["less_than_zero", "maximum", "rounds", "applies", "FRACTION_BITS", "INTEGER_BITS"]

CrypTensor = Any  # crypten.mpc.MPCTensor (CrypTen has no type stubs)

#: Defaults: a resolution of 2^-4 = 1/16 and a range of |x| < 2^15 = 32768 (20 bits kept).
FRACTION_BITS, INTEGER_BITS = 4, 15
_LANES = 64


def applies(x: CrypTensor) -> bool:
    """Whether the protocol runs for ``x`` (2 parties, TTP dealer, CPU, the session's streams)."""
    from mpcformer.mpc.beaver import session_streams

    return runtime.holds("ttp-2-parties-cpu", x.device) and session_streams(x.device) is not None


def _pack(bits: numpy.ndarray) -> torch.Tensor:
    """(rows, n) 0/1 -> (rows, ceil(n/64)) int64 words, element ``i`` in bit ``i % 64`` of word ``i // 64``."""
    pad = -bits.shape[-1] % _LANES
    if pad:
        bits = numpy.pad(bits, ((0, 0), (0, pad)))
    return torch.from_numpy(numpy.packbits(bits, axis=-1, bitorder="little").view(numpy.int64))


def _unpack(words: torch.Tensor, n: int) -> torch.Tensor:
    return torch.from_numpy(numpy.unpackbits(words.numpy().view(numpy.uint8), bitorder="little")[:n].astype(numpy.int64))


def _bit_planes(value: torch.Tensor, count: int) -> torch.Tensor:
    """Bits ``0 .. count-1`` (count < 32) of each element of flat ``value``, packed: (count, words).
    numpy's byte-table unpacking and packing: ~7x faster here than shifting int64 tensors per bit."""
    as_bytes = value.to(torch.int32).numpy().view(numpy.uint8).reshape(-1, 4)
    bits = numpy.unpackbits(as_bytes, axis=1, bitorder="little")[:, :count]  # (n, count)
    return _pack(numpy.ascontiguousarray(bits.T))


def _and(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """This party's share of ``x & y`` for XOR shares ``x``, ``y``: CrypTen's binary Beaver step (one round)."""
    return (BinarySharedTensor.from_shares(x) & BinarySharedTensor.from_shares(y)).share


def _carry(mine: torch.Tensor, rank: int) -> torch.Tensor:
    """This party's XOR share of ``[a_0 + a_1 >= 2^m]``, from its packed planes ``mine`` (m, words) of ``a_rank``."""
    zeros = torch.zeros_like(mine)
    generate = _and(mine, zeros) if rank == 0 else _and(zeros, mine)  # g_j = a_0j & a_1j
    propagate = mine[1:]  # p_j = a_0j ^ a_1j (shares: the planes themselves); block 0's is never used
    while generate.size(0) > 1:
        blocks = generate.size(0)
        pairs = blocks // 2
        g_lo, g_hi = generate[0:2 * pairs:2], generate[1:2 * pairs:2]
        # propagate[i] belongs to block i + 1: the his are blocks 1, 3, ..; the los from block 2: 2, 4, ..
        p_hi = propagate[0:2 * pairs - 1:2]
        p_lo = propagate[1:2 * pairs - 2:2]
        products = _and(torch.cat([p_hi, p_hi[1:]]), torch.cat([g_lo, p_lo]))
        next_generate, next_propagate = g_hi ^ products[:pairs], products[pairs:]
        if blocks % 2:  # the top block passes through
            next_generate = torch.cat([next_generate, generate[blocks - 1:]])
            next_propagate = torch.cat([next_propagate, propagate[blocks - 2:]])
        generate, propagate = next_generate, next_propagate
    return generate[0]


def _to_arithmetic(bits: torch.Tensor, n: int, device: Any) -> torch.Tensor:
    """This party's arithmetic share of the packed XOR-shared ``bits`` (n elements): open ``bits ^ r``
    for a stream bit ``r`` and use its arithmetic shares."""
    from mpcformer.mpc.beaver import session_streams

    pair = session_streams(device).take("b2a", torch.Size([n]))
    opened = BinarySharedTensor.from_shares(bits ^ _pack(pair["r"].numpy()[None].astype(numpy.uint8))[0]).reveal()
    e = _unpack(opened, n)
    share = pair["c"] * (1 - 2 * e)
    if comm.get().get_rank() == 0:
        share += e
    return share


def _window(x: CrypTensor, fraction_bits: int, integer_bits: int) -> tuple[int, int]:
    """(bits dropped, bits kept) of ``x``'s ring elements for a resolution of ``2^-fraction_bits``
    and a range of ``|x| < 2^integer_bits - 2^-fraction_bits`` (real units, whatever ``x``'s precision)."""
    width = fraction_bits + integer_bits + 1
    if fraction_bits < 0 or integer_bits < 1 or width > 32:
        raise ValueError(
            f"a coarse sign keeps 1 + integer_bits + fraction_bits <= 32 bits, integer_bits >= 1 and "
            f"fraction_bits >= 0; got integer_bits={integer_bits}, fraction_bits={fraction_bits}"
        )
    precision = int(round(math.log2(x.encoder.scale)))
    drop = max(precision - fraction_bits, 0)
    if drop + width > 64:  # a wrap of the ring must vanish modulo 2^width
        raise ValueError(f"a coarse sign of a {precision}-bit fixed-point value keeps at most "
                         f"{64 - drop} bits; got integer_bits={integer_bits}, fraction_bits={fraction_bits}")
    return drop, width


def less_than_zero(x: CrypTensor, fraction_bits: int = FRACTION_BITS, integer_bits: int = INTEGER_BITS) -> CrypTensor:
    """``[x < 0]`` as CrypTen's comparisons return it (arithmetic shares of 0/1, scale 1) for
    ``|x| < 2^integer_bits - 2^-fraction_bits``; values in ``[0, 2^-fraction_bits)`` may read 1 (module doc).
    CrypTen's exact comparison where the protocol does not apply."""
    drop, width = _window(x, fraction_bits, integer_bits)
    if getattr(x, "ptype", None) is not None and x.ptype != crypten.mpc.arithmetic:
        raise ValueError("a coarse sign takes arithmetic shares; convert binary ones with .arithmetic() first")
    if not applies(x):
        return x < 0
    rank = comm.get().get_rank()
    flat = x.share.reshape(-1)
    n = flat.numel()
    if n == 0:
        return MPCTensor.from_shares(torch.zeros_like(x.share), precision=0)
    kept = (flat >> drop) & ((1 << width) - 1)  # s_p
    low_bits = width - 1
    mine = _bit_planes(kept, low_bits)
    top = _pack((kept >> low_bits).numpy()[None].astype(numpy.uint8))[0]  # msb(s_p), packed
    sign = _carry(mine, rank) ^ top  # msb(s_0) ^ msb(s_1) ^ carry
    share = _to_arithmetic(sign, n, x.device).view(x.size())
    return MPCTensor.from_shares(share, precision=0)


def maximum(x: CrypTensor, dim: int = -1, fraction_bits: int = FRACTION_BITS, integer_bits: int = INTEGER_BITS) -> CrypTensor:
    """The maximum along ``dim`` (kept, size 1) by a halving tree of :func:`less_than_zero`:
    ceil(log2 n) comparisons and products in a row. Each result is one of the inputs (the
    products by a 0/1 bit are exact); a step may keep the smaller of two values less than
    ``2^-fraction_bits`` apart, so it is at most ``ceil(log2 n) 2^-fraction_bits`` below the true
    maximum: right for shift-invariant uses (softmax), not as a value."""
    dim = dim % x.dim()
    while x.size(dim) > 1:
        n = x.size(dim)
        half = n // 2
        lo, hi = x.narrow(dim, 0, half), x.narrow(dim, half, half)
        larger = lo + less_than_zero(lo - hi, fraction_bits, integer_bits) * (hi - lo)
        x = crypten.cat([larger, x.narrow(dim, 2 * half, 1)], dim=dim) if n % 2 else larger
    return x


def rounds(fraction_bits: int = FRACTION_BITS, integer_bits: int = INTEGER_BITS) -> int:
    """Rounds of one :func:`less_than_zero`: the generate bits, the tree, the conversion."""
    return 1 + math.ceil(math.log2(fraction_bits + integer_bits)) + 1
