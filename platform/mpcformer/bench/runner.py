"""``mpcformer bench``: approximation combinations side by side under real MPC, in one run.

Each combination runs one encrypted forward (``repeats`` times, the fastest kept) of the same model
and inputs on 2 parties + the TTP dealer (local processes, or Ray party actors), and reports the
client's wall time, communication time, rounds and bytes, per operation category, plus LAN/WAN
projections from the measured counts.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import platform as std_platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

from pydantic import Field

from mpcformer.approx import Combo
from mpcformer.config import ComboName, StrictModel
from mpcformer.mpc.config import MPCConfig
from mpcformer.mpc.network import PROFILES, dealer_terms, project_latency
from mpcformer.operations import party_operation

if TYPE_CHECKING:
    from mpcformer.cluster.config import PartyGroupConfig
    from mpcformer.mpc.launcher import Launcher

__all__ = ["BenchConfig", "run_bench", "run_combo", "bench_party"]

log = logging.getLogger(__name__)


class BenchConfig(StrictModel):
    """What ``mpcformer bench`` runs (YAML: ``jobs/configs/bench.yaml``); every flag left out keeps these."""

    model: str = Field(default="tiny", description="preset (tiny, minilm, bert-base, bert-large) or HF path")
    seq_len: int = Field(default=16, ge=2, le=4096, description="tokens per sequence")
    batch_size: int = Field(default=1, ge=1, le=256, description="sequences per MPC forward")
    approx: list[ComboName] = Field(default_factory=lambda: ["exact", "quad+2quad"], min_length=1)
    repeats: int = Field(default=1, ge=1, le=20, description="forwards per combination (the fastest kept)")
    seed: int = 0
    launcher: Literal["local", "ray"] = "local"
    deadline_s: float = Field(default=7200.0, gt=0, description="whole-forward deadline per combination")
    warmup: bool = Field(
        default=True, description="one untimed 2-token forward first, so first-call costs stay out of the timings"
    )
    gpus_per_actor: float | None = Field(
        default=None, gt=0, le=1,
        description="Ray launcher on CUDA: GPUs per party and for the dealer; None: all share one GPU",
    )
    role_resources: bool = Field(
        default=False, description="Ray launcher: the owner, the client and the dealer each on a node offering its "
        "role resource (mpc_owner, mpc_client, mpc_dealer), one actor per node (STRICT_SPREAD)",
    )
    truncation_risk: bool = Field(
        default=True,
        description="with CrypTen's truncation (exact_truncation off): one more untimed forward that records every "
        "truncation and reports the expected share of sequences with a corrupted element (bench.json 'truncation'; "
        "CPU only)",
    )
    out: str = Field(default="runs/bench", description="folder for bench.json, bench.md and bench.png")
    mpc: MPCConfig = Field(default_factory=MPCConfig)


@party_operation
def bench_party(
    rank: int, model_name: str, combo_name: str, seq_len: int, batch_size: int, seed: int, repeats: int,
    warmup: bool = True, truncation_risk: bool = False,
) -> dict:
    """One party's side of a benchmark forward (module level: shipped to processes and actors).

    With ``warmup`` an untimed forward on the first 2 tokens runs first: a process's first forward
    pays one-time costs (lazy imports, torch's meta and dispatcher set-up; ~2 s on ``tiny``, ~5 s
    on ``bert-base``) that are not the approximation's. The encrypted model is built by the first
    call of the session and served again to the next ones; its cost is returned as ``setup``.
    With ``truncation_risk`` one more untimed forward records every truncation
    (:func:`mpcformer.bench.truncation.recording`: the client's shares go to the owner, fine for
    the benchmark's random ids only); party 0 returns the tallies as ``truncation``.
    """
    import torch

    from mpcformer.models.presets import load_preset_model
    from mpcformer.inference.protocol import run_private_inference
    from mpcformer.mpc import progress, runtime
    from mpcformer.mpc.costs import CostLedger

    combo = Combo.parse(combo_name)
    model = input_ids = attention_mask = None
    if rank == 0:  # the model owner holds the weights
        model = load_preset_model(model_name, num_labels=2, seed=seed)
        model.eval()
    else:  # the client holds the token ids (random ids: timing does not depend on the text)
        gen = torch.Generator().manual_seed(seed)
        vocab = _vocab_size(model_name)
        input_ids = torch.randint(1000, vocab, (batch_size, seq_len), generator=gen)
        attention_mask = torch.ones(batch_size, seq_len, dtype=torch.long)
    setup: dict | None = None
    if warmup:
        progress.report(kind="forward", label="warm-up")
        setup = run_private_inference(
            rank, model=model, combo=combo,
            input_ids=None if input_ids is None else input_ids[:, :2],
            attention_mask=None if attention_mask is None else attention_mask[:, :2],
        )["setup"]
    best: dict | None = None
    for repeat in range(repeats):
        progress.report(kind="forward", label=f"forward {repeat + 1}/{repeats}")
        ledger = CostLedger()
        result = run_private_inference(
            rank, model=model, input_ids=input_ids, attention_mask=attention_mask, combo=combo, ledger=ledger
        )
        costs = result["costs"]
        setup = setup or result["setup"]
        if best is None or costs["total"]["time_s"] < best["total"]["time_s"]:
            best = costs
    truncation = None
    if truncation_risk:
        from mpcformer.bench.truncation import recording

        progress.report(kind="forward", label="truncation risk")
        ledger = CostLedger()
        with recording(rank, ledger) as recorder:
            run_private_inference(
                rank, model=model, input_ids=input_ids, attention_mask=attention_mask, combo=combo, ledger=ledger
            )
        truncation = recorder.summary() if rank == 0 else None
    return {"costs": best, "setup": setup, "truncation": truncation, "protocol_path": runtime.describe()}


def _vocab_size(model_name: str) -> int:
    from mpcformer.models.presets import preset_config

    return int(preset_config(model_name).vocab_size)


def _combo_result(name: str, costs: dict, overlap_dealer: bool) -> dict:
    total = costs["total"]
    ops = {
        op: {
            "time_s": c["time_s"], "comm_time_s": c["comm_time_s"], "rounds": c["rounds"], "bytes": c["bytes"],
            # the operation alone on each link: its compute here plus its rounds and bytes (the dealer's
            # waits, if any, are charged to the whole forward only)
            "projected_latency_s": {
                prof: project_latency(max(c["time_s"] - c["comm_time_s"], 0.0), c["rounds"], c["bytes"], PROFILES[prof])
                for prof in PROFILES
            },
        }
        for op, c in costs["by_category"].items()
    }
    compute_s = max(total["time_s"] - total["comm_time_s"], 0.0)
    return {
        "approx": name,
        "latency_s": total["time_s"],
        "comm_time_s": total["comm_time_s"],
        "rounds": total["rounds"],
        "bytes": total["bytes"],
        "dealer": costs["dealer"],
        "setup": {k: costs["setup"][k] for k in ("time_s", "rounds", "bytes")},
        "truncation": costs.get("truncation"),
        "protocol_path": costs.get("protocol_path"),
        "placement": costs.get("placement"),
        "ops": ops,
        "projected_latency_s": {
            prof: project_latency(
                compute_s, total["rounds"], total["bytes"], PROFILES[prof], **dealer_terms(costs["dealer"], overlap_dealer)
            )
            for prof in PROFILES
        },
    }


def _environment(device: str = "cpu") -> dict[str, Any]:
    from mpcformer.mpc.compat import crypten
    import ray
    import torch
    import transformers

    gpu = torch.cuda.get_device_name() if device == "cuda" and torch.cuda.is_available() else None
    return {
        "machine": std_platform.machine(),
        "processor": std_platform.processor(),
        "cpus": os.cpu_count(),
        "device": device,
        "gpu": gpu,
        "python": std_platform.python_version(),
        "versions": {
            "torch": torch.__version__, "crypten": getattr(crypten, "__version__", "0.4.1"),
            "ray": ray.__version__, "transformers": transformers.__version__,
        },
    }


def ray_group_config(cfg: BenchConfig) -> "PartyGroupConfig":
    """Party group for ``launcher: ray``: on CUDA every party and the dealer hold a GPU (share).

    The dealer needs one too: CrypTen's TTP generates the triples on the parties' device. The
    default share, 1 / (parties + dealer), puts the whole group on one GPU.
    """
    from mpcformer.cluster.config import PartyGroupConfig

    group = PartyGroupConfig(use_gpu=cfg.mpc.device == "cuda", role_resources=cfg.role_resources, mpc=cfg.mpc)
    if not group.use_gpu:
        return group
    share = cfg.gpus_per_actor or round(1.0 / (group.world_size + 1), 4)
    return group.model_copy(update={"gpus_per_party": share, "gpus_for_dealer": share})


def launcher(cfg: BenchConfig) -> "Launcher":
    """Where the parties run: local processes, or a party group of Ray actors (``cfg.launcher``)."""
    if cfg.launcher == "ray":
        from mpcformer.cluster.party_group import RayLauncher

        return RayLauncher(ray_group_config(cfg))
    from mpcformer.mpc.launcher import LocalLauncher

    return LocalLauncher(cfg.mpc, timeout_s=cfg.deadline_s)


PartyProgress = Callable[[dict[str, Any]], None]
_CLIENT = 1  # the client's view is the user-visible one: its wall time, its progress


def run_combo(cfg: BenchConfig, name: str, on_progress: PartyProgress | None = None) -> dict:
    """One combination's forward on 2 parties + dealer (``cfg.launcher``): the client's cost ledger,
    with ``setup``, what building the encrypted model cost it (once per session, not in ``total``),
    and ``dealer``, the owner's traffic with the dealer (the client has none).

    ``on_progress`` receives the client's progress events (forwards started, layers done), relayed
    by the local launcher and by the Ray party group alike.
    """
    from mpcformer.mpc.truncation import exact_under

    risk = cfg.truncation_risk and not exact_under(cfg.mpc) and cfg.mpc.device == "cpu"  # the recorder: gloo, CPU
    args = (cfg.model, name, cfg.seq_len, cfg.batch_size, cfg.seed, cfg.repeats, cfg.warmup, risk)
    relay = None if on_progress is None else (lambda rank, event: on_progress(event) if rank == _CLIENT else None)
    parties = launcher(cfg)
    results = parties.run(bench_party, args=args, on_progress=relay)
    owner = results[1 - _CLIENT]
    placements = getattr(parties, "placements", None)  # the Ray launcher's: node of each party and the dealer
    return {
        **results[_CLIENT]["costs"], "dealer": owner["costs"]["dealer"], "setup": results[_CLIENT]["setup"],
        "truncation": _truncation_risk(cfg, owner["truncation"]), "protocol_path": owner["protocol_path"],
        "placement": placements[-1] if placements else None,
    }


def _truncation_risk(cfg: BenchConfig, tallies: dict | None) -> dict:
    """bench.json's ``truncation``: exact, or the recorded forward's expected corruptions per sequence."""
    from mpcformer.mpc.truncation import exact_under

    if exact_under(cfg.mpc):
        return {"exact": True, "expected_corrupted_per_sequence": 0.0, "p_sequence_corrupted": 0.0}
    if tallies is None:  # not measured (truncation_risk off, or on CUDA)
        return {"exact": False, "expected_corrupted_per_sequence": None, "p_sequence_corrupted": None}
    per_forward = tallies["p_sequence_corrupted"]  # of the whole batch: B sequences
    # 1.0 once a corrupted element has spread (every later value is then garbage, p ~ 1/2 each)
    per_sequence = 1.0 if per_forward >= 1.0 else -math.expm1(math.log1p(-per_forward) / cfg.batch_size)
    return {
        "exact": False,
        "expected_corrupted_per_sequence": tallies["expected_corrupted"] / cfg.batch_size,
        "p_sequence_corrupted": per_sequence,
        "elements_truncated_per_sequence": tallies["elements"] / cfg.batch_size,
        "failures_seen": tallies["failures_seen"],
        "expected_by_category": tallies["expected_by_category"],
    }


def _cluster(cfg: BenchConfig) -> contextlib.AbstractContextManager:
    """The Ray connection for ``launcher: ray`` (the submitted-to cluster, or an embedded one)."""
    if cfg.launcher != "ray":
        return contextlib.nullcontext()
    from mpcformer.cluster_connect import connect

    return connect(num_cpus=max(2, ray_group_config(cfg).world_size + 1))


def run_bench(
    cfg: BenchConfig,
    progress: Callable[[str], None] | None = None,
    party_progress: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict:
    """Run every combination in ``cfg.approx`` and return the report (see ``bench.json``).

    ``progress(name)`` is called after each combination; ``party_progress(name, event)`` with the
    client's events while one runs.
    """
    combos = []
    with _cluster(cfg):  # one Ray cluster for every combination, not one each
        for name in cfg.approx:
            start = time.perf_counter()
            relay = None if party_progress is None else (lambda event, name=name: party_progress(name, event))
            costs = run_combo(cfg, name, on_progress=relay)
            combos.append(_combo_result(name, costs, cfg.mpc.overlap_dealer))
            log.info("bench %s: %.2fs", name, time.perf_counter() - start)
            if progress:
                progress(name)  # called after each combination finishes
    exact = next((c for c in combos if c["approx"] == "exact"), None)
    for c in combos:
        c["speedup_vs_exact"] = (exact["latency_s"] / c["latency_s"]) if exact else None
        c["rounds_saved_vs_exact"] = (exact["rounds"] - c["rounds"]) if exact else None
    return {
        "settings": cfg.model_dump(mode="json"),
        "protocol_path": combos[0]["protocol_path"],  # the owner's runtime (every combination runs the same config)
        "environment": _environment(cfg.mpc.device),
        "profiles": {k: v.model_dump() for k, v in PROFILES.items()},
        "combinations": combos,
    }


def write_report(report: dict, out_dir: Path) -> list[Path]:
    """Write ``bench.json``, ``bench.md`` and ``bench.png`` into ``out_dir``."""
    import json

    from mpcformer.bench.report import render_markdown, render_plot

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "bench.json", out_dir / "bench.md", out_dir / "bench.png"]
    paths[0].write_text(json.dumps(report, indent=2))
    paths[1].write_text(render_markdown(report))
    render_plot(report, paths[2])
    return paths
