"""Distillation sweeps on Ray Tune: a YAML grid of distillation runs, one trial each.

    name: sst2-minilm
    base: {teacher: runs/finetune/sst2-minilm/best, data: {task: sst2}}   # a DistillConfig
    grid:                                    # dotted DistillConfig keys -> values to try
      combo: [quad+2quad, quad+2relu]
      stage2.lr: [1.0e-5, 5.0e-5]
      baseline: [none, wo_d, wo_pd]
      seed: [0]
    prerequisites:                           # optional: path -> the command that makes it
      runs/finetune/sst2-minilm/best: mpcformer finetune --config finetune-sst2-minilm

A config with ``tasks:`` in place of ``grid:`` is a GLUE suite (a teacher per task, then its
students and baselines): :mod:`mpcformer.suite`, which uses this module's trial machinery.

Before any trial starts, on the driver: relative paths (``storage_path``, the teacher and data
paths in ``base`` and ``grid``, the ``prerequisites``) are made absolute against the directory the
command runs in (a trial runs in a folder of Tune's, on any node), every trial's config is
validated, and the paths the trials read are checked on a node that can run a trial; a missing one
stops the sweep with one line naming it and the command that makes it.

Each trial's output folder is derived from its parameters (not from Tune's trial id), so a trial
that crashes and is retried (``max_failures``), or a sweep restored after an interruption, resumes
its distillation from the last checkpoint. An error no retry can fix (a :class:`UserError`, an
invalid config, a missing file) ends its trial at once, without retries. Results are gathered into
``results.csv`` / ``results.md`` (with each failed trial's cause and every trial's attempts) and the
best checkpoint per approximation is listed in ``best.json``. "Best" is the highest *validation*
score (the split every trial holds out of the training file with the same ``data.validation_seed``);
the dev split is the test set, reported beside it (``dev_*``) and never ranked on.
"""

from __future__ import annotations

import copy
import csv
import itertools
import json
import logging
import os
import re
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, get_args

from pydantic import Field, ValidationError, field_validator, model_validator

from mpcformer.config import ComboName, StrictModel, apply_overrides, build_config
from mpcformer.errors import UserError
from mpcformer.training.config import Baseline, DistillConfig

__all__ = [
    "SweepConfig", "SuiteTask", "MpcExamples", "run_sweep", "trial_config", "trial_configs", "validate_grid",
    "resolve_paths", "missing_prerequisites", "check_prerequisites", "error_cause", "failure_lines", "TrialStopped",
]

log = logging.getLogger(__name__)

#: DistillConfig keys that hold paths the trials read (relative ones are resolved on the driver)
PATH_KEYS = ("teacher", "data.data_dir", "data.train_file", "data.dev_file")

#: Errors no retry can fix. Tune's FailureConfig retries every failure, so a trial that hits one
#: reports ``NOT_RETRIED_KEY`` first and the sweep's callback (:func:`_no_retry_callback`) makes
#: the failure that follows final.
NOT_RETRIED = (UserError, ValidationError, FileNotFoundError, NotADirectoryError)
NOT_RETRIED_KEY = "not_retried"

#: How long the driver waits for a node that can run a trial to check the prerequisites.
PREREQUISITE_CHECK_TIMEOUT_S = 120.0

#: One trial's work: its DistillConfig -> metrics as :func:`mpcformer.training.distill.run_distill` returns.
TrialRunner = Callable[[DistillConfig], dict[str, Any]]


#: The arms of a suite that are the paper's baselines (DistillConfig.baseline other than "none").
BASELINE_ARMS = tuple(b for b in get_args(Baseline) if b != "none")

#: The arms of a suite by default: both approximations distilled, and the paper's two baselines.
SUITE_ARMS = ["quad+2quad", "quad+2relu", *BASELINE_ARMS]

#: The tasks a suite averages by default (GLUE's small and medium sets; WNLI is reported apart).
SUITE_AVERAGE = ["cola", "sst2", "mrpc", "stsb", "rte"]


#: Dev examples a distilled student runs under MPC: a count (0: none), or "all" of the dev split.
MpcExamples = Annotated[int, Field(ge=0)] | Literal["all"]


