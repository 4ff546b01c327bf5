"""Party function for the exchange tests (module level: spawned processes import it)."""

from __future__ import annotations

import torch


def openings_both_ways(rank: int) -> dict:
    """The same openings with mpcformer's all-gather exchange and with CrypTen's all-reduce.

    Returns per way the revealed values and CrypTen's round and byte counts for them, plus an
    all-reduce with MAX (not a sum: CrypTen's all-reduce must serve it either way).
    """
    import torch.distributed as dist

    from mpcformer.mpc import runtime
    from mpcformer.mpc.compat import crypten
    from crypten import communicator as comm
    from crypten.mpc.primitives import ArithmeticSharedTensor

    out: dict = {"installed_by_session": runtime.applied("exchange")}
    gen = torch.Generator().manual_seed(7)
    x = crypten.cryptensor(torch.randn(3, 4, generator=gen) * 100, src=0)
    y = crypten.cryptensor(torch.randn(5, generator=gen), src=1)
    ints = torch.tensor([2**62, -(2**63), 2**63 - 1, 12345]) if rank == 0 else torch.tensor([2**62, -1, 1, -12345])
    for way, fast in (("mpcformer", True), ("crypten", False)):
        with runtime.active().switched(fast_exchange=fast):
            stats0 = comm.get().get_communication_stats()
            single = x.get_plain_text()
            pair = ArithmeticSharedTensor.reveal_batch([x._tensor, y._tensor])
            wrapped = comm.get().all_reduce(ints)  # sums wrap mod 2^64
            stats1 = comm.get().get_communication_stats()
            highest = comm.get().all_reduce(torch.tensor([float(rank), 5.0 - rank]), op=dist.ReduceOp.MAX)
            out[way] = {
                "single": single.tolist(),
                "pair": [t.tolist() for t in pair],
                "wrapped": wrapped.tolist(),
                "max": highest.tolist(),
                "rounds": stats1["rounds"] - stats0["rounds"],
                "bytes": stats1["bytes"] - stats0["bytes"],
            }
    return out
