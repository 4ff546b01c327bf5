"""An MPC party as a Ray actor: joins one MPC session and runs named party operations inside it.

The actor holds no ML logic (like a Ray Train worker): the party group sends it the *name* of a
party operation (:mod:`mpcformer.operations`) with plain arguments; the actor runs the function
registered under that name in its own process, ``fn(rank, *args, **kwargs)``, inside the open
:class:`~mpcformer.mpc.session.MPCSession` on the actor's device, and returns plain data. Any
other name is refused (:class:`~mpcformer.operations.OperationRefused`): the driver cannot ship
code for a party to run.

Methods that touch CrypTen (``open``, ``run``, ``close``) run one at a time on one thread (the
default concurrency group). ``describe``, ``ping`` and ``drain_progress`` run in a separate
"control" group so the driver can tell a busy party from a stalled one, and follow its progress.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import time
from typing import Any

import ray

from mpcformer.operations import resolve_operation

__all__ = ["PartyActor", "describe_process", "free_tcp_address", "limit_torch_threads"]

log = logging.getLogger(__name__)


def describe_process() -> dict[str, Any]:
    """Node id, node IP, process id and GPU ids of the calling Ray worker (plain data)."""
    context = ray.get_runtime_context()
    return {
        "node_id": context.get_node_id(),
        "node_ip": ray.util.get_node_ip_address(),
        "pid": os.getpid(),
        "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
    }


def free_tcp_address(ip: str) -> str:
    """``tcp://ip:port`` with a port that is free on this node right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("", 0))
        port = sock.getsockname()[1]
    return f"tcp://{ip}:{port}"


def limit_torch_threads() -> None:
    """Use as many torch threads as logical CPUs Ray assigned to this actor (at least one)."""
    import torch

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    torch.set_num_threads(max(1, int(cpus)))


@ray.remote(concurrency_groups={"control": 1}, max_restarts=0, max_task_retries=0)
class PartyActor:
    """Party ``rank`` of ``world_size``; rank 0 owns the model, rank 1 is the client."""

    def __init__(self, rank: int, world_size: int, mpc_config: dict[str, Any], group: str):
        from mpcformer.mpc.config import MPCConfig

        self.rank, self.world_size, self.group = rank, world_size, group
        self.device = "cuda" if ray.get_gpu_ids() else "cpu"
        # Built here from plain data: config objects cross the actor boundary as dicts.
        self.mpc_config = MPCConfig.model_validate({**mpc_config, "device": self.device})
        self._session = None
        self._progress: collections.deque = collections.deque(maxlen=10_000)  # appended by run, drained by control
        limit_torch_threads()

    # -- control group: answers while a computation runs ---------------------------------------
    @ray.method(concurrency_group="control")
    def describe(self) -> dict[str, Any]:
        """Where this party runs: node id/IP, pid, GPU ids, device, rank."""
        return {**describe_process(), "rank": self.rank, "device": self.device}

    @ray.method(concurrency_group="control")
    def ping(self) -> float:
        return time.time()

    @ray.method(concurrency_group="control")
    def drain_progress(self) -> list[dict[str, Any]]:
        """Progress events (:mod:`mpcformer.mpc.progress`) reported since the last call, oldest first."""
        events = []
        while self._progress:
            events.append(self._progress.popleft())
        return events

    # -- MPC ------------------------------------------------------------------------------------
    def rendezvous_address(self) -> str:
        """Rank 0 publishes ``tcp://<its node IP>:<a free port>``; every party and the dealer join it."""
        if self.rank != 0:
            raise RuntimeError("only party 0 publishes the rendezvous address")
        return free_tcp_address(ray.util.get_node_ip_address())

    def open(self, rendezvous: str, transport: dict[str, Any] | None = None) -> None:
        """Join the MPC session (blocks until every party and the dealer joined, or the deadline).
        ``transport``: the group's choice of ``transport`` and ``credentials_dir`` (MPCConfig fields)."""
        from mpcformer.mpc.party_context import PartyContext, set_party_context
        from mpcformer.mpc import progress
        from mpcformer.mpc.session import MPCSession

        if self._session is not None:
            raise RuntimeError(f"party {self.rank} is already in an MPC session")
        if self.device == "cuda":
            import torch

            torch.cuda.set_device(0)  # Ray made the assigned GPU the only visible one
        config = self.mpc_config.model_validate({**self.mpc_config.model_dump(), **(transport or {})})
        session = MPCSession(self.rank, self.world_size, rendezvous, config)
        session.__enter__()
        self._session = session
        progress.set_sink(self._progress.append)
        set_party_context(PartyContext(self.rank, self.world_size, self.device, ray.util.get_node_ip_address(), self.group))

    def run(self, operation: str, args: tuple = (), kwargs: dict[str, Any] | None = None) -> Any:
        """Run the party operation named ``operation`` as ``fn(rank, *args, **kwargs)`` inside the
        open session; return its (plain) result. An unregistered name raises ``OperationRefused``."""
        fn = resolve_operation(operation)
        if self._session is None:
            raise RuntimeError(f"party {self.rank} has no open MPC session (call open first)")
        return fn(self.rank, *args, **(kwargs or {}))

    def close(self) -> None:
        """Leave the session (on rank 0 this also ends the dealer). Safe to call twice."""
        from mpcformer.mpc.party_context import set_party_context
        from mpcformer.mpc import progress

        session, self._session = self._session, None
        set_party_context(None)
        progress.set_sink(None)
        if session is not None:
            session.close()
