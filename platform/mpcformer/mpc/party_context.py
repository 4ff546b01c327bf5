"""Where a party function runs: rank, world size, device, node (like Ray Train's ``get_context()``).

Party functions receive their rank as first argument; the rest of what the party actor knows is
here, set by the actor while the function runs:

    def my_party_fn(rank, x):
        device = get_party_context().device   # "cuda" on a party holding a GPU, else "cpu"
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PartyContext", "get_party_context", "set_party_context"]


@dataclass(frozen=True)
class PartyContext:
    """What a party actor tells the functions it runs about itself."""

    rank: int
    world_size: int
    device: str
    node_ip: str
    group: str


_current: PartyContext | None = None


def get_party_context() -> PartyContext:
    """The context of the party actor running the caller; outside a party actor, a CPU default."""
    if _current is None:
        return PartyContext(rank=-1, world_size=0, device="cpu", node_ip="127.0.0.1", group="")
    return _current


def set_party_context(context: PartyContext | None) -> None:
    """Called by the party actor only."""
    global _current
    _current = context
