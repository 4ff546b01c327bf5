"""Two-party openings as one all-gather instead of gloo's all-reduce.

Every opening of a secret (the Beaver step's ε and δ, every ``reveal``) is CrypTen's
``all_reduce(SUM)`` over the parties. With gloo on CPU an all-reduce of a small tensor between two
processes takes ~1.5 ms here, an all-gather of the same tensor ~0.2 ms: both move the same bytes
(each party sends its share and receives the other's), the all-reduce just pays a fixed cost.
``install()`` gives CrypTen's communicator an ``all_reduce`` that, for two parties, CPU tensors and
``SUM``, all-gathers the shares (a batch as one flat tensor) and adds them locally, wrapping mod
2^64 like the ring. CrypTen still counts it as the all-reduce it replaces (one round, 2x the
elements), so rounds, bytes and everything built on them (network projections, the leak test)
are unchanged. Anything else (more parties, CUDA, XOR) keeps CrypTen's all-reduce.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from mpcformer.mpc.compat import crypten  # noqa: F401  (import order: compat first)
from crypten.communicator import DistributedCommunicator
from crypten.communicator.communicator import _logging

from mpcformer.mpc import tap

__all__ = ["install", "uninstall", "is_installed"]

_original: Any = None  # CrypTen's all_reduce as it was before install (possibly tapped)
_body: Any = None  # CrypTen's all_reduce without its counting wrapper


def _plain_cpu(tensors: list[Any]) -> bool:
    return all(type(t) is torch.Tensor and t.device.type == "cpu" for t in tensors)


def all_reduce(self, input, op=dist.ReduceOp.SUM, batched=False):
    """CrypTen's ``all_reduce`` (same arguments and result), by all-gather for two parties."""
    tensors = list(input) if batched else [input]
    if self.get_world_size() != 2 or op != dist.ReduceOp.SUM or not tensors or not _plain_cpu(tensors):
        return _body(self, input, op=op, batched=batched)  # already counted by the wrapper around us
    mine = torch.cat([t.reshape(-1) for t in tensors]) if len(tensors) > 1 else tensors[0].reshape(-1)
    gathered = [torch.empty_like(mine), torch.empty_like(mine)]
    dist.all_gather(gathered, mine, group=self.main_group)
    total = gathered[0].add_(gathered[1])  # int64 addition wraps mod 2^64, as the ring does
    if not batched:
        return total.view_as(input)
    results, start = [], 0
    for t in tensors:
        results.append(total[start:start + t.numel()].view_as(t))
        start += t.numel()
    return results


# Named like the method it replaces: CrypTen's counter and the tap go by the function's name.
_counted_all_reduce = _logging(all_reduce)


def install() -> None:
    """Use :func:`all_reduce` for CrypTen's ``all_reduce`` in this process (idempotent)."""
    global _original, _body
    if _original is not None:
        return
    _original = _body = DistributedCommunicator.all_reduce
    while hasattr(_body, "__wrapped__"):  # the tap and CrypTen's counter both use functools.wraps
        _body = _body.__wrapped__
    DistributedCommunicator.all_reduce = _counted_all_reduce
    tap.rewrap()


def uninstall() -> None:
    """Back to CrypTen's ``all_reduce``."""
    global _original
    if _original is None:
        return
    DistributedCommunicator.all_reduce = _original
    _original = None
    tap.rewrap()


def is_installed() -> bool:
    return _original is not None
