"""``x * s(mean(x^2))`` with one opening of ``x``: LayerNorm's ``(x - mean) / sqrt(var)``.

CrypTen computes ``x.square()`` (it opens ``x - r``) and then ``x * s`` (it opens ``x - a`` and
``s - b``): a whole activation opened twice. One mask serves both products. The dealer shares a
mask ``r`` like ``x``, a mask ``b`` with one element per row, and ``r^2`` and ``r * b``; the parties
open ``e = x - r`` once, and later ``f = s - b`` (one element per row):

- ``x^2 = e^2 + 2 e r + r^2``;
- ``x * s = e f + e b + r f + r b`` (``f`` and ``b`` broadcast along the row).

The same rounds as CrypTen's two products, and ``x``'s size fewer elements each way.

**Draws** (as :mod:`mpcformer.mpc.fixed_operand`'s, ``g_p`` the generator party ``p`` shares with
the dealer): party 0 draws ``r_0`` and ``b_0`` from ``g_0`` and asks the dealer
``mpcformer_row_factor_triple(size)``; party 1 draws ``r_1``, ``b_1``, ``c_1`` (for ``r^2``) and
``c'_1`` (for ``r b``) from ``g_1``; the dealer draws the same, and answers party 0's
``r^2 - c_1`` and ``r b - c'_1`` (overlapped with the opening of ``e``).

**Security** (semi-honest, as CrypTen's TTP). ``e`` is uniform: ``r`` is fresh and masks one value,
``x``, opened once; ``f`` is uniform for the same reason. Using ``e`` in two products is Beaver's
own mask reuse (one opening of ``x`` serves ``x * x`` and ``x * s`` as it serves ``x * y`` and
``x * z``). Party 0's dealer values are masked by party 1's ``c``; the dealer sees only sizes.

Used when ``MPCConfig.reuse_activation_masks`` is on (the default) with the TTP dealer, 2 parties,
on CPU; otherwise CrypTen's ``x * s(x.square().mean(-1))``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from mpcformer.mpc.compat import crypten  # noqa: F401  (import order: compat first)
from crypten import communicator as comm
from crypten.common import rng as crypten_rng  # via the module: mpcformer.mpc.prg may replace the draws
from crypten.mpc.primitives import ArithmeticSharedTensor
from crypten.mpc.provider.ttp_provider import TTPClient

from mpcformer.mpc import runtime
from mpcformer.mpc.beaver import ask_dealer, dealer_answer
from mpcformer.mpc.dealer import ROW_FACTOR_TRIPLE

__all__ = ["times_row_factor", "dealer_values"]

CrypTensor = Any  # crypten.mpc.MPCTensor (CrypTen has no type stubs)


def _applies(device: Any) -> bool:
    config = runtime.active_config()
    return config is not None and config.reuse_activation_masks and runtime.holds("ttp-2-parties-cpu", device)


def _draws(generator: Any, size: torch.Size, rows: torch.Size, device: Any, roles: str) -> list[torch.Tensor]:
    """The ring elements a party (or the dealer, mirroring it) draws: ``roles`` in order, r/c like x, b per row."""
    return [
        crypten_rng.generate_random_ring_element(rows if role == "b" else size, generator=generator, device=device)
        for role in roles
    ]


def dealer_values(generators: list[Any], size: tuple[int, ...], device: Any) -> torch.Tensor:
    """The dealer's answer to party 0: ``r^2 - c_1`` then ``r b - c'_1``, flattened."""
    size = torch.Size(size)
    rows = size[:-1] + (1,)
    r_0, b_0 = _draws(generators[0], size, rows, device, "rb")
    r_1, b_1, c_1, c_1b = _draws(generators[1], size, rows, device, "rbcc")
    r, b = r_0 + r_1, b_0 + b_1
    return torch.cat([(r * r - c_1).view(-1), (r * b - c_1b).view(-1)])


def times_row_factor(x: CrypTensor, factor_of: Callable[[CrypTensor], CrypTensor]) -> CrypTensor:
    """``x * factor_of(mean(x^2, -1))`` for an encrypted ``x`` (..., H); ``factor_of`` maps the
    (..., 1) mean squares to (..., 1) factors (e.g. LayerNorm's ``1 / sqrt(var + eps)``)."""
    shares = x._tensor
    if not _applies(shares.device):
        return x * factor_of(x.square().mean(-1, keepdim=True))
    device, size = shares.device, shares.size()
    rows, n = size[:-1] + (1,), size.numel()
    rank = comm.get().get_rank()
    generator = TTPClient.get().get_generator(device=device)
    if rank == 0:  # ask first: the dealer computes while e is opened
        r, b = _draws(generator, size, rows, device, "rb")
        ticket = ask_dealer(ROW_FACTOR_TRIPLE, device, tuple(size), size=(2 * n,))
    else:
        r, b, c_sq, c_rb = _draws(generator, size, rows, device, "rbcc")
    e = ArithmeticSharedTensor.from_shares(shares.share - r, precision=0).reveal()  # x - r, uniform
    if rank == 0:
        answer = dealer_answer(ticket)
        c_sq, c_rb = answer[:n].view(size), answer[n:].view(size)
    square = 2 * e * r + c_sq  # x^2 = e^2 + 2 e r + r^2: party 0 adds e^2
    if rank == 0:
        square += e * e
    factor = factor_of(_as_product(x, square).mean(-1, keepdim=True))  # (..., 1)
    if factor._tensor.encoder.scale != shares.encoder.scale:
        raise ValueError("the row factor must have x's fixed-point scale")
    f = ArithmeticSharedTensor.from_shares(factor._tensor.share - b, precision=0).reveal()  # s - b, uniform
    product = e * b + r * f + c_rb  # x s = e f + e b + r f + r b: party 0 adds e f
    if rank == 0:
        product += e * f
    return _as_product(x, product)


def _as_product(x: CrypTensor, product: torch.Tensor) -> CrypTensor:
    """Shares of a product of ``x`` with a value of ``x``'s scale, truncated back to that scale (as
    CrypTen's ``square`` and ``mul``)."""
    z = ArithmeticSharedTensor.from_shares(product, precision=0)
    z.encoder = x._tensor.encoder
    z = z.div_(x._tensor.encoder.scale)
    out = x.shallow_copy()
    out._tensor = z
    return out