class SuiteTask(StrictModel):
    """One task of a suite (``tasks:`` form, :mod:`mpcformer.suite`); its key names the task."""

    data: dict[str, Any] = Field(default_factory=dict, description="data fields of its teacher and its students")
    teacher: dict[str, Any] = Field(default_factory=dict, description="FinetuneConfig fields of its teacher")
    distill: dict[str, Any] = Field(default_factory=dict, description="DistillConfig fields of its arms")
    mpc_examples: MpcExamples | None = Field(None, description="dev examples under MPC; None: the suite's")


class SweepConfig(StrictModel):
    name: str = Field("sweep", pattern=r"^[A-Za-z0-9_.+-]+$")
    base: dict[str, Any] = Field(default_factory=dict, description="DistillConfig fields shared by all trials")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="dotted DistillConfig key -> values")
    prerequisites: dict[str, str] = Field(
        default_factory=dict, description="path the trials need -> the command that makes it (said when it is missing)"
    )
    storage_path: str = "runs/sweeps"
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    max_concurrent_trials: int | None = Field(None, ge=1)
    max_failures: int = Field(2, ge=0, description="retries of a crashed trial (it resumes from its checkpoint)")
    # the suite form (mpcformer.suite): per task a teacher, then its arms; ``base`` is then shared by the arms
    tasks: dict[str, SuiteTask] = Field(default_factory=dict, description="task name -> its settings (suite form)")
    teacher_base: dict[str, Any] = Field(default_factory=dict, description="FinetuneConfig fields of every teacher")
    arms: list[str] = Field(default_factory=lambda: list(SUITE_ARMS), description="approximations, wo_d, wo_pd")
    baseline_combo: ComboName = "quad+2quad"  # what the baselines wo_d and wo_pd train
    teachers_dir: str | None = None  # teachers trained elsewhere: <teachers_dir>/<task>/best; None = train them
    average_tasks: list[str] = Field(default_factory=lambda: list(SUITE_AVERAGE),
                                     description="tasks the report averages; the others are reported apart")
    mpc_examples: MpcExamples = Field(200, description="dev examples per task each distilled arm runs under MPC")
    mpc_base: dict[str, Any] = Field(default_factory=dict, description="InferConfig fields of every MPC run "
                                     "(batch_size, group, pool); the suite sets the model, data and output")

    @field_validator("arms")
    @classmethod
    def _known_arms(cls, arms: list[str]) -> list[str]:
        from mpcformer.approx import Combo

        if not arms or len(set(arms)) != len(arms):
            raise ValueError("arms must be a non-empty list without repeats")
        return [arm if arm in BASELINE_ARMS else Combo.parse(arm).name for arm in arms]

    @model_validator(mode="after")
    def _one_form(self) -> "SweepConfig":
        if self.tasks and self.grid:
            raise ValueError("a suite (tasks:) takes no grid: its trials are every task x every arm")
        return self

    @field_validator("grid")
    @classmethod
    def _non_empty_values(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            if not values:
                raise ValueError(f"grid key '{key}' has no values")
        return grid


# ----------------------------------------------------------------------------- paths
def _absolute(value: Any, base_dir: Path) -> Any:
    if not isinstance(value, str) or not value:
        return value
    return os.path.abspath(os.path.join(base_dir, os.path.expanduser(value)))


def _dotted_get(mapping: dict[str, Any], key: str) -> tuple[bool, Any]:
    node: Any = mapping
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def resolve_paths(sweep: SweepConfig, base_dir: str | Path | None = None) -> SweepConfig:
    """``sweep`` with every relative path made absolute against ``base_dir`` (default: the current
    directory, where the command was given): ``storage_path``, the :data:`PATH_KEYS` in ``base``
    (their defaults too) and in ``grid``, and the ``prerequisites``. Absolute paths stay as they are."""
    base_dir = Path(base_dir or os.getcwd())
    base, grid = copy.deepcopy(sweep.base), dict(sweep.grid)
    defaults = DistillConfig().model_dump()
    for key in PATH_KEYS:
        if key in grid:
            grid[key] = [_absolute(v, base_dir) for v in grid[key]]
            continue
        found, value = _dotted_get(base, key)
        if not found:
            value = _dotted_get(defaults, key)[1]
        if value is not None:
            base = apply_overrides(base, {key: _absolute(value, base_dir)})
    return sweep.model_copy(update={
        "base": base,
        "grid": grid,
        "storage_path": _absolute(sweep.storage_path, base_dir),
        "prerequisites": {_absolute(path, base_dir): how for path, how in sweep.prerequisites.items()},
    })


# ----------------------------------------------------------------------------- trial configs
def _slug(params: dict[str, Any]) -> str:
    text = ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in sorted(params.items()))
    return re.sub(r"[^A-Za-z0-9_.+=,-]", "_", text) or "default"


