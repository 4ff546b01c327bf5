"""mpcformer's Beaver steps with CrypTen's TTP dealer: the dealer's round trip off the critical
path, and fewer local matmuls.

CrypTen's protocols (``crypten/mpc/primitives/beaver.py``) first take a triple from the provider,
then open the masked inputs. With the TTP dealer, party 0 gets its share of the triple's product
from the dealer (a request, then an answer) *before* the opening starts, so every product waits
for two exchanges in a row, although the opening never uses that share. Here:

1. **Overlap** (``MPCConfig.overlap_dealer``): party 0 draws its masks (the generator it shares
   with the dealer), *sends* the request, opens the masked inputs with the other parties, and only
   then receives its share; the dealer computes while the parties exchange. The same messages, the
   same bytes and rounds, the same values: only the order in which party 0 waits changes. For
   ``mul``, ``matmul`` (Beaver), ``square``, ``AND`` (the binary triples of every comparison) and
   ``B2A_single_bit``.
2. **Fewer matmuls** (``MPCConfig.fast_matmul``): step 4 for matmul, ``z = c + ε·b + a·δ + ε·δ``
   (``ε·δ`` public, added by party 0), is computed as ``c + ε·(b + δ) + a·δ`` on party 0 and
   ``c + ε·b + a·δ`` elsewhere: 2 local matmuls instead of 3, the same ring element. The parties
   other than 0 take the size of ``c`` from a meta tensor instead of computing ``a @ b`` for it.

3. **Triple streams** (``MPCConfig.stream_triples``): a same-shape ``mul``, a ``square``, an ``AND``
   of equal shapes and ``B2A_single_bit`` take their triple from :mod:`mpcformer.mpc.triple_stream`
   (keystreams the parties derive themselves; party 0's ``c_0`` in ranges asked for ahead), so
   they do not talk to the dealer at all.

Party 0's requests (:func:`ask_dealer`) carry the size of their answer, which the dealer
(:mod:`mpcformer.mpc.dealer`) then broadcasts at once; they are sent without waiting and their
answers received in the order asked (:class:`DealerTicket`), CrypTen's own ``ttp_request`` after
every earlier answer. Everything else (the TFP dealer, active security, CUDA tensors,
convolutions) runs CrypTen's own protocol. The session's runtime (patches ``beaver`` of
:mod:`mpcformer.mpc.runtime`) puts these functions in place of CrypTen's and reads the switches
from the session's config; with all three switches off CrypTen runs exactly as shipped (the
benchmarks' baseline).
"""

from __future__ import annotations

import collections
import functools
import logging
import pickle
from dataclasses import dataclass
from typing import Any, Callable

import numpy
import torch
import torch.distributed as dist

from mpcformer.mpc.compat import crypten  # import order: compat first
from crypten import communicator as comm
from crypten.communicator.communicator import _logging
from crypten.common import rng as crypten_rng  # via the module: mpcformer.mpc.prg may replace the draws
from crypten.mpc.primitives import ArithmeticSharedTensor, BinarySharedTensor
from crypten.mpc.primitives import beaver as crypten_beaver
from crypten.mpc.provider.ttp_provider import TrustedThirdParty, TTPClient

from mpcformer.mpc import prg, runtime, tap
from mpcformer.mpc.dealer import BROADCAST_REPLY, REPLY_KEY, STREAM_RANGE
from mpcformer.mpc.ring_matmul import _dispatch_matmul
from mpcformer.mpc.session import on_clean_leave, on_session_close, session_generation
from mpcformer.mpc.triple_stream import PartyStreams

__all__ = [
    "beaver_protocol", "square", "and_", "b2a_single_bit", "request_after_drain", "ttp_provider",
    "ask_dealer", "dealer_answer", "drain", "DealerTicket", "ttp_on_cpu", "session_streams",
]

log = logging.getLogger(__name__)

Shares = Any  # ArithmeticSharedTensor | BinarySharedTensor (CrypTen has no type stubs)

#: CrypTen's protocol functions this module stands in for (taken before any session patches them).
_CRYPTEN = {name: getattr(crypten_beaver, name) for name in ("__beaver_protocol", "square", "AND", "B2A_single_bit")}


@dataclass
class _Streams:
    party_streams: PartyStreams | None = None
    of: tuple = ()  # (session, device) the streams belong to


_STREAMS = _Streams()


