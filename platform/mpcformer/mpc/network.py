"""Network profiles for the multi-party simulation, applied two ways:

- **analytic** projection from measured counts: ``time = compute + rounds * rtt + bytes * 8 / bandwidth``;
- **emulation**: a communicator tap that makes each party really wait ``rtt + bytes * 8 / bandwidth``
  after every party-to-party exchange.

**The dealer is online.** CrypTen's TTP answers party 0's requests during the forward, over a
link of its own; both forms give it the profile's link too. With ``MPCConfig.overlap_dealer`` (the
default, :mod:`mpcformer.mpc.beaver`) party 0 sends each request before the opening and reads the
answer after it, so the answer travels while the parties exchange: the projection charges the
dealer nothing (it assumes each answer arrives within the opening it overlaps), and the emulation
delays an answer only until ``request time + rtt + answer bytes * 8 / bandwidth``, which the
opening's own wait has usually passed. Without overlap each request waits its answer before the
opening: ``requests * rtt + dealer bytes * 8 / bandwidth`` more, in both forms.
"""

from __future__ import annotations

import collections
import time
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from mpcformer.config import StrictModel
from mpcformer.errors import UserError

if TYPE_CHECKING:  # the tap imports crypten (and torch): keep this module light for the CLI
    from mpcformer.mpc import tap

__all__ = ["NetworkProfile", "PROFILES", "resolve_profile", "project_latency", "dealer_terms", "NetworkEmulator"]


class NetworkProfile(StrictModel):
    """A link between parties: bandwidth in bits/s and round-trip time in seconds."""

    name: str = "custom"
    bandwidth_bps: float = Field(gt=0, description="bits per second")
    rtt_s: float = Field(ge=0, description="round-trip time in seconds")
    mode: Literal["analytic", "emulate"] = "analytic"

    def comm_seconds(self, rounds: float, nbytes: float) -> float:
        """Time the link adds for ``rounds`` exchanges carrying ``nbytes`` bytes."""
        return rounds * self.rtt_s + nbytes * 8.0 / self.bandwidth_bps


PROFILES: dict[str, NetworkProfile] = {
    "lan": NetworkProfile(name="lan", bandwidth_bps=10e9, rtt_s=0.1e-3),
    "wan": NetworkProfile(name="wan", bandwidth_bps=100e6, rtt_s=40e-3),
}


def resolve_profile(spec: str) -> NetworkProfile:
    """``lan``, ``wan`` or ``custom:<bandwidth Mbit/s>:<rtt ms>`` (e.g. ``custom:1000:5``)."""
    if spec in PROFILES:
        return PROFILES[spec]
    if spec.startswith("custom:"):
        try:
            _, mbps, rtt_ms = spec.split(":")
            return NetworkProfile(name=spec, bandwidth_bps=float(mbps) * 1e6, rtt_s=float(rtt_ms) / 1e3)
        except ValueError:
            pass
    raise UserError(f"unknown network profile {spec!r}; use lan, wan or custom:<Mbit/s>:<rtt ms> (e.g. custom:1000:5)")


def project_latency(
    compute_s: float, rounds: float, nbytes: float, profile: NetworkProfile,
    dealer_waits: float = 0, dealer_bytes: float = 0.0,
) -> float:
    """Analytic latency of a run whose local compute took ``compute_s`` on ``profile``.

    ``dealer_waits``: dealer requests whose answer the run waited for before going on (all of
    them without ``overlap_dealer``, none with it); ``dealer_bytes``: what those answers carried.
    """
    return compute_s + profile.comm_seconds(rounds + dealer_waits, nbytes + dealer_bytes)


def dealer_terms(dealer: dict, overlap_dealer: bool) -> dict[str, float]:
    """``project_latency``'s dealer arguments from a ledger's ``dealer`` entry (party 0's)."""
    if overlap_dealer:
        return {"dealer_waits": 0, "dealer_bytes": 0.0}
    return {"dealer_waits": dealer.get("requests", 0), "dealer_bytes": dealer.get("bytes", 0.0)}


class NetworkEmulator:
    """Tap listener: sleep after each exchange as the profile's link would take (module doc)."""

    def __init__(self, profile: NetworkProfile):
        self.profile = profile
        self.slept_s = 0.0
        self._op = ""
        self._asked_at: collections.deque[float] = collections.deque()  # party 0's unanswered requests

    def before(self, op: str, with_dealer: bool, args: tuple, kwargs: dict) -> None:
        self._op = op
        if with_dealer and op == "send_obj":
            self._asked_at.append(time.perf_counter())

    def delay(self, with_dealer: bool, rounds: float, nbytes: float) -> float:
        if with_dealer:
            seconds = self._dealer_answer_delay(nbytes)
        elif rounds == 0:
            return 0.0
        else:
            seconds = self.profile.comm_seconds(rounds, nbytes)
        self.slept_s += seconds
        return seconds

    def _dealer_answer_delay(self, nbytes: float) -> float:
        # An answer (the dealer broadcasts it) cannot arrive before its request has crossed the
        # link and the answer has come back.
        if self._op != "broadcast" or not self._asked_at:
            return 0.0
        arrives = self._asked_at.popleft() + self.profile.comm_seconds(1, nbytes)  # answers come in order
        return max(0.0, arrives - time.perf_counter())

    def after(self, event: tap.CommEvent) -> None:
        pass

    def __enter__(self) -> "NetworkEmulator":
        from mpcformer.mpc import tap

        tap.add_listener(self)
        return self

    def __exit__(self, *exc) -> None:
        from mpcformer.mpc import tap

        tap.remove_listener(self)