def _trial_dir(sweep_dir: Path, params: dict[str, Any]) -> Path:
    return sweep_dir / "trials" / _slug(params)


def _grid_points(sweep: SweepConfig) -> list[dict[str, Any]]:
    keys = list(sweep.grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(sweep.grid[k] for k in keys))]


def trial_config(sweep: SweepConfig, params: dict[str, Any], sweep_dir: Path) -> DistillConfig:
    """The DistillConfig of one trial: ``base`` + the trial's grid values, output under ``sweep_dir``."""
    overrides = dict(params)
    overrides["output_dir"] = str(_trial_dir(sweep_dir, params))
    overrides.setdefault("progress", False)
    return build_config(DistillConfig, dict(sweep.base), overrides, source=f"sweep '{sweep.name}' trial {params}")


def trial_configs(sweep: SweepConfig, sweep_dir: Path) -> list[DistillConfig]:
    """Every trial's config; the first invalid one raises :class:`~mpcformer.config.ConfigError`."""
    return [trial_config(sweep, params, sweep_dir) for params in _grid_points(sweep)]


def validate_grid(sweep: SweepConfig, sweep_dir: Path) -> None:
    """Build every trial's config up front, so a typo fails before any trial starts."""
    for cfg in trial_configs(sweep, sweep_dir):
        if cfg.data.validation_fraction == 0:
            raise UserError("a sweep ranks trials on the validation split: data.validation_fraction must be above 0")


# ----------------------------------------------------------------------------- prerequisites
def _teacher_hint(cfg: DistillConfig) -> str:
    folder = Path(cfg.teacher)
    data = f" --data-dir {cfg.data.data_dir}" if cfg.data.data_dir else ""
    if folder.name == "best":
        return (f"make it with: mpcformer finetune --task {cfg.data.task}{data} --output-dir {folder.parent} "
                "(it writes <output-dir>/best)")
    return "point base.teacher at a folder that mpcformer finetune wrote (<output-dir>/best)"


def _needed_paths(sweep: SweepConfig, cfgs: list[DistillConfig]) -> dict[str, tuple[str, str]]:
    """Path -> (what it is, how to make it): the sweep's ``prerequisites`` first, with their
    commands, then the teacher and data paths of every trial."""
    found: dict[str, tuple[str, str]] = {}
    for cfg in cfgs:
        found.setdefault(cfg.teacher, ("teacher checkpoint", _teacher_hint(cfg)))
        if cfg.data.data_dir:
            found.setdefault(cfg.data.data_dir, (
                "data folder", "it must hold train.<ext> and dev.<ext> (tsv, csv, jsonl, parquet)"))
        for split_file in (cfg.data.train_file, cfg.data.dev_file):
            if split_file:
                found.setdefault(split_file, ("data file", "fix the path or make the file"))
    needed = {path: (found.get(path, ("prerequisite", ""))[0], f"make it with: {command}")
              for path, command in sweep.prerequisites.items()}
    for path, entry in found.items():
        needed.setdefault(path, entry)
    return needed


def missing_prerequisites(sweep: SweepConfig, sweep_dir: Path) -> dict[str, str]:
    """Path -> one line saying what it is and how to make it, for every path the trials read that
    does not exist here (the sweep's paths resolved)."""
    cfgs = trial_configs(sweep, sweep_dir)
    return {path: f"{what} not found: {path}; {how}" for path, (what, how) in _needed_paths(sweep, cfgs).items()
            if not os.path.exists(path)}


def _raise_missing(sweep: SweepConfig, missing: dict[str, str], where: str) -> None:
    if missing:
        first, *others = missing
        more = f" (also missing: {', '.join(others)})" if others else ""
        raise UserError(f"sweep '{sweep.name}' cannot start: {missing[first]}{more}{where}")


def check_prerequisites(sweep: SweepConfig, sweep_dir: Path | None = None) -> None:
    """Raise :class:`UserError` when a path the trials read is missing on this machine (a driver
    that runs where its trials do: no cluster to join). ``sweep``: its paths resolved
    (:func:`resolve_paths`)."""
    sweep_dir = sweep_dir or Path(sweep.storage_path) / sweep.name
    _raise_missing(sweep, missing_prerequisites(sweep, sweep_dir), "")


