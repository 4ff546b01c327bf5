"""Fixed right operands (the owner's weights) opened once under a mask that later products reuse.

**Why.** Beaver's protocol for ``z = x @ W`` takes a triple ``([a], [b], [c = a @ b])`` from the
dealer and opens ``ε = x - a`` and ``δ = W - b``. For a weight matrix ``δ`` is as large as the
weight (bert-base: 109M ring elements per forward, 74% of ``quad+2quad``'s bytes at length 128),
and it is the same matrix in every forward. Keeping ``b`` and ``δ`` from the first opening, each
later product needs only a fresh ``a`` and ``c = a @ b`` from the dealer and opens only ``ε``, the
activation-sized half. SecureML (Mohassel & Zhang, 2017, section 4.2) reuses the mask of a matrix
that enters several products in the same way.

**Security.** ``δ = W - b`` with ``b`` uniform in the ring and used to mask ``W`` alone reveals
nothing about ``W``; every ``ε`` is masked by a fresh ``a``. The dealer (CrypTen's TTP) knows
``a``, ``b`` and ``c`` as for any triple, and never sees ``δ`` or ``ε``. What changes is that ``b``
is drawn once per weight instead of once per product; ``W`` must then never change under the same
mask (a :class:`FixedOperand` is built from a weight and keeps no handle to modify it).

**Protocol** (party ``p``; the dealer mirrors each party's draws from the generator it shares
with that party, as CrypTen's TTP does for every triple):

- register: ``b_p`` from the generator; party 0 asks the dealer ``mpcformer_mask_register(key,
  size)``, which draws every ``b_p`` and keeps ``b = Σ b_p``; open ``δ = W - b`` (one round, once).
- ``x @ W``: ``a_p`` from the generator; party 0 gets ``c_0`` from the dealer
  (``mpcformer_mask_triple(key, size)``: ``c = a @ b``), the others draw ``c_p``; open
  ``ε = x - a`` (one round); ``z_p = c_p + ε @ (b_p + [p = 0] δ) + a_p @ δ``, then the usual
  fixed-point truncation. Two local matmuls per party and one on the dealer, as in
  :mod:`mpcformer.mpc.ring_matmul`'s Beaver step; party 0 sends its request first and collects
  ``c_0`` after its own products, so the dealer's product runs while the parties compute.
- release: ``mpcformer_mask_release(keys)`` frees ``b`` on the dealer.

Used when ``MPCConfig.reuse_weight_masks`` is on (the default) with the TTP dealer on CPU;
otherwise a :class:`FixedOperand` is plain CrypTen (``x.matmul(W)``, a fresh triple per product).
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import torch

from mpcformer.mpc.compat import crypten  # import order: compat first
from crypten import communicator as comm
from crypten.common.rng import generate_random_ring_element
from crypten.mpc import MPCTensor, ptype
from crypten.mpc.primitives import ArithmeticSharedTensor
from crypten.mpc.provider.ttp_provider import TTPClient, TTPServer

from mpcformer.mpc.beaver import ask_dealer, dealer_answer
from mpcformer.mpc.ring_matmul import _dispatch_matmul

__all__ = ["FixedOperand", "release_masks", "enable", "disable"]

log = logging.getLogger(__name__)

CrypTensor = Any  # crypten.mpc.MPCTensor (CrypTen has no type stubs)

_REGISTER, _TRIPLE, _RELEASE = "mpcformer_mask_register", "mpcformer_mask_triple", "mpcformer_mask_release"
_state = {"enabled": False}
_keys = itertools.count()  # per process; only party 0's keys reach the dealer


# -- the dealer's side (methods added to CrypTen's TTPServer) --------------------------------------
def _dealer_masks(server: Any) -> dict[int, torch.Tensor]:
    return server.__dict__.setdefault("_mpcformer_masks", {})


def _dealer_register(server: Any, key: int, size: tuple[int, ...]) -> torch.Tensor:
    """Draw every party's ``b_p`` (mirroring their generators) and keep ``b = Σ b_p``."""
    _dealer_masks(server)[key] = server._get_additive_PRSS(torch.Size(size))
    return torch.zeros(1, dtype=torch.long, device=server.device)  # the TTP loop always answers a tensor


