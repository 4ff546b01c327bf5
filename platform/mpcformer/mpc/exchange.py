"""Two-party openings as one all-gather instead of gloo's all-reduce.

Every opening of a secret (the Beaver step's ε and δ, every ``reveal``) is CrypTen's
``all_reduce(SUM)`` over the parties. With gloo on CPU an all-reduce of a small tensor between two
processes takes ~1.5 ms here, an all-gather of the same tensor ~0.2 ms: both move the same bytes
(each party sends its share and receives the other's), the all-reduce just pays a fixed cost.
The session's runtime (patch ``exchange`` of :mod:`mpcformer.mpc.runtime`, ``MPCConfig.fast_exchange``)
gives CrypTen's communicator an ``all_reduce`` (:func:`all_reduce_by_gather`) that, for two parties, CPU tensors and
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
from crypten.communicator.communicator import _logging

__all__ = ["all_reduce_by_gather"]


def _plain_cpu(tensors: list[Any]) -> bool:
    return all(type(t) is torch.Tensor and t.device.type == "cpu" for t in tensors)


def all_reduce_by_gather(original: Any, config: Any = None) -> Any:
    """CrypTen's ``all_reduce`` method (``original``, counted by CrypTen) replaced by one that
    all-gathers for two parties on CPU and otherwise runs CrypTen's body; counted the same way."""
    body = original
    while hasattr(body, "__wrapped__"):  # CrypTen's counter (and a tap) use functools.wraps
        body = body.__wrapped__

    def all_reduce(self, input, op=dist.ReduceOp.SUM, batched=False):
        """CrypTen's ``all_reduce`` (same arguments and result), by all-gather for two parties."""
        tensors = list(input) if batched else [input]
        if self.get_world_size() != 2 or op != dist.ReduceOp.SUM or not tensors or not _plain_cpu(tensors):
            return body(self, input, op=op, batched=batched)  # already counted by the wrapper around us
        return _gathered_sum(self, input, tensors, batched)

    # Named like the method it replaces: CrypTen's counter and the tap go by the function's name.
    return _logging(all_reduce)


def _gathered_sum(self: Any, input: Any, tensors: list[Any], batched: bool) -> Any:
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