def _switches() -> Any:
    """The open session's :class:`~mpcformer.mpc.config.MPCConfig` (these functions only run in one)."""
    return runtime.active_config()


# -- talking to the dealer (party 0) -------------------------------------------------------------
class DealerTicket:
    """An answer party 0 asked the dealer for and has not received yet (``size``: its shape)."""

    def __init__(self, device: Any, size: torch.Size, sending: list[Any]):
        self.device, self.size = device, torch.Size(size)
        self.sending = sending  # the request's sends (and their tensors) until they complete
        self.answer: torch.Tensor | None = None


def send_obj(self: Any, obj: Any, dst: int, group: Any = None) -> list[Any]:
    """CrypTen's ``send_obj`` that does not wait: gloo completes a send only once the receiver
    has posted its receive, and the dealer may still be busy. Returns the sends to wait on."""
    buf = pickle.dumps(obj)
    size = torch.tensor(len(buf), dtype=torch.int32)
    data = torch.from_numpy(numpy.frombuffer(buf, dtype=numpy.int8).copy())
    return [(dist.isend(size, dst=dst, group=group), size), (dist.isend(data, dst=dst, group=group), data)]


# Counted by CrypTen and reported to the tap as the send_obj it stands for (bytes, dealer requests).
_send_obj_without_waiting = tap.tapped(_logging(send_obj))


#: Party 0's tickets in the order it asked; the dealer answers in that order.
_unanswered: collections.deque[DealerTicket] = collections.deque()
# A session left mid-product (a peer failed) must not hand its tickets to the next one.
on_session_close(_unanswered.clear)


def ask_dealer(function: str, device: Any, *args: Any, size: torch.Size) -> DealerTicket:
    """First half of CrypTen's ``TTPClient.ttp_request`` (party 0 only): send the request, saying
    that party 0 knows the answer's ``size``, so the dealer answers without waiting for it."""
    message = {"function": function, "device": str(device), "args": args, "kwargs": {}, REPLY_KEY: BROADCAST_REPLY}
    sending = _send_obj_without_waiting(comm.get(), message, comm.get().get_ttp_rank(), TTPClient.get().ttp_group)
    ticket = DealerTicket(device, size, sending)
    _unanswered.append(ticket)
    return ticket


def dealer_answer(ticket: DealerTicket) -> torch.Tensor:
    """Second half: receive the answers up to this ticket's, in the order they were asked."""
    while ticket.answer is None:
        _receive(_unanswered.popleft())
    return ticket.answer


def drain() -> None:
    """Receive every answer still on its way (before a CrypTen-style request, or leaving)."""
    while _unanswered:
        _receive(_unanswered.popleft())


# A clean leave collects them first (the range party 0 prefetched): the dealer, still sending,
# must not find the connection closed, and every answer it sent is then received.
on_clean_leave(drain)


def _receive(ticket: DealerTicket) -> None:
    for work, _ in ticket.sending:
        work.wait()
    answer = torch.empty(ticket.size, dtype=torch.long, device=ticket.device)
    comm.get().broadcast(answer, comm.get().get_ttp_rank(), TTPClient.get().comm_group)
    ticket.answer = answer


