"""A tiny encrypted computation to check that a party group works (used by tests and smoke checks).

    group.run([PartyCall(encrypted_matmul, (a, None)), PartyCall(encrypted_matmul, (None, b))])
"""

from __future__ import annotations

from typing import Any

__all__ = ["encrypted_matmul"]


def encrypted_matmul(rank: int, a: list[list[float]] | None, b: list[list[float]] | None, reveal_to: int = 1) -> dict[str, Any]:
    """``a @ b`` with ``a`` private to party 0 and ``b`` private to party 1; revealed to ``reveal_to`` only.

    Every party passes the shapes through its own argument: party 0 gives ``a`` and ``b=None``,
    party 1 gives ``b`` and ``a=None``. Returns ``{"product": list or None, "rounds", "bytes"}``.
    """
    import torch

    from mpcformer.cluster.context import get_party_context
    from mpcformer.mpc.compat import crypten

    device = get_party_context().device
    a_tensor = torch.tensor(a, device=device) if a is not None else None
    b_tensor = torch.tensor(b, device=device) if b is not None else None
    crypten.reset_communication_stats()
    a_enc = crypten.cryptensor(a_tensor, src=0, broadcast_size=True, device=device)  # (M, K)
    b_enc = crypten.cryptensor(b_tensor, src=1, broadcast_size=True, device=device)  # (K, N)
    product = a_enc.matmul(b_enc).get_plain_text(dst=reveal_to)  # (M, N), only on reveal_to
    stats = crypten.get_communication_stats()
    return {
        "product": product.cpu().tolist() if rank == reveal_to else None,
        "rounds": stats["rounds"],
        "bytes": stats["bytes"],
    }
