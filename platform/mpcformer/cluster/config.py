"""Typed configuration of a party group: how many parties, where Ray places them, deadlines.

    group:
      world_size: 2            # parties; the dealer (CrypTen TTP) is one more actor
      strategy: auto           # STRICT_SPREAD when the cluster has a node per actor, else PACK
      cpus_per_party: 1.0
      use_gpu: auto            # one GPU per party when the cluster has GPUs
      role_resources: false    # true: each role asks for its custom Ray resource (ROLE_RESOURCES)
      placement_timeout_s: 60
      startup_timeout_s: 180   # placed actors import torch, CrypTen and the model code
      mpc: {timeout_s: 120}    # deadline of every rendezvous and collective (MPCConfig)
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mpcformer.config import StrictModel
from mpcformer.mpc.config import MPCConfig

__all__ = ["PlacementStrategy", "PartyGroupConfig", "ROLE_RESOURCES"]

#: "auto" picks STRICT_SPREAD (one actor per node) when the cluster has enough nodes, else PACK.
PlacementStrategy = Literal["auto", "STRICT_SPREAD", "SPREAD", "PACK", "STRICT_PACK"]

#: Custom Ray resource each role asks for (one unit) with ``role_resources``: a node that offers
#: ``mpc_owner`` hosts model owners only, and so on (``ray start --resources '{"mpc_owner": 1}'``).
ROLE_RESOURCES = {0: "mpc_owner", 1: "mpc_client", "dealer": "mpc_dealer"}


class PartyGroupConfig(StrictModel):
    """One MPC party group: ``world_size`` party actors plus the dealer, in one placement group."""

    world_size: int = Field(default=2, ge=2, le=8, description="MPC parties (rank 0 owns the model, 1 is the client)")
    strategy: PlacementStrategy = "auto"
    cpus_per_party: float = Field(default=1.0, gt=0, description="logical CPUs reserved for each party actor")
    cpus_for_dealer: float = Field(default=1.0, gt=0, description="logical CPUs reserved for the dealer actor")
    use_gpu: bool | Literal["auto"] = Field(default="auto", description="parties compute on CUDA when true")
    gpus_per_party: float = Field(default=1.0, gt=0, description="GPUs per party when use_gpu")
    gpus_for_dealer: float | None = Field(
        default=None, ge=0, description="GPUs for the dealer; None: as a party when parties use GPUs (CrypTen's TTP "
        "generates the triples on the parties' device)"
    )
    role_resources: bool = Field(
        default=False, description="party 0 asks for the custom resource mpc_owner, party 1 mpc_client, the dealer "
        "mpc_dealer (one unit each): each role runs only on nodes that offer its resource (two parties only)"
    )
    placement_timeout_s: float = Field(default=60.0, gt=0, description="deadline for Ray to place the group")
    # apart from placement: a cluster that cannot place fails fast, while three actors importing torch,
    # CrypTen and transformers on a busy 2-core node can take minutes
    startup_timeout_s: float = Field(default=180.0, gt=0, description="deadline for the placed actors to start")
    run_timeout_s: float | None = Field(
        default=None, gt=0, description="deadline of one run() on the driver; None: only the per-step MPC deadlines"
    )
    shutdown_timeout_s: float = Field(default=10.0, gt=0, description="grace period before actors are killed")
    mpc: MPCConfig = Field(default_factory=MPCConfig)

    @model_validator(mode="after")
    def _roles_need_two_parties(self) -> "PartyGroupConfig":
        if self.role_resources and self.world_size != 2:
            raise ValueError(f"role_resources names the owner and the client: it needs world_size 2, got {self.world_size}")
        return self
