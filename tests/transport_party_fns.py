"""Party operations of tests/test_secure_transport.py and tests/test_multihost.py (registered; Ray
actors import this module by name through MPCFORMER_PARTY_OPERATIONS)."""

from __future__ import annotations

import secrets

from mpcformer.operations import party_operation


@party_operation
def multiply(rank: int, n: int) -> dict:
    """Party 0 shares 0..n-1, party 1 shares 2..n+1; both open the product. Also: the transport used."""
    import torch

    from mpcformer.mpc.compat import crypten
    from mpcformer.mpc import runtime

    x = crypten.cryptensor(torch.arange(n, dtype=torch.float32), src=0)
    y = crypten.cryptensor(torch.arange(2, n + 2, dtype=torch.float32), src=1)
    product = (x * y).get_plain_text()
    return {"product": product.round().long().tolist(), "transport": runtime.describe()["transport"]}


@party_operation
def send_share(rank: int, n: int, path: str) -> dict:
    """The client secret-shares n random int64 values and sends its share to the owner in one message
    (what an on-path observer could read off the wire). The client writes the share's bytes to ``path``
    (a result would cross the links through Ray, in Ray's own transport); both return its digest."""
    import hashlib
    from pathlib import Path

    import torch

    from mpcformer.mpc.compat import crypten
    from crypten import communicator as comm

    secret = torch.tensor([secrets.randbits(40) for _ in range(n)], dtype=torch.float64)
    x = crypten.cryptensor(secret if rank == 1 else torch.zeros(n, dtype=torch.float64), src=1)
    if rank == 1:
        comm.get().send(x.share, 0)
        Path(path).write_bytes(x.share.numpy().tobytes())
        return {"digest": hashlib.sha256(x.share.numpy().tobytes()).hexdigest()}
    received = comm.get().recv(torch.empty_like(x.share), 1)
    return {"digest": hashlib.sha256(received.numpy().tobytes()).hexdigest()}


@party_operation
def leave_with_an_answer_uncollected(rank: int, count: int) -> dict:
    """Party 0 asks the dealer for a long stream range and leaves without collecting it, as it does
    with the range it prefetches; the dealer is still sending when party 0 closes its connection."""
    import torch

    from mpcformer.mpc import beaver
    from mpcformer.mpc.dealer import STREAM_RANGE

    if rank == 0:
        beaver.ask_dealer(STREAM_RANGE, "cpu", "mul", 0, count, size=torch.Size([count]))
    return {"rank": rank}
