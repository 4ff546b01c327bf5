"""Party functions for the session-layer tests (module level: spawned processes import them)."""

from __future__ import annotations

import contextlib
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


def staged_primitives(rank: int, break_copy_back: bool = False) -> dict:
    """Every torch.distributed op CrypTen uses, through host staging forced on CPU tensors.

    With ``break_copy_back`` the staged results are never copied back: the values each party
    received must then be missing (the control that shows the staging path is really taken).
    """
    import contextlib
    from unittest import mock

    from mpcformer.mpc import host_staging
    from mpcformer.mpc.compat import crypten

    staged: list[str] = []

    def always(t: torch.Tensor) -> bool:
        staged.append(str(t.dtype))
        return True

    sd = host_staging.HostStagedDist(stage=always)
    group, other = crypten.comm.get().main_group, 1 - rank
    mine = torch.arange(4, dtype=torch.long) + 10 * (rank + 1)  # party 0: 10..13, party 1: 20..23
    out: dict[str, list] = {}
    patch = mock.patch.object(host_staging, "_copy_back", lambda pairs: None) if break_copy_back else contextlib.nullcontext()
    with patch:
        if rank == 0:
            sd.send(mine.clone(), 1, group=group)
            got = torch.zeros(4, dtype=torch.long)
            sd.recv(got, 1, group=group)
        else:
            got = torch.zeros(4, dtype=torch.long)
            sd.recv(got, 0, group=group)
            sd.send(mine.clone(), 0, group=group)
        out["recv"] = got.tolist()
        got = torch.zeros(4, dtype=torch.long)
        works = [sd.isend(mine.clone(), other, group=group), sd.irecv(got, other, group=group)]
        for work in works:
            work.wait()
        out["irecv"] = got.tolist()
        t = mine.clone()
        sd.broadcast(t, 1, group=group)
        out["broadcast"] = t.tolist()
        t = mine.clone()
        sd.broadcast(t, 0, group=group, async_op=True).wait()
        out["broadcast_async"] = t.tolist()
        strided = torch.stack([mine, mine]).t()  # (4, 2) view with strides (1, 4): not contiguous
        sd.broadcast(strided, 1, group=group)
        out["broadcast_strided"] = strided.t()[0].tolist()
        t = mine.clone()
        sd.all_reduce(t, group=group)
        out["all_reduce"] = t.tolist()
        t = mine.clone()
        sd.all_reduce(t, group=group, async_op=True).wait()
        out["all_reduce_async"] = t.tolist()
        t = mine.clone()
        sd.reduce(t, 1, group=group)
        out["reduce"] = t.tolist() if rank == 1 else None
        gathered = [torch.zeros(4, dtype=torch.long) for _ in range(2)]
        sd.all_gather(gathered, mine.clone(), group=group)
        out["all_gather"] = [g.tolist() for g in gathered]
        gathered = [torch.zeros(4, dtype=torch.long) for _ in range(2)] if rank == 0 else None
        sd.gather(mine.clone(), gathered, 0, group=group)
        out["gather"] = [g.tolist() for g in gathered] if rank == 0 else None
        t = torch.zeros(4, dtype=torch.long)
        pieces = [torch.full((4,), 7, dtype=torch.long), torch.full((4,), 8, dtype=torch.long)] if rank == 1 else None
        sd.scatter(t, pieces, 1, group=group)
        out["scatter"] = t.tolist()
    return {"out": out, "staged": len(staged)}


def staged_encrypted_ops(rank: int, a: list, b: list) -> dict:
    """CrypTen arithmetic, comparisons and reveals with every exchange staged through host copies
    (the runtime's host_staging patch targets, each given a stager of every tensor)."""
    from mpcformer.mpc import host_staging, runtime
    from mpcformer.mpc.compat import crypten

    targets = [p.resolve_target() for p in runtime.MANIFEST if p.name == "host_staging"]
    with contextlib.ExitStack() as staging:
        for target in targets:
            staging.enter_context(runtime.swapped(target, {"dist": host_staging.HostStagedDist(stage=lambda t: True)}))
        x = crypten.cryptensor(torch.tensor(a), src=0)
        y = crypten.cryptensor(torch.tensor(b), src=1)
        z = x.matmul(y)
        out = {
            "matmul": z.get_plain_text().tolist(),
            "product": (x * x).get_plain_text().tolist(),
            "relu": z.relu().get_plain_text().tolist(),
            "softmax": z.softmax(-1).get_plain_text().tolist(),
        }
        revealed = z.get_plain_text(dst=1)
        out["to_client"] = revealed.tolist() if rank == 1 else None
    staged_after = any(isinstance(t.dist, host_staging.HostStagedDist) for t in targets)
    return {"out": out, "installed_after": staged_after}


def hook_on_close(rank: int, path: str) -> int:
    """Register a close hook that writes this party's rank to ``path``-<rank>; return the session number."""
    from pathlib import Path

    from mpcformer.mpc.session import on_session_close, session_generation

    on_session_close(lambda: Path(f"{path}-{rank}").write_text(str(rank)))
    return session_generation()


def prg_product(rank: int) -> dict:
    """A product, a matrix product and a comparison through the dealer, with whatever PRG the
    session installed: the parties' and the dealer's draws must line up for exact results."""
    import importlib

    from mpcformer.mpc import prg
    from mpcformer.mpc.compat import crypten

    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(4, 6, generator=gen), torch.randn(6, 3, generator=gen)
    x, y = crypten.cryptensor(a, src=0), crypten.cryptensor(b, src=1)
    product = (x.matmul(y) * x.matmul(y)).get_plain_text()
    signs = (x > 0).get_plain_text()
    rng = importlib.import_module("crypten.common.rng")
    return {
        "aes_draws": rng.generate_random_ring_element is prg.generate_random_ring_element,
        "product": product.flatten().tolist() + signs.flatten().tolist(),
        "expected": ((a @ b) ** 2).flatten().tolist() + (a > 0).float().flatten().tolist(),
    }
