"""A Ray job that produces every mpcformer metric from real work (test driver).

Inference is the real encrypted inference job, :func:`mpcformer.inference.job.run_infer` (the
``tiny`` preset, one combo after another, on the first ``--limit`` sentences of SST-2 dev): its
parties record their forwards, the scheduler party-group health and batches in flight, the driver
batches. The sweep is small: tiny plaintext students fitted as Ray tasks, one per approximation.

    python tests/obs_workload.py --address 127.0.0.1:6379 --data /work/shared/data/sst2 --out /tmp/x

Prints ``WORKLOAD DONE <summary json>`` and then waits for stdin to close before leaving Ray, so
the driver's gauges (group health, batches in flight, sweep) stay exported while a test queries
Prometheus.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import ray


@ray.remote(num_cpus=0)
def fit_student(combo_name: str, steps: int, seed: int) -> dict:
    """A tiny plaintext 'distillation': fit W so act(xW) matches a GeLU teacher; losses per step."""
    import torch

    from mpcformer.approx import Combo

    act = Combo.parse(combo_name).activation_fn(encrypted=False)
    gen = torch.Generator().manual_seed(seed)
    x, teacher_w = torch.randn(64, 8, generator=gen), torch.randn(8, 4, generator=gen)
    target = torch.nn.functional.gelu(x @ teacher_w)
    w = torch.zeros(8, 4, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.05)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(act(x @ w), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    agreement = ((act(x @ w) > 0.5) == (target > 0.5)).float().mean().item()
    return {"losses": losses, "accuracy": agreement}


def run_inference(job: str, combos: list[str], data_dir: str, limit: int, batch_size: int, out: str) -> dict:
    """The real encrypted inference job on the connected cluster; returns its summary."""
    from mpcformer.cluster.config import PartyGroupConfig
    from mpcformer.inference.job import InferConfig, run_infer
    from mpcformer.data.loading import DataConfig
    from mpcformer.mpc.config import MPCConfig

    group = PartyGroupConfig(cpus_per_party=0.5, cpus_for_dealer=0.5, mpc=MPCConfig(timeout_s=90))  # as infer-tiny
    cfg = InferConfig(
        model="tiny", data=DataConfig(task="sst2", data_dir=data_dir, max_length=32), split="dev",
        combos=combos, batch_size=batch_size, limit=limit, out=out, check_plaintext=False, job_name=job,
        group=group,
    )
    status = run_infer(cfg, progress=False)
    return json.loads(Path(status["summary"]).read_text())  # the client's summary (this test plays both roles)


def run_sweep(job: str, combos: list[str]) -> None:
    from mpcformer.observability import record_trial, record_trial_losses

    refs = {}
    for i, combo in enumerate(combos):
        trial = f"trial-{i}"
        record_trial("running", job=job, trial=trial, approx=combo)
        refs[trial] = (combo, fit_student.remote(combo, 30, i))
    for trial, (combo, ref) in refs.items():
        result = ray.get(ref, timeout=120)
        record_trial_losses({"logits": result["losses"][-1], "hidden": result["losses"][len(result["losses"]) // 2]},
                            job=job, trial=trial, approx=combo)
        record_trial("finished", job=job, trial=trial, approx=combo, metric=result["accuracy"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--job", default="obs-test")
    parser.add_argument("--sweep-job", default="obs-sweep")
    parser.add_argument("--approx", default="exact,quad+2quad")
    parser.add_argument("--data", required=True, help="folder with SST-2 dev.tsv")
    parser.add_argument("--limit", type=int, default=8, help="first N dev sentences")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--out", required=True, help="the inference job's output folder")
    args = parser.parse_args(argv)
    combos = args.approx.split(",")
    ray.init(address=args.address, log_to_driver=False)
    run_sweep(args.sweep_job, combos)
    summary = run_inference(args.job, combos, args.data, args.limit, args.batch_size, args.out)
    print("WORKLOAD DONE " + json.dumps(summary), flush=True)
    sys.stdin.read()  # stay connected: Ray drops this driver's gauges once it leaves
    ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
