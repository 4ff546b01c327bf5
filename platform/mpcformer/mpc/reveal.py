"""Open an encrypted tensor to one party alone: the others send it their shares, point to point.

CrypTen's ``get_plain_text(dst=...)`` is a ``torch.distributed.reduce`` onto ``dst``; gloo runs a
reduce as a reduce-scatter followed by a gather to the root, so the *other* parties' buffers end
up holding summed chunks of the plaintext, which a party keeping its buffer reads in the clear.
Here every party but ``dst`` sends its share to ``dst`` (``send``/``recv``) and receives nothing:
a share alone is uniform, and only ``dst`` adds them up. Every one-sided reveal of the project goes
through :func:`reveal_to`.
"""

from __future__ import annotations

from typing import Any

import torch

from mpcformer.mpc.compat import crypten  # noqa: F401  (import order: compat first)
from crypten import communicator as comm
from crypten.mpc.primitives import BinarySharedTensor

__all__ = ["reveal_to"]


def reveal_to(x: Any, dst: int) -> torch.Tensor | None:
    """The plaintext of ``x`` (a CrypTen ``MPCTensor``) on party ``dst``; ``None`` on every other party."""
    shares = x._tensor  # ArithmeticSharedTensor (added up) or BinarySharedTensor (XORed)
    rank, world_size = comm.get().get_rank(), comm.get().get_world_size()
    if not 0 <= dst < world_size:
        raise ValueError(f"reveal_to: party {dst} is outside 0..{world_size - 1}")
    share = shares.share.contiguous()
    if rank != dst:
        comm.get().send(share, dst)
        return None
    total = share.clone()
    for other in range(world_size):
        if other != dst:
            theirs = comm.get().recv(torch.empty_like(share), src=other)
            total = total ^ theirs if isinstance(shares, BinarySharedTensor) else total.add_(theirs)
    return shares.encoder.decode(total)
