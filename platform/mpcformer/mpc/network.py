"""Network profiles for the multi-party simulation, applied two ways:

- **analytic** projection from measured counts: ``time = compute + rounds * rtt + bytes * 8 / bandwidth``;
- **emulation**: a communicator tap that makes each party really wait ``rtt + bytes * 8 / bandwidth``
  after every party-to-party exchange.

Only party-to-party traffic is charged: the dealer's Beaver triples do not depend on the inputs and
are produced in an offline phase in a deployment, so neither form charges them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from mpcformer.config import StrictModel
from mpcformer.errors import UserError

if TYPE_CHECKING:  # the tap imports crypten (and torch): keep this module light for the CLI
    from mpcformer.mpc import tap

__all__ = ["NetworkProfile", "PROFILES", "resolve_profile", "project_latency", "NetworkEmulator"]


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


def project_latency(compute_s: float, rounds: float, nbytes: float, profile: NetworkProfile) -> float:
    """Analytic latency of a run whose local compute took ``compute_s`` on ``profile``."""
    return compute_s + profile.comm_seconds(rounds, nbytes)


class NetworkEmulator:
    """Tap listener: sleep after each party-to-party exchange as the profile's link would take."""

    def __init__(self, profile: NetworkProfile):
        self.profile = profile
        self.slept_s = 0.0

    def before(self, op: str, with_dealer: bool, args: tuple, kwargs: dict) -> None:
        pass

    def delay(self, with_dealer: bool, rounds: float, nbytes: float) -> float:
        if with_dealer or rounds == 0:
            return 0.0
        seconds = self.profile.comm_seconds(rounds, nbytes)
        self.slept_s += seconds
        return seconds

    def after(self, event: tap.CommEvent) -> None:
        pass

    def __enter__(self) -> "NetworkEmulator":
        from mpcformer.mpc import tap

        tap.add_listener(self)
        return self

    def __exit__(self, *exc) -> None:
        from mpcformer.mpc import tap

        tap.remove_listener(self)
