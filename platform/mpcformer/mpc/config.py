"""Typed configuration of one MPC session (precision, dealer, deadlines, CrypTen function settings)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mpcformer.config import StrictModel
from mpcformer.mpc.network import NetworkProfile

__all__ = ["FunctionSettings", "MPCConfig", "PROTOCOL_PROFILES", "protocol_settings"]


class FunctionSettings(StrictModel):
    """CrypTen ``cfg.functions`` overrides; ``None`` keeps CrypTen's own default (the fair baseline)."""

    exp_iterations: int | None = Field(default=None, ge=1, le=32)
    reciprocal_method: Literal["NR", "log"] | None = None
    reciprocal_nr_iters: int | None = Field(default=None, ge=1, le=64)
    sqrt_nr_iters: int | None = Field(default=None, ge=1, le=32)
    erf_iterations: int | None = Field(default=None, ge=1, le=32)
    max_method: Literal["log_reduction", "double_log_reduction", "accelerated_cascade"] | None = None


#: Named protocol paths (``--protocol``): the MPCConfig switches each one sets. ``crypten`` is CrypTen
#: 0.4.1 as shipped, its own seeds and ``torch.randint`` draws included (the benchmarks' insecure
#: baseline); CrypTen's config reads stay cached (:mod:`mpcformer.mpc.fast_config`: same values).
PROTOCOL_PROFILES: dict[str, dict[str, object]] = {
    "mpcformer": {
        "fast_matmul": True, "reuse_weight_masks": True, "reuse_activation_masks": True, "overlap_dealer": True,
        "stream_triples": True, "fast_exchange": True, "randomness": "os",
    },
    "crypten": {
        "fast_matmul": False, "reuse_weight_masks": False, "reuse_activation_masks": False, "overlap_dealer": False,
        "stream_triples": False, "fast_exchange": False, "exact_truncation": False, "randomness": "crypten-insecure-baseline",
    },
}


def protocol_settings(profile: str) -> dict[str, object]:
    """The MPCConfig fields of a named protocol profile (a copy: callers add their own switches)."""
    if profile not in PROTOCOL_PROFILES:
        raise ValueError(f"unknown protocol {profile!r}; choose one of {', '.join(PROTOCOL_PROFILES)}")
    return dict(PROTOCOL_PROFILES[profile])


class MPCConfig(StrictModel):
    """How a party joins and runs an MPC session.

    ``dealer="ttp"`` runs CrypTen's trusted third party as its own process/actor (rank =
    world size). ``"tfp"`` lets party 0 generate the Beaver triples itself, which lets party 0
    learn the other party's inputs: it is only accepted with ``insecure_dealer=True``.
    """

    precision_bits: int = Field(default=16, ge=8, le=28, description="fixed-point fractional bits")
    dealer: Literal["ttp", "tfp"] = "ttp"
    insecure_dealer: bool = False
    backend: Literal["gloo", "nccl"] = "gloo"
    timeout_s: float = Field(default=120.0, gt=0, description="deadline of every rendezvous and collective")
    device: Literal["cpu", "cuda"] = Field(
        default="cpu", description="where this party's shares live and its arithmetic runs (cuda: exchanges go through host memory)"
    )
    fast_matmul: bool = Field(
        default=True, description="mpcformer's matmul path (2-matmul Beaver step, ring kernel choice); False = CrypTen as shipped"
    )
    matmul_kernel: Literal["auto", "limbs", "stock"] = Field(
        default="auto", description="int64 ring kernel on CPU: float64 limbs over BLAS, torch's int64 GEMM, or the faster one"
    )
    reuse_weight_masks: bool = Field(
        default=True,
        description="send each owner weight matrix once, one way, under a mask that later products reuse; "
        "one local matmul per party per product (TTP dealer, 2 parties, CPU); "
        "False = a fresh Beaver triple per product, as CrypTen ships",
    )
    reuse_activation_masks: bool = Field(
        default=True,
        description="LayerNorm opens x - mean once for its square and its product with each row's 1/sqrt(var) "
        "(TTP dealer, 2 parties, CPU); False = two openings, as CrypTen's square then product",
    )
    overlap_dealer: bool = Field(
        default=True,
        description="party 0 sends each dealer request before the opening and collects the answer after it "
        "(TTP dealer, CPU); False = CrypTen's order, the answer before the opening",
    )
    stream_triples: bool = Field(
        default=True,
        description="elementwise triples (products, squares, comparisons, bit conversions) from AES streams the "
        "dealer fills ahead: party 0 never waits for the dealer in them (TTP dealer, 2 parties, CPU); "
        "False = a request per product",
    )
    fast_exchange: bool = Field(
        default=True,
        description="open 2-party secrets with one all-gather (gloo, CPU) instead of gloo's all-reduce, "
        "which has a ~1.5 ms fixed cost; same rounds and bytes",
    )
    exact_truncation: bool = Field(
        default=False,
        description="divide shares by public integers (the truncation after every fixed-point product) with the "
        "dealer's help: one more opening each, never off by 2^64/y (TTP dealer, 2 parties, CPU, OS randomness, "
        "mpcformer's Beaver steps); False = CrypTen's local division, off by ~2^32 (real units) with "
        "probability |x|/2^64 per element",
    )
    randomness: Literal["os", "crypten-insecure-baseline"] = Field(
        default="os",
        description="'os': every seed and key (pairwise, dealer, local) is 128 bits from the OS and every mask is "
        "drawn from AES-128-CTR under it; 'crypten-insecure-baseline': CrypTen's own seeds and torch.randint "
        "(Mersenne Twister, 32 bits of entropy from the dealer): the benchmarks' measured baseline, never private",
    )
    transport: Literal["auto", "tls", "tcp"] = Field(
        default="auto",
        description="how parties and the dealer exchange messages: 'tls' = mutually authenticated TLS 1.3 with the "
        "session's certificates (credentials_dir), rendezvous included; 'tcp' = gloo over plain TCP (cleartext, "
        "unauthenticated rendezvous); 'auto' = tls when a party group's actors are on different nodes, else tcp",
    )
    credentials_dir: str | None = Field(
        default=None, description="directory with the session's TLS credentials (ca.pem, rank-<r>.pem, rank-<r>.key; "
        "mpcformer.mpc.credentials); None with tls: a party group issues them per group on the driver's filesystem",
    )
    functions: FunctionSettings = Field(default_factory=FunctionSettings)
    network: NetworkProfile | None = Field(
        default=None, description="emulate this link between parties (mode 'emulate'); None = this machine"
    )

    @model_validator(mode="after")
    def _dealer_is_explicitly_insecure(self) -> "MPCConfig":
        if self.dealer == "tfp" and not self.insecure_dealer:
            raise ValueError(
                "dealer 'tfp' lets party 0 see the client's inputs; set insecure_dealer: true "
                "to accept that, or use dealer: ttp"
            )
        return self

    @model_validator(mode="after")
    def _tls_on_gloo_only(self) -> "MPCConfig":
        if self.transport == "tls" and self.backend != "gloo":
            raise ValueError(f"transport 'tls' replaces gloo; it cannot carry backend {self.backend!r}")
        return self