def _check_prerequisites_on_a_trial_node(sweep: SweepConfig, sweep_dir: Path) -> None:
    """The same check in a Ray task that asks for a trial's resources, so it runs where trials run
    (a cluster's head may not mount the teacher or the data)."""
    import ray

    check = ray.remote(num_cpus=sweep.cpus_per_trial, num_gpus=sweep.gpus_per_trial)(missing_prerequisites)
    ref = check.remote(sweep, sweep_dir)
    ready, _ = ray.wait([ref], timeout=PREREQUISITE_CHECK_TIMEOUT_S)
    if not ready:
        ray.cancel(ref, force=True)
        log.warning("no node could check the sweep's prerequisites within %.0f s; starting the trials anyway",
                    PREREQUISITE_CHECK_TIMEOUT_S)
        return
    _raise_missing(sweep, ray.get(ref), " (checked on a node that runs trials)")


# ----------------------------------------------------------------------------- one trial
class TrialStopped(UserError):
    """What a trial raises for an error no retry fixes: its message is the cause (``Type: first
    line``), a plain message that reaches the driver whether or not the original error pickles."""


def error_cause(err: BaseException) -> str:
    """``Type: first line of the message`` of the exception that ended a trial: the cause inside
    Ray's wrapper (``ray::ImplicitFunc.train()`` ...) when there is one."""
    while getattr(err, "cause", None) is not None and err.cause is not err:  # RayTaskError -> the trial's error
        err = err.cause
    text = str(err).strip()
    first = text.splitlines()[0] if text else ""
    if isinstance(err, TrialStopped):
        return first
    if type(err).__name__ == "TuneError" and text:  # a traceback kept as text: its last line names the error
        last = text.splitlines()[-1].strip()
        return last if ":" in last else f"TuneError: {last}"
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def _count_attempt(trial_dir: Path) -> int:
    """Record one more start of this trial in its folder (it survives crashes and sweep restores)."""
    trial_dir.mkdir(parents=True, exist_ok=True)
    counter = trial_dir / "attempts"
    attempt = _read_attempts(trial_dir) + 1
    counter.write_text(f"{attempt}\n")
    return attempt


