"""Party function for the truncation tests (module level: spawned processes import them)."""

from __future__ import annotations

import torch

#: Fractional bits of the tests' values: they are encoded exactly at CrypTen's 16 bits.
VALUE_BITS = 6


def _encoded(share) -> torch.Tensor:
    """The ring values of an ``MPCTensor`` (no decoding: exact integers)."""
    return share._tensor.reveal()


def products_both_ways(rank: int, a: list[float], b: list[float], divisors: list[int]) -> dict:
    """Encrypted ``a * b`` (owner's ``a``, client's ``b``) with exact truncation off, then on; also
    ``a * 0.75`` (a public float) and ``a / y`` for each public integer ``y`` and by a tensor of them, both ways.

    Returns per mode the revealed ring values and the rounds each product took.
    """
    from crypten import communicator as comm

    from mpcformer.mpc import runtime
    from mpcformer.mpc.compat import crypten

    x = crypten.cryptensor(torch.tensor(a, dtype=torch.float64), src=0)
    y = crypten.cryptensor(torch.tensor(b, dtype=torch.float64), src=1)
    small = x[:1000]
    out: dict = {}
    for mode in ("crypten", "exact"):
        with runtime.active().switched(exact_truncation=mode == "exact"):
            before = comm.get().get_communication_stats()["rounds"]
            product = x * y
            rounds = comm.get().get_communication_stats()["rounds"] - before
            out[mode] = {
                "product": _encoded(product).tolist(),
                "product_rounds": rounds,
                "public_float": _encoded(small * 0.75).tolist(),
                "divided": {str(d): _encoded(small / d).tolist() for d in divisors},
                "by_tensor": _encoded(small / torch.tensor([1.0, 3.0, 16.0, 1000.0]).repeat(250)).tolist(),
            }
    return out
