"""The owner's weights as right operands of many products ``x @ W``, sent once under a mask.

**Setting.** ``W`` is party 0's own input (the model owner's weight, in plaintext on party 0);
``x`` is secret-shared (``x = x_0 + x_1``). CrypTen's generic Beaver matmul treats ``W`` as
shared too: each product opens ``x - a`` and ``W - b`` both ways, and every party does two or
three local matmuls. Knowing who holds ``W`` and that it never changes, we do less:

**Protocol** (2 parties + CrypTen's TTP dealer; ``g_p`` is the generator party ``p`` shares with
the dealer, which mirrors every draw):

- register, once per weight: party 0 draws ``b`` from ``g_0`` and asks the dealer
  ``mpcformer_mask_register(key, size)`` (the dealer's requests are methods of
  :class:`mpcformer.mpc.dealer.Dealer`) (the dealer draws the same ``b``); party 0 sends
  ``δ = W - b`` to party 1 (one message, weight-sized, one way).
- ``x @ W``: party 1 draws a fresh ``a`` and ``c_1`` from ``g_1`` and sends ``e = x_1 - a`` to
  party 0; its share is ``z_1 = a @ δ + c_1``. Party 0 asks the dealer
  ``mpcformer_mask_triple(key, size)`` for ``c_0 = a @ b - c_1`` (the dealer draws the same ``a``
  and ``c_1``); its share is ``z_0 = (x_0 + e) @ W + c_0``. Then ``z_0 + z_1 = (x - a) @ W +
  a @ (W - b) + a @ b = x @ W``; the usual fixed-point truncation follows.
  One activation-sized message, one way; one local matmul per party and one on the dealer
  (CrypTen: the weight and the activation opened both ways, 2 or 3 matmuls per party).
- ``x @ W`` and ``x * v`` (:meth:`FixedOperand.rmatmul_and_scale`; ``v`` a registered vector of
  party 0's, e.g. a LayerNorm's gamma): the same ``e``, so the same ``a``; the dealer adds
  ``c'_0 = a * b_v - c'_1`` to its answer (party 1 draws ``c'_1`` after ``c_1``), party 0's share
  is ``(x_0 + e) * v + c'_0``, party 1's ``a * (v - b_v) + c'_1``. No byte more than ``x @ W``
  alone: one mask serves products with two operands of one party (each opened once under its own
  mask), as one Beaver mask serves ``x * y`` and ``x * z``.
- release: ``mpcformer_mask_release(keys)`` frees ``b`` on the dealer.

**Security** (semi-honest, no collusion with the dealer, as CrypTen's TTP). Party 1 sees ``δ``,
masked by ``b``, uniform and known only to party 0 and the dealer; reusing ``b`` for many products
reveals nothing more, as ``δ`` is sent once (SecureML, Mohassel & Zhang 2017, section 4.2, reuses a
matrix's mask the same way) and ``W`` never changes under it (an operand keeps no handle to modify
it). Party 0 sees each ``e``, masked by a fresh ``a`` known only to party 1 and the dealer, and
``c_0``, masked by ``c_1``. The dealer sees only sizes. Party 0 learns nothing it did not know:
``W`` is its own.

Used when ``MPCConfig.reuse_weight_masks`` is on (the default) with the TTP dealer, 2 parties, on
CPU; otherwise a :class:`FixedOperand` is plain CrypTen: ``W`` shared by party 0 and
``x.matmul(W)``, a fresh triple per product.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import torch

from mpcformer.mpc.compat import crypten  # import order: compat first
from crypten import communicator as comm
from crypten.common import rng as crypten_rng  # via the module: mpcformer.mpc.prg may replace the draws
from crypten.encoder import FixedPointEncoder
from crypten.mpc import ptype
from crypten.mpc.primitives import ArithmeticSharedTensor
from crypten.mpc.provider.ttp_provider import TTPClient

from mpcformer.mpc import runtime
from mpcformer.mpc.beaver import ask_dealer, dealer_answer
from mpcformer.mpc.dealer import MASK_REGISTER, MASK_RELEASE, MASK_TRIPLE
from mpcformer.mpc.ring_matmul import _dispatch_matmul

__all__ = ["FixedOperand", "rmatmul_all", "release_masks"]

log = logging.getLogger(__name__)

CrypTensor = Any  # crypten.mpc.MPCTensor (CrypTen has no type stubs)

_keys = itertools.count()  # per process; only party 0's keys reach the dealer


def _masks_apply(device: torch.device) -> bool:
    """``MPCConfig.reuse_weight_masks`` in a session of 2 parties with the TTP dealer, on CPU."""
    config = runtime.active_config()
    return config is not None and config.reuse_weight_masks and runtime.holds("ttp-2-parties-cpu", device)


# -- the parties' side ------------------------------------------------------------------------------
class FixedOperand:
    """A matrix ``W`` (k, n) that party 0 holds in plaintext, right operand of many ``x @ W``.

    Party 0 passes ``value`` (float, or integers with ``precision=0``); the other party passes
    ``None`` and the same ``shape``. Building one sends ``δ = W - b`` once (when masks apply: one
    message, ``W``'s size); :meth:`rmatmul` then costs one activation-sized message. Every party
    builds its operands in the same order (as every CrypTen computation). :meth:`release` frees
    the dealer's copy of ``b``; an operand is only valid in the MPC session it was built in.
    ``precision`` (fractional bits) defaults to the session's.
    """

    def __init__(
        self, value: torch.Tensor | None, shape: tuple[int, int], device: torch.device | str = "cpu",
        precision: int | None = None,
    ):
        self.shape, self.device = tuple(shape), torch.device(device)
        self.rank = comm.get().get_rank()
        if len(self.shape) != 2:
            raise ValueError(f"a fixed operand is a matrix (k, n), got shape {self.shape}")
        if (value is not None) != (self.rank == 0):
            raise ValueError("party 0 (the owner) passes the operand's value, the other party None")
        if value is not None and tuple(value.shape) != self.shape:
            raise ValueError(f"value has shape {tuple(value.shape)}, expected {self.shape}")
        self.masked = _masks_apply(self.device)
        self.key: int | None = None
        if not self.masked:
            plain = value if value is not None else torch.zeros(self.shape)
            self._weight = crypten.cryptensor(plain.to(self.device), src=0, precision=precision)
            return
        self.encoder = FixedPointEncoder(precision)
        self.key = next(_keys)
        if self.rank == 0:
            self._weight = self.encoder.encode(value.to(self.device))  # W, int64 (k, n)
            generator = TTPClient.get().get_generator(device=self.device)
            b = crypten_rng.generate_random_ring_element(self.shape, generator=generator, device=self.device)
            TTPClient.get().ttp_request(MASK_REGISTER, self.device, self.key, self.shape)
            comm.get().send((self._weight - b).contiguous(), dst=1)  # δ = W - b
        else:
            self.delta = comm.get().recv(torch.empty(self.shape, dtype=torch.long, device=self.device), src=0)

    def rmatmul(self, x: CrypTensor) -> CrypTensor:
        """``x @ W`` for an encrypted ``x`` (..., k); encrypted (..., n)."""
        return self.rmatmul_and_scale(x, None)[0]

    def rmatmul_and_scale(self, x: CrypTensor, scale: "FixedOperand | None") -> tuple[CrypTensor, CrypTensor | None]:
        """``x @ W`` and, with ``scale`` (an operand of shape (1, k): a vector ``v``), ``x * v``
        elementwise, both from the one message of ``x`` (the same mask ``a``; module doc)."""
        if scale is not None and scale.shape != (1, self.shape[0]):
            raise ValueError(f"x * v: v must have shape (1, {self.shape[0]}), got {scale.shape}")
        if not self.masked:
            return x.matmul(self._weight), None if scale is None else x * scale._weight[0]
        return _masked_products([(x, self, scale)])[0]

    def _check(self, x: CrypTensor) -> tuple[int, ...]:
        """``x``'s share size, after checking that ``x @ W`` can run masked."""
        if self.key is None:
            raise RuntimeError("this fixed operand was released; build it again in the current MPC session")
        x_shares = x._tensor
        if x.ptype != ptype.arithmetic or x_shares.device != self.device:
            raise ValueError(f"x must be arithmetic shares on {self.device}, got {x.ptype.name} on {x_shares.device}")
        size0 = tuple(x_shares.size())
        if size0[-1] != self.shape[0]:
            raise ValueError(f"x @ W: x is {size0}, W is {self.shape}")
        return size0

    @staticmethod
    def _fixed_point(x: CrypTensor, product: torch.Tensor, operand: "FixedOperand") -> CrypTensor:
        """Shares of a product with the operand as an encrypted tensor, scaled as CrypTen's
        private products are (arithmetic._arithmetic_function)."""
        z = ArithmeticSharedTensor.from_shares(product, precision=0)
        x_scale, w_scale = x._tensor.encoder.scale, operand.encoder.scale
        z.encoder = x._tensor.encoder if x_scale > 1 else operand.encoder
        if x_scale > 1 and w_scale > 1:
            z = z.div_(x_scale)
        out = x.shallow_copy()
        out._tensor = z
        return out

    def release(self) -> None:
        """Free the dealer's ``b`` (party 0 sends the request; every party calls this together)."""
        release_masks([self])


def rmatmul_all(xs: list[CrypTensor], operands: list[FixedOperand]) -> list[CrypTensor]:
    """``[x @ W for x, W in zip(xs, operands)]`` with every ``x`` sent in one message (one round
    instead of one each): for products whose inputs are all known at once, e.g. the chunks of a
    one-hot lookup."""
    if not operands or not all(op.masked for op in operands):
        return [op.rmatmul(x) for x, op in zip(xs, operands)]
    return [z for z, _ in _masked_products([(x, op, None) for x, op in zip(xs, operands)])]


def _masked_products(
    items: list[tuple[CrypTensor, FixedOperand, FixedOperand | None]],
) -> list[tuple[CrypTensor, CrypTensor | None]]:
    """The masked step of the module doc for ``items = [(x, operand W, operand v or None), ...]``:
    every ``e = x_1 - a`` in one message; ``[(x @ W, x * v or None), ...]``. Party 0 asks the dealer
    for every item first, in order (it computes while the message travels); party 1 draws each
    item's ``a``, ``c_1`` and ``c'_1`` in the same order, as the dealer does."""
    for _, _, scale in items:
        if scale is not None and scale.key is None:
            raise RuntimeError("this fixed operand was released; build it again in the current MPC session")
    sizes = [op._check(x) for x, op, _ in items]  # x's share sizes
    outputs = [size[:-1] + op.shape[1:] for size, (_, op, _) in zip(sizes, items)]  # x @ W's
    device, rank = items[0][1].device, items[0][1].rank
    if rank == 0:
        tickets = [
            ask_dealer(
                MASK_TRIPLE, device, op.key, size, None if scale is None else scale.key,
                size=(_numel(out) + (0 if scale is None else _numel(size)),),
            )
            for (_, op, scale), size, out in zip(items, sizes, outputs)
        ]
        received = comm.get().recv(torch.empty(sum(map(_numel, sizes)), dtype=torch.long, device=device), src=1)
        shares = []
        for (x, op, scale), e, size, out, ticket in zip(
            items, received.split([_numel(size) for size in sizes]), sizes, outputs, tickets
        ):
            masked_x = x._tensor.share + e.view(size)  # x_0 + e
            c_0 = dealer_answer(ticket)
            z = _dispatch_matmul(masked_x, op._weight) + c_0[: _numel(out)].view(out)  # (x_0 + e) @ W + c_0
            s = None if scale is None else masked_x * scale._weight[0] + c_0[_numel(out):].view(size)
            shares.append((z, s))
    else:
        generator = TTPClient.get().get_generator(device=device)

        def draw(size):
            return crypten_rng.generate_random_ring_element(size, generator=generator, device=device)

        masks = []  # (a, c_1, c'_1 or None) per item, in the dealer's order
        for (_, _, scale), size, out in zip(items, sizes, outputs):
            a, c_1 = draw(size), draw(out)
            masks.append((a, c_1, None if scale is None else draw(size)))
        comm.get().send(torch.cat([(x._tensor.share - a).reshape(-1) for (x, _, _), (a, _, _) in zip(items, masks)]), dst=0)
        shares = [
            # a @ δ + c_1, and a * (v - b_v) + c'_1
            (_dispatch_matmul(a, op.delta) + c_1, None if scale is None else a * scale.delta[0] + c_1_scale)
            for (_, op, scale), (a, c_1, c_1_scale) in zip(items, masks)
        ]
    return [
        (FixedOperand._fixed_point(x, z, op), None if s is None else FixedOperand._fixed_point(x, s, scale))
        for (x, op, scale), (z, s) in zip(items, shares)
    ]


def _numel(size) -> int:
    return torch.Size(size).numel()


def release_masks(operands: list[FixedOperand]) -> None:
    """Free the dealer's masks of ``operands`` in one request (every party calls this together)."""
    keys = [op.key for op in operands if op.masked and op.key is not None]
    if not keys:
        return
    if comm.get().get_rank() == 0:
        TTPClient.get().ttp_request(MASK_RELEASE, operands[0].device, keys)
    for op in operands:
        op.key = None
