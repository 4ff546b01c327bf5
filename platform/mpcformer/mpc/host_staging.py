"""Parties computing on CUDA exchange their shares through host memory.

CrypTen's communicator hands share tensors straight to ``torch.distributed``. Its TTP dealer
needs gloo (requests travel as CPU byte tensors, which NCCL cannot carry), and gloo takes CUDA
tensors only for ``broadcast`` and ``all_reduce``: ``send``/``recv``, ``reduce``, ``gather``,
``scatter`` fail. So on a CUDA party every tensor exchange goes through a host copy: the op runs
on the copy and whatever it received is copied back into the caller's CUDA tensor. Parties then
compute on the GPU and talk over the same gloo transport as CPU parties (on one node that is
loopback; between nodes it is the network either way).

The session's runtime (:mod:`mpcformer.mpc.runtime`, patch ``host_staging``) puts a
:class:`HostStagedDist` in place of ``torch.distributed`` in CrypTen's communicator and TTP provider
when ``MPCConfig.device`` is ``cuda``, and restores it when the session closes. Only tensors that
are not on the CPU are staged; CPU tensors go through untouched. ``HostStagedDist(stage=...)``
takes another predicate (tests stage CPU tensors too, through a real copy, to check that every
received value is copied back).
"""

from __future__ import annotations

import types
from typing import Any, Callable

import torch
import torch.distributed as dist

__all__ = ["staged_dist", "HostStagedDist"]

StagePredicate = Callable[[torch.Tensor], bool]


def _off_host(tensor: torch.Tensor) -> bool:
    return tensor.device.type != "cpu"


def _host_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU copy (what gloo's collectives expect) that never aliases ``tensor``
    (``.cpu()`` would return a CPU tensor itself)."""
    return tensor.detach().to("cpu", copy=True).contiguous()


class _CopyBack:
    """Work handle of an async op on host copies: ``wait()`` also copies the received values back."""

    def __init__(self, work: Any, pairs: list[tuple[torch.Tensor, torch.Tensor]], keep: Any = None):
        self._work, self._pairs = work, pairs  # the pairs also keep the host buffers alive
        self._keep = keep  # a sent host buffer, alive until the send completes

    def wait(self, *args: Any, **kwargs: Any) -> Any:
        done = self._work.wait(*args, **kwargs) if self._work is not None else True
        _copy_back(self._pairs)
        self._pairs = []
        return done

    def is_completed(self) -> bool:
        return self._work is None or self._work.is_completed()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._work, name)


def _copy_back(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for original, host in pairs:
        original.copy_(host)


class HostStagedDist(types.ModuleType):
    """``torch.distributed`` whose point-to-point and collective ops stage off-host tensors on the host.

    Installed in place of the ``dist`` module CrypTen's communicator and TTP provider use; every
    other attribute is ``torch.distributed``'s own.
    """

    def __init__(self, stage: StagePredicate = _off_host):
        super().__init__("torch.distributed")
        self._stage = stage

    def __getattr__(self, name: str) -> Any:
        return getattr(dist, name)

    # -- helpers --------------------------------------------------------------------------------
    def _host(self, tensor: torch.Tensor, pairs: list, received: bool) -> torch.Tensor:
        if tensor is None or not self._stage(tensor):
            return tensor
        host = _host_copy(tensor)
        if received:
            pairs.append((tensor, host))
        return host

    def _finish(self, work: Any, pairs: list, async_op: bool) -> Any:
        if async_op:
            return _CopyBack(work, pairs)
        _copy_back(pairs)
        return work

    # -- point to point ----------------------------------------------------------------------------
    def send(self, tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return dist.send(self._host(tensor, [], received=False), *args, **kwargs)

    def recv(self, tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        pairs: list = []
        sender = dist.recv(self._host(tensor, pairs, received=True), *args, **kwargs)
        _copy_back(pairs)
        return sender

    def isend(self, tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        host = self._host(tensor, [], received=False)
        work = dist.isend(host, *args, **kwargs)
        return work if host is tensor else _CopyBack(work, [], keep=host)  # nothing to copy back

    def irecv(self, tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        pairs: list = []
        work = dist.irecv(self._host(tensor, pairs, received=True), *args, **kwargs)
        return _CopyBack(work, pairs) if pairs else work

    # -- collectives (the first tensor argument is read and written in place) -------------------------
    def broadcast(self, tensor: torch.Tensor, src: int, group: Any = None, async_op: bool = False, **kw: Any) -> Any:
        pairs: list = []
        work = dist.broadcast(self._host(tensor, pairs, True), src, group=group, async_op=async_op, **kw)
        return self._finish(work, pairs, async_op)

    def all_reduce(self, tensor: torch.Tensor, op: Any = dist.ReduceOp.SUM, group: Any = None,
                   async_op: bool = False) -> Any:
        pairs: list = []
        work = dist.all_reduce(self._host(tensor, pairs, True), op=op, group=group, async_op=async_op)
        return self._finish(work, pairs, async_op)

    def reduce(self, tensor: torch.Tensor, dst: int, op: Any = dist.ReduceOp.SUM, group: Any = None,
               async_op: bool = False, **kw: Any) -> Any:
        pairs: list = []
        work = dist.reduce(self._host(tensor, pairs, True), dst, op=op, group=group, async_op=async_op, **kw)
        return self._finish(work, pairs, async_op)

    def all_gather(self, tensor_list: list[torch.Tensor], tensor: torch.Tensor, group: Any = None,
                   async_op: bool = False) -> Any:
        pairs: list = []
        outputs = [self._host(t, pairs, True) for t in tensor_list]
        work = dist.all_gather(outputs, self._host(tensor, [], False), group=group, async_op=async_op)
        return self._finish(work, pairs, async_op)

    def gather(self, tensor: torch.Tensor, gather_list: list[torch.Tensor] | None = None, dst: int = 0,
               group: Any = None, async_op: bool = False, **kw: Any) -> Any:
        pairs: list = []
        outputs = None if gather_list is None else [self._host(t, pairs, True) for t in gather_list]
        work = dist.gather(self._host(tensor, [], False), outputs, dst, group=group, async_op=async_op, **kw)
        return self._finish(work, pairs, async_op)

    def scatter(self, tensor: torch.Tensor, scatter_list: list[torch.Tensor] | None = None, src: int = 0,
                group: Any = None, async_op: bool = False, **kw: Any) -> Any:
        pairs: list = []
        inputs = None if scatter_list is None else [self._host(t, [], False) for t in scatter_list]
        work = dist.scatter(self._host(tensor, pairs, True), inputs, src, group=group, async_op=async_op, **kw)
        return self._finish(work, pairs, async_op)


def staged_dist(original: Any = None, config: Any = None) -> HostStagedDist:
    """The ``dist`` CrypTen's communicator and TTP provider see on a CUDA party (a runtime patch)."""
    return HostStagedDist()