def _read_attempts(trial_dir: Path) -> int:
    try:
        return int((trial_dir / "attempts").read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def _run_distill(cfg: DistillConfig) -> dict[str, Any]:
    from mpcformer.training.distill import run_distill

    return run_distill(cfg)


def _trainable(params: dict[str, Any], run_trial: TrialRunner | None = None) -> None:
    """One Tune trial: a resumable distillation run (its metrics reported once at the end). An
    error no retry can fix is reported (``NOT_RETRIED_KEY``), then raised as :class:`TrialStopped`."""
    from ray import tune

    sweep = SweepConfig.model_validate(params.pop("__sweep__"))
    sweep_dir = Path(params.pop("__sweep_dir__"))
    attempt = _count_attempt(_trial_dir(sweep_dir, params))
    try:
        cfg = trial_config(sweep, params, sweep_dir)
        metrics = (run_trial or _run_distill)(cfg)
    except NOT_RETRIED as err:
        cause = error_cause(err)
        log.error("trial %s stopped (not retried): %s", params, cause)
        tune.report({NOT_RETRIED_KEY: cause, "attempt": attempt})  # the callback sees it before the failure
        raise TrialStopped(cause) from None
    primary = metrics.get("primary_metric", "accuracy")
    tune.report({
        "score": float(metrics["validation"][primary]),  # the validation split chooses; dev is the test set
        "primary_metric": primary,
        "combo": cfg.combo,
        "baseline": cfg.baseline,
        "checkpoint_dir": str(metrics.get("checkpoint", "")),
        "attempt": attempt,
        **{f"dev_{k}": float(v) for k, v in metrics["dev"].items() if isinstance(v, (int, float))},
        **{f"validation_{k}": float(v) for k, v in metrics["validation"].items() if isinstance(v, (int, float))},
        # the last logged training loss of each phase (stage1, stage2 or task)
        **{f"loss_{phase}": float(v["last"]) for phase, v in (metrics.get("final_losses") or {}).items()},
    })


def _no_retry_callback(max_failures: int):
    from ray.tune import Callback

    class _NoRetryCallback(Callback):
        """Tune decides whether to retry a failed trial from ``trial.max_failures`` alone: a trial
        that reports ``NOT_RETRIED_KEY`` gets 0 there, so its failure, which follows, is final. Every
        start sets it back, so a resumed sweep still retries that trial's crashes."""

        def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
            trial.max_failures = max_failures

        def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
            if result.get(NOT_RETRIED_KEY):
                trial.max_failures = 0

    return _NoRetryCallback()


# ----------------------------------------------------------------------------- the sweep
def run_sweep(
    sweep: SweepConfig, resume: bool = True, base_dir: str | Path | None = None, run_trial: TrialRunner | None = None,
) -> dict[str, Any]:
    """Run (or resume) the sweep on the connected Ray cluster; returns the summary.

    Relative paths resolve against ``base_dir`` (default: the current directory). ``run_trial``:
    what each trial runs (default: the distillation)."""
    import ray
    from ray import tune

    from mpcformer.observability.tune import SweepMetricsCallback

    sweep = resolve_paths(sweep, base_dir)
    storage = Path(sweep.storage_path)
    sweep_dir = storage / sweep.name
    validate_grid(sweep, sweep_dir)
    if not ray.is_initialized():
        raise UserError("connect to Ray first (mpcformer sweep does this for you)")
    _check_prerequisites_on_a_trial_node(sweep, sweep_dir)
    space = {k: tune.grid_search(v) for k, v in sweep.grid.items()}
    space["__sweep__"] = sweep.model_dump()
    space["__sweep_dir__"] = str(sweep_dir)
    resources = {"cpu": sweep.cpus_per_trial, "gpu": sweep.gpus_per_trial}
    trainable = tune.with_resources(tune.with_parameters(_trainable, run_trial=run_trial), resources)
    experiment = str(sweep_dir / "tune")
    if resume and tune.Tuner.can_restore(experiment):
        log.info("resuming sweep from %s", experiment)
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_errored=True, param_space=space)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            # no metric: a trial stopped by an error no retry fixes reports none; summarise ranks trials
            tune_config=tune.TuneConfig(max_concurrent_trials=sweep.max_concurrent_trials),
            run_config=tune.RunConfig(
                name="tune", storage_path=str(sweep_dir),
                failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
                callbacks=[
                    SweepMetricsCallback(job=sweep.name, approx_key="combo"), _no_retry_callback(sweep.max_failures),
                ],
                verbose=1,
            ),
        )
    grid = tuner.fit()
    return summarise(grid, sweep, sweep_dir)


def _row(result, sweep_dir: Path) -> dict[str, Any]:
    params = {k: v for k, v in (result.config or {}).items() if not k.startswith("__")}
    m = result.metrics or {}
    error = error_cause(result.error) if result.error is not None else ""
    return {
        **params,
        "combo": m.get("combo", params.get("combo")),
        "baseline": m.get("baseline", params.get("baseline", "none")),
        "score": m.get("score"),
        "metric": m.get("primary_metric"),
        "checkpoint_dir": m.get("checkpoint_dir"),
        "status": "error" if error else "ok",
        "attempts": _read_attempts(_trial_dir(sweep_dir, params)),
        "error": error,
    }


def _md_cell(value: Any) -> str:
    return "" if value is None else str(value).replace("|", "\\|")


def summarise(grid, sweep: SweepConfig, sweep_dir: Path) -> dict[str, Any]:
    """Write results.csv, results.md and best.json for a finished ResultGrid."""
    rows = [_row(result, sweep_dir) for result in grid]
    sweep_dir.mkdir(parents=True, exist_ok=True)
    columns = sorted({k for r in rows for k in r}, key=lambda c: (c not in sweep.grid, c == "error", c))
    with open(sweep_dir / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    md = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    md += ["| " + " | ".join(_md_cell(r.get(c)) for c in columns) + " |" for r in rows]
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
        "grid_keys": list(sweep.grid),
    }


def failure_lines(summary: dict[str, Any]) -> list[str]:
    """One line per failed trial: its grid values, attempts and cause."""
    lines = []
    for r in summary["rows"]:
        if r["status"] == "error":
            params = ", ".join(f"{k}={r.get(k)}" for k in summary.get("grid_keys", [])) or "the trial"
            lines.append(f"failed: {params} ({r['attempts']} attempt{'s' * (r['attempts'] != 1)}): {r['error']}")
    return lines
