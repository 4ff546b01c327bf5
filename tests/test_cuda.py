"""Parties and dealer computing on CUDA (skipped without a GPU: run on the `device` machine).

scripts/device/gpu_bench.sh runs this file there before the GPU benchmark. On a CPU-only
machine every test here is skipped, and reported as skipped.
"""

from __future__ import annotations

import pytest
import torch

from mpcformer.inference.protocol import plaintext_logits
from mpcformer.mpc.config import MPCConfig
from mpcformer.mpc.launcher import run_local

import encrypted_model_fns as fns

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the device machine)"),
    pytest.mark.timeout(600),
]

CUDA = MPCConfig(device="cuda")


def _random_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30000, (2, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # one padded sentence
    return ids, mask


def test_shares_and_arithmetic_live_on_the_gpu():
    owner, client = run_local(fns.where_shares_live, config=CUDA)
    for party in (owner, client):
        assert party["session"] == "cuda"
        assert party["share"].startswith("cuda") and party["product"].startswith("cuda")


@pytest.mark.parametrize("combo", ["exact", "quad+2quad"])
def test_encrypted_forward_on_gpu_matches_plaintext(combo):
    ids, mask = _random_batch()
    job = {"model": "tiny-bert", "combo": combo, "input_ids": ids.tolist(), "attention_mask": mask.tolist()}
    (owner,), (client,) = run_local(fns.private_inference_jobs, args=([job],), config=CUDA, timeout_s=300)
    reference = plaintext_logits(fns.build_model("tiny-bert"), combo, ids, mask)
    error = (torch.tensor(client["logits"]) - reference).abs().max().item()
    assert error < 0.05, f"{combo} on CUDA: max |logit error| {error:.4f}"
    assert client["costs"]["total"]["rounds"] > 0 and "logits" not in owner


def test_ray_bench_runs_parties_and_dealer_on_one_gpu(tmp_path):
    from mpcformer.bench.runner import BenchConfig, run_bench
    from ray_support import embedded_ray

    with embedded_ray(num_cpus=4):
        cfg = BenchConfig(model="tiny", seq_len=8, approx=["exact", "quad+2quad"], launcher="ray", mpc=CUDA)
        report = run_bench(cfg)
    assert report["environment"]["gpu"]
    assert [c["approx"] for c in report["combinations"]] == ["exact", "quad+2quad"]
    assert all(c["latency_s"] > 0 and c["rounds"] > 0 for c in report["combinations"])
