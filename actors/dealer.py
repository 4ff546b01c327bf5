"""The dealer (CrypTen's trusted third party, rank = world size) as a Ray actor.

``serve`` blocks for the whole MPC session, handing out Beaver triples, and returns when party 0
leaves the session. It runs in the default concurrency group; ``describe`` and ``ping`` answer
from the "control" group meanwhile.
"""

from __future__ import annotations

import time
from typing import Any

import ray

from mpcformer.actors.party import limit_torch_threads, describe_process

__all__ = ["DealerActor"]


@ray.remote(concurrency_groups={"control": 1}, max_restarts=0, max_task_retries=0)
class DealerActor:
    """Serves one MPC session of ``world_size`` parties at a time."""

    def __init__(self, world_size: int, mpc_config: dict[str, Any], group: str):
        from mpcformer.mpc.config import MPCConfig

        self.world_size, self.group = world_size, group
        self.device = "cuda" if ray.get_gpu_ids() else "cpu"
        self.mpc_config = MPCConfig.model_validate({**mpc_config, "device": self.device})
        limit_torch_threads()

    @ray.method(concurrency_group="control")
    def describe(self) -> dict[str, Any]:
        return {**describe_process(), "rank": self.world_size, "device": self.device}

    @ray.method(concurrency_group="control")
    def ping(self) -> float:
        return time.time()

    def serve(self, rendezvous: str, transport: dict[str, Any] | None = None) -> None:
        """Join ``rendezvous`` as rank ``world_size`` and serve until party 0 leaves (``transport``: as
        :meth:`PartyActor.open`)."""
        from mpcformer.mpc.session import run_dealer

        config = self.mpc_config.model_validate({**self.mpc_config.model_dump(), **(transport or {})})
        run_dealer(self.world_size, rendezvous, config)
