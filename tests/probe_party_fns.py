"""Tiny encrypted computations that check a party group works (test party operations).

    group.run([PartyCall(encrypted_matmul, (a, None)), PartyCall(encrypted_matmul, (None, b))])
"""

from __future__ import annotations

from typing import Any

from mpcformer.operations import party_operation

__all__ = ["encrypted_matmul", "encrypted_steps"]


@party_operation
def encrypted_matmul(
    rank: int, a: list[list[float]] | None, b: list[list[float]] | None, reveal_to: int = 1
) -> dict[str, Any]:
    """``a @ b`` with ``a`` private to party 0 and ``b`` private to party 1; revealed to ``reveal_to`` only.

    Every party passes the shapes through its own argument: party 0 gives ``a`` and ``b=None``,
    party 1 gives ``b`` and ``a=None``. Returns ``{"product": list or None, "rounds", "bytes"}``.
    """
    import torch

    from mpcformer.mpc.party_context import get_party_context
    from mpcformer.mpc.compat import crypten
    from mpcformer.mpc.costs import CostLedger
    from mpcformer.mpc.reveal import reveal_to as reveal

    device = get_party_context().device
    empty = torch.empty(0, device=device)  # a party that does not own an input learns only its size
    a_tensor = torch.tensor(a, device=device) if a is not None else empty
    b_tensor = torch.tensor(b, device=device) if b is not None else empty
    ledger = CostLedger()
    with ledger.active(), ledger.scope("linear"):
        a_enc = crypten.cryptensor(a_tensor, src=0, broadcast_size=True, device=device)  # (M, K)
        b_enc = crypten.cryptensor(b_tensor, src=1, broadcast_size=True, device=device)  # (K, N)
        product = reveal(a_enc.matmul(b_enc), reveal_to)  # (M, N), only on reveal_to
    total = ledger.total()
    return {
        "product": product.cpu().tolist() if rank == reveal_to else None,
        "rounds": total.rounds,
        "bytes": total.bytes,
    }


@party_operation
def encrypted_steps(rank: int, steps: int, pause_s: float = 0.0) -> dict[str, Any]:
    """``steps`` encrypted multiplications ``x = x * 1``, ``pause_s`` apart (a long, cheap probe).

    Every step is one Beaver multiplication (a dealer request and a party-to-party exchange), so a
    party or dealer that dies or stalls mid-way is noticed at the next step. Returns the revealed
    value (1.0 up to fixed-point error) and the number of steps done.
    """
    import time

    import torch

    from mpcformer.mpc.compat import crypten

    value = crypten.cryptensor(torch.ones(1), src=0)
    one = crypten.cryptensor(torch.ones(1), src=1)
    for _ in range(steps):
        value = value * one
        time.sleep(pause_s)
    return {"value": value.get_plain_text().item(), "steps": steps, "rank": rank}
