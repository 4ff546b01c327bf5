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

__all__ = ["FixedOperand", "release_masks"]

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
        if not self.masked:
            return x.matmul(self._weight)
        if self.key is None:
            raise RuntimeError("this fixed operand was released; build it again in the current MPC session")
        x_shares = x._tensor
        if x.ptype != ptype.arithmetic or x_shares.device != self.device:
            raise ValueError(f"x must be arithmetic shares on {self.device}, got {x.ptype.name} on {x_shares.device}")
        size0 = tuple(x_shares.size())
        if size0[-1] != self.shape[0]:
            raise ValueError(f"x @ W: x is {size0}, W is {self.shape}")
        if self.rank == 0:  # ask first: the dealer computes c_0 while party 1's e travels
            ticket = ask_dealer(MASK_TRIPLE, self.device, self.key, size0, size=size0[:-1] + self.shape[1:])
            e = comm.get().recv(torch.empty(size0, dtype=torch.long, device=self.device), src=1)
            z = _dispatch_matmul(x_shares.share + e, self._weight)  # (x_0 + e) @ W
            z += dealer_answer(ticket)
        else:
            generator = TTPClient.get().get_generator(device=self.device)
            a = crypten_rng.generate_random_ring_element(size0, generator=generator, device=self.device)
            c_1 = crypten_rng.generate_random_ring_element(size0[:-1] + self.shape[1:], generator=generator, device=self.device)
            comm.get().send((x_shares.share - a).contiguous(), dst=0)  # e = x_1 - a, uniform
            z = _dispatch_matmul(a, self.delta)
            z += c_1
        z = ArithmeticSharedTensor.from_shares(z, precision=0)
        # Fixed-point bookkeeping exactly as CrypTen's private matmul (arithmetic._arithmetic_function).
        x_scale, w_scale = x_shares.encoder.scale, self.encoder.scale
        z.encoder = x_shares.encoder if x_scale > 1 else self.encoder
        if x_scale > 1 and w_scale > 1:
            z = z.div_(x_scale)
        out = x.shallow_copy()
        out._tensor = z
        return out

    def release(self) -> None:
        """Free the dealer's ``b`` (party 0 sends the request; every party calls this together)."""
        release_masks([self])


def release_masks(operands: list[FixedOperand]) -> None:
    """Free the dealer's masks of ``operands`` in one request (every party calls this together)."""
    keys = [op.key for op in operands if op.masked and op.key is not None]
    if not keys:
        return
    if comm.get().get_rank() == 0:
        TTPClient.get().ttp_request(MASK_RELEASE, operands[0].device, keys)
    for op in operands:
        op.key = None
