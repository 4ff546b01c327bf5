"""Party functions for the session-layer tests (module level: spawned processes import them)."""

from __future__ import annotations

import time

import torch


def matmul_softmax_poly(rank: int, a: list, b: list) -> dict:
    from mpcformer.mpc.compat import crypten
    from mpcformer.mpc.costs import CostLedger

    ledger = CostLedger()
    with ledger.active():
        x = crypten.cryptensor(torch.tensor(a), src=0)
        y = crypten.cryptensor(torch.tensor(b), src=1)
        with ledger.scope("linear", layer=0):
            z = x.matmul(y)
        with ledger.scope("softmax", layer=0):
            s = z.softmax(-1)
        with ledger.scope("activation", layer=0):
            q = z.square() * 0.125 + z * 0.25 + 0.5
        out = {name: t.get_plain_text().tolist() for name, t in (("matmul", z), ("softmax", s), ("poly", q))}
    return {"out": out, "costs": ledger.to_dict(), "rank": crypten.comm.get().get_rank()}


def fail_on_rank(rank: int, bad_rank: int) -> str:
    from mpcformer.mpc.compat import crypten

    x = crypten.cryptensor(torch.ones(3), src=0)
    if rank == bad_rank:
        raise ValueError(f"boom on party {rank}")
    # the healthy party blocks in a collective that its peer never joins
    return str(x.mul(x).get_plain_text().tolist())


def sleep_forever(rank: int) -> None:
    if rank == 1:
        time.sleep(3600)
    from mpcformer.mpc.compat import crypten

    crypten.cryptensor(torch.ones(2), src=1).get_plain_text()


def timed_softmax(rank: int, values: list) -> dict:
    from mpcformer.mpc.compat import crypten
    from mpcformer.mpc.costs import CostLedger

    x = crypten.cryptensor(torch.tensor(values), src=1)
    ledger = CostLedger()
    with ledger.active():
        with ledger.scope("softmax"):
            y = x.softmax(-1)
    y.get_plain_text()
    return ledger.to_dict()
