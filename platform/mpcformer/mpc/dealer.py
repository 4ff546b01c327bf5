"""The dealer's serving loop: CrypTen's TTP server, answering mpcformer's requests without blocking.

CrypTen's TTP answers every request with its size (a pickled point-to-point message, which gloo
only completes once party 0 has posted the matching receive) and then the tensor (a broadcast).
So the dealer sits idle until party 0 comes to collect, and cannot start on the next request.
mpcformer's requests (:func:`mpcformer.mpc.beaver.ask_dealer`) say that party 0 already knows the
answer's size (``"reply": "broadcast"``): the dealer starts the broadcast asynchronously (gloo
completes a broadcast without waiting for the receiver) and serves the next request at once.
Requests without the mark (CrypTen's own ``ttp_request``) get CrypTen's reply. Party 0 collects
answers in the order it asked (:mod:`mpcformer.mpc.beaver`), so the two kinds never cross.

mpcformer's own requests are methods of :class:`Dealer`: :data:`STREAM_RANGE` (the dealer's side of
:mod:`mpcformer.mpc.triple_stream`) and the three weight-mask requests of
:mod:`mpcformer.mpc.fixed_operand` (:data:`MASK_REGISTER`, :data:`MASK_TRIPLE`, :data:`MASK_RELEASE`), and
:data:`ROW_FACTOR_TRIPLE` (:mod:`mpcformer.mpc.row_factor`).
"""

from __future__ import annotations

import collections
import logging
from typing import Any

import torch
import torch.distributed as dist

from mpcformer.mpc.compat import crypten
from crypten import communicator as comm
from crypten.common import rng as crypten_rng  # via the module: the runtime may replace the draws
from crypten.mpc.provider.ttp_provider import TTPServer

from mpcformer.mpc import keys, prg, runtime
from mpcformer.mpc.ring_matmul import _dispatch_matmul
from mpcformer.mpc.triple_stream import dealer_chunk

__all__ = [
    "Dealer", "REPLY_KEY", "BROADCAST_REPLY", "STREAM_RANGE", "MASK_REGISTER", "MASK_TRIPLE", "MASK_RELEASE",
    "ROW_FACTOR_TRIPLE",
]

log = logging.getLogger(__name__)

REPLY_KEY, BROADCAST_REPLY = "reply", "broadcast"
#: mpcformer's requests: the names of the :class:`Dealer` methods that answer them.
STREAM_RANGE = "mpcformer_stream_range"
MASK_REGISTER, MASK_TRIPLE, MASK_RELEASE = "mpcformer_mask_register", "mpcformer_mask_triple", "mpcformer_mask_release"
ROW_FACTOR_TRIPLE = "mpcformer_row_factor_triple"
#: Answers in flight at once; beyond that the dealer waits for the oldest (bounds its memory).
MAX_IN_FLIGHT = 64


class Dealer(TTPServer):
    """CrypTen's ``TTPServer`` (same functions) with OS keys for its generators and the loop above."""

    def __init__(self) -> None:  # CrypTen's set-up, then our loop instead of its own
        crypten.init()
        self.ttp_group = comm.get().ttp_group
        self.comm_group = comm.get().ttp_comm_group
        self.device = "cpu"
        self._setup_generators()
        self._in_flight: collections.deque[tuple[Any, torch.Tensor]] = collections.deque()
        self._masks: dict[int, torch.Tensor] = {}  # party 0's weight masks b, by key
        try:
            self.serve()
        except RuntimeError as err:  # a party left: CrypTen's server shuts down the same way
            log.info("dealer shutting down: %s", err)

    def _setup_generators(self) -> None:
        """A fresh 128-bit OS key per party (:mod:`mpcformer.mpc.keys`); CrypTen's seeds only in the
        insecure baseline."""
        if runtime.applied("keys"):
            keys.dealer_setup(self)
        else:
            super()._setup_generators()

    # -- mpcformer's requests (named by the constants above) -------------------------------------
    def mpcformer_stream_range(self, kind: str, start: int, count: int) -> torch.Tensor:
        """Party 0's values of a range of a triple stream (:mod:`mpcformer.mpc.triple_stream`)."""
        return dealer_chunk([prg.generator_key(g) for g in self._get_generators(device="cpu")], kind, start, count)

    def mpcformer_mask_register(self, key: int, size: tuple[int, ...]) -> torch.Tensor:
        """Draw party 0's weight mask ``b`` (mirroring its generator) and keep it
        (:mod:`mpcformer.mpc.fixed_operand`)."""
        generator = self._get_generators(device=self.device)[0]
        self._masks[key] = crypten_rng.generate_random_ring_element(torch.Size(size), generator=generator, device=self.device)
        return torch.zeros(1, dtype=torch.long, device=self.device)  # the loop always answers a tensor

    def mpcformer_mask_triple(self, key: int, size0: tuple[int, ...], scale_key: int | None = None) -> torch.Tensor:
        """Party 0's ``c_0 = a @ b - c_1`` for party 1's fresh ``a`` and ``c_1`` (mirroring its generator),
        flattened; with ``scale_key`` (a vector's mask ``b_v``) followed by ``a * b_v - c'_1``."""
        b, b_v = (self._mask(k) for k in (key, scale_key))
        generator = self._get_generators(device=self.device)[1]
        a = crypten_rng.generate_random_ring_element(torch.Size(size0), generator=generator, device=self.device)
        c = _dispatch_matmul(a, b)
        c -= crypten_rng.generate_random_ring_element(c.size(), generator=generator, device=self.device)
        if b_v is None:
            return c.view(-1)
        c_v = a * b_v[0] - crypten_rng.generate_random_ring_element(a.size(), generator=generator, device=self.device)
        return torch.cat([c.view(-1), c_v.view(-1)])

    def _mask(self, key: int | None) -> torch.Tensor | None:
        if key is None:
            return None
        if key not in self._masks:
            raise RuntimeError(f"the dealer holds no weight mask {key}: was the weight registered in this session?")
        return self._masks[key]

    def mpcformer_row_factor_triple(self, size: tuple[int, ...]) -> torch.Tensor:
        """Party 0's values for one ``x * s(mean(x^2))`` (:mod:`mpcformer.mpc.row_factor`)."""
        from mpcformer.mpc.row_factor import dealer_values  # on use: it imports this module

        return dealer_values(self._get_generators(device=self.device), size, self.device)

    def mpcformer_mask_release(self, keys: list[int]) -> torch.Tensor:
        """Forget the weight masks ``keys``."""
        for key in keys:
            self._masks.pop(key, None)
        return torch.zeros(1, dtype=torch.long, device=self.device)

    # -- the loop -------------------------------------------------------------------------------
    def serve(self) -> None:
        ttp_rank = comm.get().get_ttp_rank()
        while True:
            message = comm.get().recv_obj(0, self.ttp_group)
            if message == "terminate":  # party 0 collected every answer before saying so (a clean leave)
                self._in_flight.clear()
                return
            self.device = message["device"]
            result = getattr(self, message["function"])(*message["args"], **message["kwargs"])
            if message.get(REPLY_KEY) == BROADCAST_REPLY:
                work = dist.broadcast(result, ttp_rank, group=self.comm_group, async_op=True)
                self._in_flight.append((work, result))  # the tensor must outlive the send
                while len(self._in_flight) > MAX_IN_FLIGHT:
                    self._in_flight.popleft()[0].wait()
            else:  # CrypTen's reply: the size, then the tensor
                comm.get().send_obj(result.size(), 0, self.ttp_group)
                comm.get().broadcast(result, ttp_rank, self.comm_group)
