"""A Ray job that produces every mpcformer metric from real encrypted computation (test driver).

Two party actors and a dealer actor open one MPC session (the session layer: MPCSession,
run_dealer) and run a small encrypted Transformer block (attention + feed-forward, the
approximation's normaliser and activation) once per batch; each party records its
``CostLedger.to_dict()`` with ``record_forward``. The driver records batches, party-group
health and a small sweep (tiny plaintext students fitted as Ray tasks, one per approximation).

    python tests/obs_workload.py --address 127.0.0.1:6379 --approx exact,quad+2quad

Prints ``WORKLOAD DONE <json>`` and then waits for stdin to close before leaving Ray, so the
actors' metrics stay exported while a test queries Prometheus.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import ray

B, T, D, H, F = 2, 8, 16, 2, 32  # batch, tokens, hidden, heads, feed-forward width
MODEL = "tiny-block"


def encrypted_block(rank: int, combo_name: str, seed: int) -> dict:
    """One encrypted forward of the tiny block on party ``rank``; returns the ledger's dict."""
    import torch

    from mpcformer.approx import Combo
    from mpcformer.mpc.compat import crypten
    from mpcformer.mpc.costs import CostLedger

    combo = Combo.parse(combo_name)
    gen = torch.Generator().manual_seed(seed)
    weights = {n: torch.randn(*shape, generator=gen) / math.sqrt(shape[0])
               for n, shape in (("wq", (D, D)), ("wk", (D, D)), ("wv", (D, D)), ("w1", (D, F)), ("w2", (F, D)))}
    x = torch.randn(B, T, D, generator=gen)
    mask = torch.ones(B, 1, 1, T)
    mask[1, ..., T - 2:] = 0  # the second sequence is padded
    ledger = CostLedger()
    with ledger.active():
        with ledger.scope("embedding"):
            h = crypten.cryptensor(x, src=1)  # the client's input  (B, T, D)
            w = {n: crypten.cryptensor(t, src=0) for n, t in weights.items()}  # the owner's weights
        with ledger.scope("linear"):
            q, k, v = (h.matmul(w[n]).reshape(B, T, H, D // H).transpose(1, 2) for n in ("wq", "wk", "wv"))  # (B, H, T, D/H)
        with ledger.scope("attention-matmul"):
            scores = q.matmul(k.transpose(-1, -2)) * (1.0 / math.sqrt(D // H))  # (B, H, T, T)
        with ledger.scope("softmax"):
            probs = combo.normaliser_fn(encrypted=True)(scores, mask)
        with ledger.scope("attention-matmul"):
            context = probs.matmul(v).transpose(1, 2).reshape(B, T, D)  # (B, T, D)
        with ledger.scope("linear"):
            hidden = (context + h).matmul(w["w1"])  # (B, T, F)
        with ledger.scope("activation"):
            hidden = combo.activation_fn(encrypted=True)(hidden)
        with ledger.scope("linear"):
            out = hidden.matmul(w["w2"])  # (B, T, D)
        with ledger.scope("pooler"):
            pooled = out[:, 0]  # (B, D)
        with ledger.scope("classifier"):
            pooled.get_plain_text(dst=1)
    return ledger.to_dict()


@ray.remote(num_cpus=0)
class Party:
    def __init__(self, rank: int, rendezvous: str):
        import torch

        torch.set_num_threads(1)
        self.rank, self.rendezvous, self.session = rank, rendezvous, None

    def open(self) -> None:
        from mpcformer.mpc.config import MPCConfig
        from mpcformer.mpc.session import MPCSession

        self.session = MPCSession(self.rank, 2, self.rendezvous, MPCConfig(timeout_s=90)).__enter__()

    def forward(self, combo: str, seed: int, job: str) -> dict:
        from mpcformer.observability import record_forward

        costs = encrypted_block(self.rank, combo, seed)
        record_forward(costs, approx=combo, model=MODEL, job=job, rank=self.rank, sequences=B)
        return costs["total"]

    def close(self) -> None:
        if self.session is not None:
            self.session.close()


@ray.remote(num_cpus=0)
class Dealer:
    def serve(self, rendezvous: str) -> None:
        from mpcformer.mpc.config import MPCConfig
        from mpcformer.mpc.session import run_dealer

        run_dealer(2, rendezvous, MPCConfig(timeout_s=90))


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


def run_inference(job: str, combos: list[str], batches: int) -> dict:
    from mpcformer.observability import set_group_health, track_batch

    rendezvous_dir = Path(tempfile.mkdtemp(prefix="mpcf-rdv-"))
    rendezvous = f"file://{rendezvous_dir / 'rdv'}"
    parties = [Party.remote(rank, rendezvous) for rank in range(2)]
    dealer = Dealer.remote()
    serving = dealer.serve.remote(rendezvous)
    ray.get([p.open.remote() for p in parties], timeout=120)
    set_group_health(True, job=job, group="group-0")
    totals: dict[str, list] = {}
    for combo in combos:
        for batch in range(batches):
            with track_batch(job=job, model=MODEL, approx=combo, sequences=B):
                totals.setdefault(combo, []).append(
                    ray.get([p.forward.remote(combo, batch, job) for p in parties], timeout=120)[0])
            time.sleep(1.0)  # let the 1 s metrics export and scrape see each batch apart
    ray.get([parties[1].close.remote()], timeout=60)
    ray.get([parties[0].close.remote()], timeout=60)  # rank 0 last: it tells the dealer to exit
    ray.get(serving, timeout=60)
    shutil.rmtree(rendezvous_dir, ignore_errors=True)
    return {"parties": parties, "dealer": dealer, "totals": totals}


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
    parser.add_argument("--batches", type=int, default=3)
    args = parser.parse_args(argv)
    combos = args.approx.split(",")
    ray.init(address=args.address, log_to_driver=False)
    run_sweep(args.sweep_job, combos)
    state = run_inference(args.job, combos, args.batches)
    print("WORKLOAD DONE " + json.dumps(state["totals"]), flush=True)
    sys.stdin.read()  # keep the actors (and their exported metrics) until the test is done
    from mpcformer.observability import set_group_health

    set_group_health(False, job=args.job, group="group-0")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