def request_after_drain(ttp_request: Callable, config: Any = None) -> Callable:
    """CrypTen's ``ttp_request`` method, once the answers already asked for are in (they come first)."""

    @functools.wraps(ttp_request)
    def after_drain(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        drain()
        return ttp_request(self, *args, **kwargs)

    return after_drain


def _ask_or_draw(function: str, args: tuple, size: torch.Size, draw: Callable[[torch.Size], torch.Tensor], device: Any):
    """Party 0 asks the dealer (a :class:`DealerTicket`, collected by :func:`_collect`); the others draw."""
    if comm.get().get_rank() == 0:
        ticket = ask_dealer(function, device, *args, size=size)
        return ticket if _switches().overlap_dealer else dealer_answer(ticket)  # no overlap: wait now, as CrypTen
    return draw(size)


def _collect(share: torch.Tensor | DealerTicket) -> torch.Tensor:
    return dealer_answer(share) if isinstance(share, DealerTicket) else share


def _streams(device: Any) -> PartyStreams | None:
    """The session's triple streams for elementwise triples (``stream_triples``), where they apply."""
    return session_streams(device) if _switches().stream_triples else None


def session_streams(device: Any) -> PartyStreams | None:
    """This party's triple streams for the open session, every kind, where they can run (2 parties,
    TTP, CPU, the dealer's generator keyed by an OS key); ``None`` elsewhere."""
    if not runtime.holds("ttp-2-parties-cpu", device):
        return None
    of = (session_generation(), str(device))
    if _STREAMS.party_streams is None or _STREAMS.of != of:
        key = prg.generator_key(TTPClient.get().get_generator(device=device))
        if key is None:  # CrypTen's own seeds (the insecure baseline): CrypTen's protocols
            return None

        def ask(kind: str, start: int, count: int) -> DealerTicket:
            return ask_dealer(STREAM_RANGE, device, kind, start, count, size=torch.Size([count]))

        _STREAMS.party_streams = PartyStreams(comm.get().get_rank(), key, device, ask, dealer_answer)
        _STREAMS.of = of
    return _STREAMS.party_streams


def ttp_on_cpu(device: Any) -> bool:
    """Whether mpcformer's own steps may run: CrypTen's TTP dealer, CPU tensors, no active security
    (CrypTen's own protocols run otherwise)."""
    return runtime.holds("ttp-cpu", device)


def _product_size(op: str, size0: torch.Size, size1: torch.Size, *args: Any, **kwargs: Any) -> torch.Size:
    """Size of ``op(a, b)`` for operands of these sizes, from meta tensors (no arithmetic)."""
    meta0, meta1 = torch.empty(size0, device="meta"), torch.empty(size1, device="meta")
    return getattr(torch, op)(meta0, meta1, *args, **kwargs).size()


def _ring(generator: torch.Generator, device: Any) -> Callable[[torch.Size], torch.Tensor]:
    return lambda size: crypten_rng.generate_random_ring_element(size, generator=generator, device=device)


def _bits(generator: torch.Generator, device: Any, bitlength: int | None = None) -> Callable[[torch.Size], torch.Tensor]:
    return lambda size: crypten_rng.generate_kbit_random_tensor(size, bitlength=bitlength, generator=generator, device=device)


# -- the protocols -------------------------------------------------------------------------------
# Every party draws from its generator in CrypTen's order (the dealer mirrors those draws).
def beaver_protocol(op: str, x: Shares, y: Shares, *args: Any, **kwargs: Any) -> Shares:
    """CrypTen's ``__beaver_protocol`` for ``mul`` and ``matmul`` (module doc, points 1 and 2)."""
    switches = _switches()
    fewer_matmuls = switches.fast_matmul
    streams = _streams(x.device) if op == "mul" and x.size() == y.size() else None
    ours = streams or switches.overlap_dealer and op in ("mul", "matmul") or fewer_matmuls and op == "matmul"
    if not ours or args or kwargs or not ttp_on_cpu(x.device):
        return _CRYPTEN["__beaver_protocol"](op, x, y, *args, **kwargs)
    if x.device != y.device:
        raise ValueError(f"x lives on device {x.device} but y on device {y.device}")
    device, rank = x.device, comm.get().get_rank()
    if streams is not None:
        triple = streams.take("mul", x.size())
        a, b, c = triple["a"], triple["b"], triple["c"]
    else:
        ring = _ring(TTPClient.get().get_generator(device=device), device)
        a, b = ring(x.size()), ring(y.size())
        c = _ask_or_draw("additive", (x.size(), y.size(), op), _product_size(op, x.size(), y.size()), ring, device)
    a, b = ArithmeticSharedTensor.from_shares(a, precision=0), ArithmeticSharedTensor.from_shares(b, precision=0)
    with crypten_beaver.IgnoreEncodings([a, b, x, y]):
        epsilon, delta = ArithmeticSharedTensor.reveal_batch([x - a, y - b])
    product = _dispatch_matmul if op == "matmul" else torch.mul
    if op == "matmul" and not fewer_matmuls:  # CrypTen's three products
        z = product(epsilon, b.share) + product(a.share, delta)
        if rank == 0:
            z += product(epsilon, delta)
    else:
        b_share = b.share + delta if rank == 0 else b.share  # party 0 carries the public ε·δ
        z = product(epsilon, b_share)
        z += product(a.share, delta)
    z += _collect(c)
    return ArithmeticSharedTensor.from_shares(z, precision=0)


def square(x: Shares) -> Shares:
    """CrypTen's ``square``: ``[r]``, ``[r²]`` from the dealer, open ``x - r``."""
    streams = _streams(x.device)
    if not (_switches().overlap_dealer or streams) or not ttp_on_cpu(x.device):
        return _CRYPTEN["square"](x)
    if streams is not None:
        pair = streams.take("square", x.size())
        r, r2 = pair["r"], pair["c"]
    else:
        ring = _ring(TTPClient.get().get_generator(device=x.device), x.device)
        r = ring(x.size())
        r2 = _ask_or_draw("square", (x.size(),), x.size(), ring, x.device)
    r = ArithmeticSharedTensor.from_shares(r, precision=0)
    with crypten_beaver.IgnoreEncodings([x, r]):
        epsilon = (x - r).reveal()
    r2 = ArithmeticSharedTensor.from_shares(_collect(r2), precision=0)
    return r2 + 2 * r * epsilon + epsilon * epsilon


def and_(x: Shares, y: Shares) -> Shares:
    """CrypTen's ``AND`` (binary Beaver triple), the step of every comparison's adder circuit."""
    streams = _streams(x.device) if x.size() == y.size() else None
    if not (_switches().overlap_dealer or streams) or not ttp_on_cpu(x.device):
        return _CRYPTEN["AND"](x, y)
    if streams is not None:
        triple = streams.take("and", x.size())
        a, b, c = triple["a"], triple["b"], triple["c"]
    else:
        bits = _bits(TTPClient.get().get_generator(device=x.device), x.device)
        a, b = bits(x.size()), bits(y.size())
        c = _ask_or_draw("binary", (x.size(), y.size()), torch.broadcast_shapes(x.size(), y.size()), bits, x.device)
    a, b = BinarySharedTensor.from_shares(a), BinarySharedTensor.from_shares(b)
    epsilon, delta = BinarySharedTensor.reveal_batch([x ^ a, y ^ b])
    c = BinarySharedTensor.from_shares(_collect(c))
    return (b & epsilon) ^ (a & delta) ^ (epsilon & delta) ^ c


def b2a_single_bit(x_bits: Shares) -> Shares:
    """CrypTen's ``B2A_single_bit``: a shared random bit in both forms, open ``x ^ r``."""
    if comm.get().get_world_size() < 2 or not ttp_on_cpu(x_bits.device):
        return _CRYPTEN["B2A_single_bit"](x_bits)
    streams = _streams(x_bits.device)
    if streams is not None:
        pair = streams.take("b2a", x_bits.size())
        r_bits, r_arith = pair["r"], pair["c"]
    elif _switches().overlap_dealer:
        generator = TTPClient.get().get_generator(device=x_bits.device)
        r_bits = _bits(generator, x_bits.device, bitlength=1)(x_bits.size())
        r_arith = _ask_or_draw("B2A", (x_bits.size(),), x_bits.size(), _ring(generator, x_bits.device), x_bits.device)
    else:
        return _CRYPTEN["B2A_single_bit"](x_bits)
    z = (x_bits ^ BinarySharedTensor.from_shares(r_bits)).reveal()
    r_arith = ArithmeticSharedTensor.from_shares(_collect(r_arith), precision=0)
    return r_arith * (1 - 2 * z) + z


# -- CrypTen's triple provider -----------------------------------------------------------------------
class _TrustedThirdParty(TrustedThirdParty):
    """CrypTen's TTP provider whose additive triples (for the products that still take CrypTen's
    protocol, e.g. convolutions) are sized on meta tensors by the parties other than 0."""

    def generate_additive_triple(self, size0, size1, op, device=None, *args, **kwargs):
        if device is not None and torch.device(device).type != "cpu":
            return super().generate_additive_triple(size0, size1, op, device, *args, **kwargs)
        ring = _ring(TTPClient.get().get_generator(device=device), device)
        a, b = ring(size0), ring(size1)
        if comm.get().get_rank() == 0:
            c = TTPClient.get().ttp_request("additive", device, size0, size1, op, *args, **kwargs)
        else:
            c = ring(_product_size(op, size0, size1, *args, **kwargs))
        return tuple(ArithmeticSharedTensor.from_shares(t, precision=0) for t in (a, b, c))


def ttp_provider(original: Any = None, config: Any = None) -> TrustedThirdParty:
    """The TTP provider registered with CrypTen while ``fast_matmul`` is on (a runtime patch)."""
    return _TrustedThirdParty()
