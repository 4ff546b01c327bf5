"""The dealer's serving loop: CrypTen's TTP server, answering mpcformer's requests without blocking.

CrypTen's TTP answers every request with its size (a pickled point-to-point message, which gloo
only completes once party 0 has posted the matching receive) and then the tensor (a broadcast).
So the dealer sits idle until party 0 comes to collect, and cannot start on the next request.
mpcformer's requests (:func:`mpcformer.mpc.beaver.ask_dealer`) say that party 0 already knows the
answer's size (``"reply": "broadcast"``): the dealer starts the broadcast asynchronously (gloo
completes a broadcast without waiting for the receiver) and serves the next request at once.
Requests without the mark (CrypTen's own ``ttp_request``) get CrypTen's reply. Party 0 collects
answers in the order it asked (:mod:`mpcformer.mpc.beaver`), so the two kinds never cross.
"""

from __future__ import annotations

import collections
import logging
from typing import Any

import torch
import torch.distributed as dist

from mpcformer.mpc.compat import crypten
from crypten import communicator as comm
from crypten.mpc.provider.ttp_provider import TTPServer

from mpcformer.mpc import keys

__all__ = ["Dealer", "REPLY_KEY", "BROADCAST_REPLY"]

log = logging.getLogger(__name__)

REPLY_KEY, BROADCAST_REPLY = "reply", "broadcast"
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
        try:
            self.serve()
        except RuntimeError as err:  # a party left: CrypTen's server shuts down the same way
            log.info("dealer shutting down: %s", err)

    def _setup_generators(self) -> None:
        """A fresh 128-bit OS key per party (:mod:`mpcformer.mpc.keys`); CrypTen's seeds only in the
        insecure baseline."""
        if keys.is_installed():
            keys.dealer_setup(self)
        else:
            super()._setup_generators()

    def serve(self) -> None:
        ttp_rank = comm.get().get_ttp_rank()
        while True:
            message = comm.get().recv_obj(0, self.ttp_group)
            if message == "terminate":  # party 0 collected every answer before saying so
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