def _dealer_triple(server: Any, key: int, size0: tuple[int, ...]) -> torch.Tensor:
    """Party 0's share of ``c = a @ b`` for a fresh ``a`` and the kept ``b``."""
    b = _dealer_masks(server).get(key)
    if b is None:
        raise RuntimeError(f"the dealer holds no weight mask {key}: was the weight registered in this session?")
    a = server._get_additive_PRSS(torch.Size(size0))
    c = _dispatch_matmul(a, b)
    return c - server._get_additive_PRSS(c.size(), remove_rank=True)


def _dealer_release(server: Any, keys: list[int]) -> torch.Tensor:
    masks = _dealer_masks(server)
    for key in keys:
        masks.pop(key, None)
    return torch.zeros(1, dtype=torch.long, device=server.device)


def enable() -> None:
    """Build :class:`FixedOperand` s with reusable masks; teach the dealer its three requests."""
    TTPServer.mpcformer_mask_register = _dealer_register
    TTPServer.mpcformer_mask_triple = _dealer_triple
    TTPServer.mpcformer_mask_release = _dealer_release
    _state["enabled"] = True


def disable() -> None:
    """New :class:`FixedOperand` s are plain CrypTen again (ones already built keep their mode)."""
    _state["enabled"] = False


def _masks_apply(weight: CrypTensor) -> bool:
    return (
        _state["enabled"]
        and isinstance(weight, MPCTensor)
        and weight.ptype == ptype.arithmetic
        and weight.device.type == "cpu"
        and crypten.cfg.mpc.provider == "TTP"
        and not crypten.cfg.mpc.active_security
    )


# -- the parties' side ------------------------------------------------------------------------------
class FixedOperand:
    """A secret-shared matrix ``W`` (k, n) that is the right operand of many products ``x @ W``.

    Building one opens ``δ = W - b`` once (when masks apply: one round, ``W``'s size in bytes);
    :meth:`rmatmul` then costs one activation-sized opening. Every party builds its operands in
    the same order (as every CrypTen computation). :meth:`release` frees the dealer's copy of
    ``b``; an operand is only valid in the MPC session it was built in.
    """

    def __init__(self, weight: CrypTensor):
        if weight.dim() != 2:
            raise ValueError(f"a fixed operand is a matrix (k, n), got shape {tuple(weight.size())}")
        self.shape = tuple(weight.size())
        self.masked = _masks_apply(weight)
        self.key: int | None = None
        if not self.masked:
            self._weight = weight
            return
        shares = weight._tensor  # ArithmeticSharedTensor
        self.encoder, self.device = shares.encoder, shares.device
        self.rank = comm.get().get_rank()
        self.key = next(_keys)
        generator = TTPClient.get().get_generator(device=self.device)
        b = generate_random_ring_element(self.shape, generator=generator, device=self.device)
        if self.rank == 0:
            TTPClient.get().ttp_request(_REGISTER, self.device, self.key, self.shape)
        self.delta = comm.get().all_reduce(shares.share - b)  # δ = W - b, public from now on
        # Party 0 carries the public ε·δ term: z_0 = c_0 + ε (b_0 + δ) + a_0 δ.
        self._b_share = b + self.delta if self.rank == 0 else b

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
        out_size = torch.Size(size0[:-1] + self.shape[1:])
        generator = TTPClient.get().get_generator(device=self.device)
        a = generate_random_ring_element(size0, generator=generator, device=self.device)
        if self.rank == 0:  # ask now, collect c_0 after the local products: the dealer's runs meanwhile
            ask_dealer(_TRIPLE, self.device, self.key, size0)
        else:
            c = generate_random_ring_element(out_size, generator=generator, device=self.device)
        epsilon = comm.get().all_reduce(x_shares.share - a)  # ε = x - a, uniform
        products = _dispatch_matmul(epsilon, self._b_share)
        products += _dispatch_matmul(a, self.delta)
        if self.rank == 0:
            c = dealer_answer(self.device)
        c += products
        z = ArithmeticSharedTensor.from_shares(c, precision=0)
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
        TTPClient.get().ttp_request(_RELEASE, operands[0].device, keys)
    for op in operands:
        op.key = None
