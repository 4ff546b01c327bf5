"""Distillation sweeps on Ray Tune: a YAML grid of distillation runs, one trial each.

    name: sst2-minilm
    base: {teacher: runs/finetune/sst2-minilm/best, data: {task: sst2}}   # a DistillConfig
    grid:                                    # dotted DistillConfig keys -> values to try
      combo: [quad+2quad, quad+2relu]
      stage2.lr: [1.0e-5, 5.0e-5]
      baseline: [none, wo_d, wo_pd]
      seed: [0]

Each trial's output folder is derived from its parameters (not from Tune's trial id), so a trial
that crashes and is retried, or a sweep restored after an interruption, resumes its distillation
from the last checkpoint. Results are gathered into ``results.csv`` / ``results.md`` and the best
checkpoint per approximation is listed in ``best.json``. "Best" is the highest *validation* score
(the split every trial holds out of the training file with the same ``data.validation_seed``);
the dev split is the test set, reported beside it (``dev_*``) and never ranked on.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from mpcformer.config import StrictModel, build_config
from mpcformer.errors import UserError
from mpcformer.training.config import DistillConfig

__all__ = ["SweepConfig", "run_sweep", "trial_config"]

log = logging.getLogger(__name__)


class SweepConfig(StrictModel):
    name: str = Field("sweep", pattern=r"^[A-Za-z0-9_.+-]+$")
    base: dict[str, Any] = Field(default_factory=dict, description="DistillConfig fields shared by all trials")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="dotted DistillConfig key -> values")
    storage_path: str = "runs/sweeps"
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    max_concurrent_trials: int | None = Field(None, ge=1)
    max_failures: int = Field(2, ge=0, description="retries of a crashed trial (it resumes from its checkpoint)")

    @field_validator("grid")
    @classmethod
    def _non_empty_values(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            if not values:
                raise ValueError(f"grid key '{key}' has no values")
        return grid


def _slug(params: dict[str, Any]) -> str:
    text = ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in sorted(params.items()))
    return re.sub(r"[^A-Za-z0-9_.+=,-]", "_", text) or "default"


def trial_config(sweep: SweepConfig, params: dict[str, Any], sweep_dir: Path) -> DistillConfig:
    """The DistillConfig of one trial: ``base`` + the trial's grid values, output under ``sweep_dir``."""
    overrides = dict(params)
    overrides["output_dir"] = str(sweep_dir / "trials" / _slug(params))
    overrides.setdefault("progress", False)
    return build_config(DistillConfig, dict(sweep.base), overrides, source=f"sweep '{sweep.name}' trial {params}")


def validate_grid(sweep: SweepConfig, sweep_dir: Path) -> None:
    """Build every trial's config up front, so a typo fails before any trial starts."""
    import itertools

    keys = list(sweep.grid)
    for values in itertools.product(*(sweep.grid[k] for k in keys)):
        cfg = trial_config(sweep, dict(zip(keys, values)), sweep_dir)
        if cfg.data.validation_fraction == 0:
            raise UserError("a sweep ranks trials on the validation split: data.validation_fraction must be above 0")


def _trainable(params: dict[str, Any]) -> None:
    """One Tune trial: a resumable distillation run (its metrics reported once at the end)."""
    from ray import tune

    from mpcformer.training.distill import run_distill

    sweep = SweepConfig.model_validate(params.pop("__sweep__"))
    sweep_dir = Path(params.pop("__sweep_dir__"))
    cfg = trial_config(sweep, params, sweep_dir)
    metrics = run_distill(cfg)
    primary = metrics.get("primary_metric", "accuracy")
    tune.report({
        "score": float(metrics["validation"][primary]),  # the validation split chooses; dev is the test set
        "primary_metric": primary,
        "combo": cfg.combo,
        "baseline": cfg.baseline,
        "checkpoint_dir": str(metrics.get("checkpoint", "")),
        **{f"dev_{k}": float(v) for k, v in metrics["dev"].items() if isinstance(v, (int, float))},
        **{f"validation_{k}": float(v) for k, v in metrics["validation"].items() if isinstance(v, (int, float))},
        # the last logged training loss of each phase (stage1, stage2 or task)
        **{f"loss_{phase}": float(v["last"]) for phase, v in (metrics.get("final_losses") or {}).items()},
    })


def run_sweep(sweep: SweepConfig, resume: bool = True) -> dict[str, Any]:
    """Run (or resume) the sweep on the connected Ray cluster; returns the summary."""
    import ray
    from ray import tune

    from mpcformer.observability.tune import SweepMetricsCallback

    storage = Path(sweep.storage_path).resolve()
    sweep_dir = storage / sweep.name
    validate_grid(sweep, sweep_dir)
    space = {k: tune.grid_search(v) for k, v in sweep.grid.items()}
    space["__sweep__"] = sweep.model_dump()
    space["__sweep_dir__"] = str(sweep_dir)
    trainable = tune.with_resources(_trainable, {"cpu": sweep.cpus_per_trial, "gpu": sweep.gpus_per_trial})
    experiment = str(storage / sweep.name / "tune")
    if resume and tune.Tuner.can_restore(experiment):
        log.info("resuming sweep from %s", experiment)
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_errored=True, param_space=space)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                metric="score", mode="max", max_concurrent_trials=sweep.max_concurrent_trials
            ),
            run_config=tune.RunConfig(
                name="tune", storage_path=str(storage / sweep.name),
                failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
                callbacks=[SweepMetricsCallback(job=sweep.name, approx_key="combo")],
                verbose=1,
            ),
        )
    if not ray.is_initialized():
        raise UserError("connect to Ray first (mpcformer sweep does this for you)")
    grid = tuner.fit()
    return summarise(grid, sweep, sweep_dir)


def summarise(grid, sweep: SweepConfig, sweep_dir: Path) -> dict[str, Any]:
    """Write results.csv, results.md and best.json for a finished ResultGrid."""
    rows = []
    for result in grid:
        params = {k: v for k, v in (result.config or {}).items() if not k.startswith("__")}
        m = result.metrics or {}
        rows.append({
            **params,
            "combo": m.get("combo", params.get("combo")),
            "baseline": m.get("baseline", params.get("baseline", "none")),
            "score": m.get("score"),
            "metric": m.get("primary_metric"),
            "checkpoint_dir": m.get("checkpoint_dir"),
            "status": "error" if result.error else "ok",
            "error": str(result.error).splitlines()[0] if result.error else "",
        })
    sweep_dir.mkdir(parents=True, exist_ok=True)
    columns = sorted({k for r in rows for k in r}, key=lambda c: (c not in sweep.grid, c))
    import csv

    with open(sweep_dir / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    md = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    md += ["| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in columns) + " |" for r in rows]
    (sweep_dir / "results.md").write_text(f"# Sweep {sweep.name}\n\n" + "\n".join(md) + "\n")
    best: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["status"] == "ok" and r["score"] is not None and r["baseline"] == "none":
            if r["combo"] not in best or r["score"] > best[r["combo"]]["score"]:
                best[r["combo"]] = {"score": r["score"], "checkpoint_dir": r["checkpoint_dir"], "params": r}
    (sweep_dir / "best.json").write_text(json.dumps(best, indent=2, default=str))
    return {
        "sweep_dir": str(sweep_dir),
        "trials": len(rows),
        "failed": sum(r["status"] == "error" for r in rows),
        "best": best,
        "rows": rows,
    }
