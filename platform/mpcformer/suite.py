"""The GLUE accuracy suite: per task a teacher, then its students and baselines, as Ray Tune trials.

The ``tasks:`` form of :class:`~mpcformer.sweep.SweepConfig` (the grid form is :mod:`mpcformer.sweep`)::

    name: glue-minilm
    teacher_base: {model: minilm}            # FinetuneConfig fields shared by every teacher
    base: {data: {max_train_examples: 20000}} # DistillConfig fields shared by every student
    arms: [quad+2quad, quad+2relu, wo_d, wo_pd]   # the default
    tasks:
      cola: {data: {data_dir: ../shared/data/glue/CoLA}, teacher: {optim.epochs: 3},
             distill: {stage1.epochs: 2, stage2.epochs: 2}}
      ...

A task's ``data`` applies to its teacher and to its students, ``teacher`` to its fine-tuning and
``distill`` to its students (dotted or nested keys). Phase 1 fine-tunes one teacher per task
(``<sweep>/teachers/<task>``; with ``teachers_dir`` set, the teachers already in
``<teachers_dir>/<task>/best`` are used and phase 1 is skipped); phase 2 trains every arm of every
task from that task's teacher (``<sweep>/students/<task>/<arm>``): an approximation name is
distilled, ``wo_d`` / ``wo_pd`` are the paper's baselines (task loss only, teacher or random
initialisation) of ``baseline_combo``. Phase 3 runs every distilled arm of every task under MPC
(``<sweep>/mpc/<task>/<arm>``): the encrypted inference job of ``mpcformer infer`` (its party
actors on the same cluster, one run after another from the driver) on the first ``mpc_examples``
dev examples of the task (``all``: the whole dev split; 0: none), with the plaintext reference
of the same examples (``--check-plaintext``), its settings from ``mpc_base``.

Output folders are derived from the task and arm, so a rerun finds its trials' work: a trial whose
``metrics.json`` was written by the same config is reused without training, an unfinished one
resumes from its last checkpoint; an MPC run whose ``summary.json`` holds the same settings, written
after its student, is reused, an unfinished one resumes its batches. The report
(:func:`mpcformer.training.report.write_suite_report`) reads the folders named in
``<sweep>/suite-layout.json`` and writes ``suite.md`` and ``suite.json``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from mpcformer.config import apply_overrides, build_config
from mpcformer.errors import UserError
from mpcformer.sweep import (
    BASELINE_ARMS, NOT_RETRIED, NOT_RETRIED_KEY, SweepConfig, TrialStopped, _absolute, _count_attempt,
    _no_retry_callback, _raise_missing, _read_attempts, error_cause, resolve_paths,
)
from mpcformer.training.config import DistillConfig, FinetuneConfig
from mpcformer.training.report import SUITE_LAYOUT

if TYPE_CHECKING:  # the inference job imports Ray: loaded where an MPC run is built
    from mpcformer.inference.job import InferConfig

__all__ = [
    "PHASES", "MPC_PHASE", "QUICK_SUITE", "arm_settings", "teacher_config", "student_config", "trial_config",
    "teacher_dir", "student_dir", "phase_trials", "mpc_arms", "mpc_dir", "mpc_limit", "mpc_runs", "mpc_config",
    "finished_mpc", "finished_metrics", "resolve_suite_paths", "validate_suite", "missing_suite_prerequisites",
    "check_suite_prerequisites", "quick_form", "suite_layout", "run_suite",
]

log = logging.getLogger(__name__)

PHASES = ("teachers", "students")  # the training phases, Tune trials
MPC_PHASE = "mpc"  # the third phase, run by the driver

#: InferConfig fields an MPC run takes from its task and arm (``mpc_base`` may not set them).
MPC_DERIVED = ("model", "num_labels", "seed", "data", "split", "combos", "limit", "out", "check_plaintext",
               "job_name")

#: ``--quick``: every task of the suite on the tiny preset, a few updates over a few examples, so
#: that the whole suite runs end to end in minutes (checks the setup, measures nothing)
QUICK_SUITE: dict[str, dict[str, Any]] = {
    "teacher_base": {"model": "tiny", "optim.lr": 3e-3, "optim.batch_size": 16},
    "data": {"max_train_examples": 48, "max_dev_examples": 48, "max_length": 32, "validation_fraction": 0.01,
             "min_validation_examples": 32},
    "teacher": {"optim.max_steps": 6},
    "distill": {"stage1.max_steps": 3, "stage2.max_steps": 3, "stage1.batch_size": 16, "stage2.batch_size": 16,
                "eval_batch_size": 64},
    "mpc_examples": 8,  # one MPC forward per arm
    "mpc_base": {"batch_size": 8, "group.cpus_per_party": 0.5, "group.cpus_for_dealer": 0.5},
}

#: One trial's work: ("teachers", FinetuneConfig) or ("students", DistillConfig) -> its metrics.
SuiteRunner = Callable[[str, Any], dict[str, Any]]

#: One MPC run's work: its InferConfig -> the driver's status (:func:`mpcformer.inference.job.run_infer`).
MpcRunner = Callable[["InferConfig"], dict[str, Any]]


# ----------------------------------------------------------------------------- trial configs
def arm_settings(sweep: SweepConfig, arm: str) -> dict[str, Any]:
    """``combo`` and ``baseline`` of an arm: a baseline trains ``baseline_combo``, any other arm is
    the approximation it names, distilled."""
    if arm in BASELINE_ARMS:
        return {"combo": sweep.baseline_combo, "baseline": arm}
    return {"combo": arm, "baseline": "none"}


def _task_data(sweep: SweepConfig, task: str) -> dict[str, Any]:
    return {"task": task, **sweep.tasks[task].data}


def _sweep_dir(sweep: SweepConfig) -> Path:
    return Path(sweep.storage_path) / sweep.name


def teacher_dir(sweep: SweepConfig, task: str, sweep_dir: Path) -> Path:
    """The folder of a task's teacher run (its checkpoint is ``<folder>/best``)."""
    return Path(sweep.teachers_dir) / task if sweep.teachers_dir else sweep_dir / "teachers" / task


def student_dir(task: str, arm: str, sweep_dir: Path) -> Path:
    return sweep_dir / "students" / task / arm


def _dotted(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections as dotted keys (``{"optim": {"epochs": 3}}`` -> ``{"optim.epochs": 3}``), so
    that a task's settings change single fields of the shared base, never a whole section."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _build(cls, base: dict[str, Any], layers: list[dict[str, Any]], fixed: dict[str, Any], source: str):
    overrides = {}
    for layer in layers:
        overrides.update(_dotted(layer))
    overrides.update(fixed)
    return build_config(cls, copy.deepcopy(base), overrides, source=source)


def teacher_config(sweep: SweepConfig, task: str, sweep_dir: Path) -> FinetuneConfig:
    """A task's fine-tuning: ``teacher_base`` + the task's ``data`` and ``teacher`` settings."""
    layers = [{"data": _task_data(sweep, task)}, sweep.tasks[task].teacher]
    fixed = {"output_dir": str(teacher_dir(sweep, task, sweep_dir)), "progress": False}
    return _build(FinetuneConfig, sweep.teacher_base, layers, fixed, f"sweep '{sweep.name}' teacher of {task}")


def student_config(sweep: SweepConfig, task: str, arm: str, sweep_dir: Path) -> DistillConfig:
    """One arm of a task: ``base`` + the task's ``data`` and ``distill`` settings, from its teacher."""
    layers = [{"data": _task_data(sweep, task)}, sweep.tasks[task].distill]
    fixed = {**arm_settings(sweep, arm), "teacher": str(teacher_dir(sweep, task, sweep_dir) / "best"),
             "output_dir": str(student_dir(task, arm, sweep_dir)), "progress": False}
    return _build(DistillConfig, sweep.base, layers, fixed, f"sweep '{sweep.name}' {task} {arm}")


def phase_trials(sweep: SweepConfig, phase: str) -> list[str]:
    """The trial keys of a phase: ``<task>`` (teachers; none with ``teachers_dir``) or ``<task>/<arm>``."""
    if phase == "teachers":
        return [] if sweep.teachers_dir else list(sweep.tasks)
    return [f"{task}/{arm}" for task in sweep.tasks for arm in sweep.arms]


def trial_config(sweep: SweepConfig, phase: str, key: str, sweep_dir: Path) -> FinetuneConfig | DistillConfig:
    if phase == "teachers":
        return teacher_config(sweep, key, sweep_dir)
    task, arm = key.split("/", 1)
    return student_config(sweep, task, arm, sweep_dir)


def mpc_arms(sweep: SweepConfig) -> list[str]:
    """The arms that run under MPC: the distilled ones (the baselines are measured in plaintext only)."""
    return [arm for arm in sweep.arms if arm not in BASELINE_ARMS]


def mpc_dir(task: str, arm: str, sweep_dir: Path) -> Path:
    return sweep_dir / "mpc" / task / arm


def mpc_limit(sweep: SweepConfig, task: str) -> int | None:
    """Dev examples of ``task`` under MPC: the task's ``mpc_examples``, else the suite's; None = all."""
    examples = sweep.tasks[task].mpc_examples
    examples = sweep.mpc_examples if examples is None else examples
    return None if examples == "all" else examples


def mpc_runs(sweep: SweepConfig) -> list[str]:
    """The MPC runs, ``<task>/<arm>``: every distilled arm of every task with examples under MPC."""
    return [f"{task}/{arm}" for task in sweep.tasks if mpc_limit(sweep, task) != 0 for arm in mpc_arms(sweep)]


def mpc_config(sweep: SweepConfig, task: str, arm: str, sweep_dir: Path) -> InferConfig:
    """One arm's run under MPC: ``mpc_base`` + the student's checkpoint, data and seed on the dev
    split, with the plaintext reference (agreement needs it)."""
    from mpcformer.inference.job import InferConfig

    student = student_config(sweep, task, arm, sweep_dir)
    fixed = {"model": str(Path(student.output_dir) / "best"), "seed": student.seed, "data": student.data.model_dump(),
             "split": "dev", "combos": [student.combo], "limit": mpc_limit(sweep, task),
             "out": str(mpc_dir(task, arm, sweep_dir)), "check_plaintext": True,
             "job_name": f"{sweep.name}-mpc-{task}-{arm}"}
    return _build(InferConfig, sweep.mpc_base, [], fixed, f"sweep '{sweep.name}' {task} {arm} under MPC")


def finished_metrics(cfg: FinetuneConfig | DistillConfig) -> dict[str, Any] | None:
    """The metrics of a finished run of exactly ``cfg`` in its output folder, else None (a run of
    another config there is trained again: it resumes from its last checkpoint). A student is
    finished only if written after its teacher's ``metrics.json`` (a retrained teacher retrains it)."""
    path = Path(cfg.output_dir) / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if metrics.get("config") != json.loads(cfg.model_dump_json()) or not Path(metrics.get("checkpoint", "")).is_dir():
        return None
    teacher = Path(cfg.teacher).parent / "metrics.json" if isinstance(cfg, DistillConfig) else None
    if teacher is not None and teacher.is_file() and teacher.stat().st_mtime > path.stat().st_mtime:
        return None
    return metrics


def finished_mpc(cfg: InferConfig, student: DistillConfig) -> dict[str, Any] | None:
    """The summary of a complete MPC run of exactly ``cfg`` written after its student's
    ``metrics.json``, else None (a retrained student is measured again)."""
    from mpcformer.inference.job import finished_summary

    summary = finished_summary(cfg)
    if summary is None or _older_than(Path(cfg.out) / "summary.json", Path(student.output_dir) / "metrics.json"):
        return None
    return summary


def _older_than(path: Path, other: Path) -> bool:
    return other.is_file() and path.stat().st_mtime < other.stat().st_mtime


def validate_suite(sweep: SweepConfig, sweep_dir: Path) -> None:
    """Build every trial's and MPC run's config up front, so a typo or an unknown task fails before
    any trial starts."""
    from mpcformer.data.loading import resolve_task

    derived = sorted(key for key in _dotted(sweep.mpc_base) if key.split(".")[0] in MPC_DERIVED)
    if derived:
        raise UserError(f"sweep '{sweep.name}': mpc_base sets {', '.join(derived)}, which each MPC run takes from "
                        "its task and arm: remove it (a task's data section sets the data)")
    for task in sweep.tasks:
        cfgs = [teacher_config(sweep, task, sweep_dir)]
        cfgs += [student_config(sweep, task, arm, sweep_dir) for arm in sweep.arms]
        resolve_task(cfgs[0].data)
        if any(cfg.data.validation_fraction == 0 for cfg in cfgs):
            raise UserError(f"task '{task}': the suite keeps checkpoints on the validation split: "
                            "data.validation_fraction must be above 0")
    for key in mpc_runs(sweep):
        mpc_config(sweep, *key.split("/", 1), sweep_dir)


# ----------------------------------------------------------------------------- paths and prerequisites
def resolve_suite_paths(sweep: SweepConfig, base_dir: str | Path | None = None) -> SweepConfig:
    """:func:`~mpcformer.sweep.resolve_paths`, plus each task's data paths and ``teachers_dir``."""
    base_dir = Path(base_dir or os.getcwd())
    sweep = resolve_paths(sweep, base_dir)
    tasks = {}
    for name, task in sweep.tasks.items():
        data = {k: _absolute(v, base_dir) if k in ("data_dir", "train_file", "dev_file") else v
                for k, v in task.data.items()}
        tasks[name] = task.model_copy(update={"data": data})
    return sweep.model_copy(update={"tasks": tasks, "teachers_dir": _absolute(sweep.teachers_dir, base_dir)})


def missing_suite_prerequisites(sweep: SweepConfig, sweep_dir: Path) -> dict[str, str]:
    """Path -> one line saying what it is and how to make it, for every path the suite reads that
    does not exist here: the ``prerequisites``, each task's data, and with ``teachers_dir`` the teachers."""
    needed = {path: f"prerequisite not found: {path}; make it with: {how}" for path, how in sweep.prerequisites.items()}
    for task in sweep.tasks:
        data = teacher_config(sweep, task, sweep_dir).data
        if data.data_dir:
            needed.setdefault(data.data_dir, f"data folder of {task} not found: {data.data_dir}; it must hold "
                                             "train.<ext> and dev.<ext> (GLUE: ../shared/data/glue/README.md)")
        for split_file in (data.train_file, data.dev_file):
            if split_file:
                needed.setdefault(split_file, f"data file of {task} not found: {split_file}; fix the path")
        if sweep.teachers_dir:
            best = teacher_dir(sweep, task, sweep_dir) / "best"
            source = f" --data-dir {data.data_dir}" if data.data_dir else ""
            needed.setdefault(str(best), (
                f"teacher checkpoint of {task} not found: {best}; make it with: mpcformer finetune --task {task}"
                f"{source} --output-dir {best.parent} (or leave teachers_dir unset: the suite trains its teachers)"))
    return {path: line for path, line in needed.items() if not os.path.exists(path)}


def check_suite_prerequisites(sweep: SweepConfig) -> None:
    """Raise :class:`UserError` (one line) when a path the suite reads is missing on this machine."""
    _raise_missing(sweep, missing_suite_prerequisites(sweep, _sweep_dir(sweep)), "")


# ----------------------------------------------------------------------------- the quick form
def quick_form(sweep: SweepConfig) -> SweepConfig:
    """The same suite (tasks, arms, data) at :data:`QUICK_SUITE`'s budget, its teachers on the tiny
    preset (with ``teachers_dir`` set, the students of those teachers), a few examples of each task
    under MPC, named ``<name>-quick`` so that its folders stay apart from the real run's."""
    if not sweep.tasks:
        raise UserError(f"sweep '{sweep.name}': --quick is for suite configs (with tasks:), this one has a grid")
    tasks = {
        name: task.model_copy(update={
            "data": {**task.data, **QUICK_SUITE["data"]},
            "teacher": {**_dotted(task.teacher), **QUICK_SUITE["teacher"]},
            "distill": {**_dotted(task.distill), **QUICK_SUITE["distill"]},
            "mpc_examples": None,  # the suite's, below
        })
        for name, task in sweep.tasks.items()
    }
    teacher_base = apply_overrides(copy.deepcopy(sweep.teacher_base), QUICK_SUITE["teacher_base"])
    mpc_base = apply_overrides(copy.deepcopy(sweep.mpc_base), QUICK_SUITE["mpc_base"])
    return sweep.model_copy(update={"name": f"{sweep.name}-quick", "tasks": tasks, "teacher_base": teacher_base,
                                    "mpc_examples": QUICK_SUITE["mpc_examples"], "mpc_base": mpc_base})


# ----------------------------------------------------------------------------- one trial
def _run(phase: str, cfg: FinetuneConfig | DistillConfig) -> dict[str, Any]:
    if phase == "teachers":
        from mpcformer.training.finetune import run_finetune

        return run_finetune(cfg)
    from mpcformer.training.distill import run_distill

    return run_distill(cfg)


def _trainable(params: dict[str, Any], run_trial: SuiteRunner | None = None) -> None:
    """One Tune trial: a teacher's fine-tuning or a student's training, reused when its folder holds
    a finished run of the same config. An error no retry fixes ends it at once (see sweep.py)."""
    from ray import tune

    sweep = SweepConfig.model_validate(params["__sweep__"])
    sweep_dir, phase, key = Path(params["__sweep_dir__"]), params["__phase__"], params["trial"]
    try:
        cfg = trial_config(sweep, phase, key, sweep_dir)
        attempt = _count_attempt(Path(cfg.output_dir))
        metrics = finished_metrics(cfg)
        reused = metrics is not None
        if not reused:
            metrics = (run_trial or _run)(phase, cfg)
    except NOT_RETRIED as err:
        cause = error_cause(err)
        log.error("suite trial %s %s stopped (not retried): %s", phase, key, cause)
        tune.report({NOT_RETRIED_KEY: cause})
        raise TrialStopped(cause) from None
    primary = metrics.get("primary_metric", "accuracy")
    tune.report({
        "score": float(metrics["validation"][primary]),  # the validation split chooses; dev is the test set
        "primary_metric": primary,
        "combo": metrics.get("combo", "exact"),
        "reused": reused,
        "attempt": attempt,
        "checkpoint_dir": str(metrics.get("checkpoint", "")),
        **{f"dev_{k}": float(v) for k, v in metrics["dev"].items() if isinstance(v, (int, float))},
    })


def _run_phase(sweep: SweepConfig, sweep_dir: Path, phase: str, keys: list[str],
               run_trial: SuiteRunner | None) -> dict[str, str]:
    """Run a phase's trials on Tune; returns trial key -> cause for the failed ones."""
    from ray import tune

    from mpcformer.observability.tune import SweepMetricsCallback

    space = {"trial": tune.grid_search(keys), "__sweep__": sweep.model_dump(), "__sweep_dir__": str(sweep_dir),
             "__phase__": phase}
    resources = {"cpu": sweep.cpus_per_trial, "gpu": sweep.gpus_per_trial}
    trainable = tune.with_resources(tune.with_parameters(_trainable, run_trial=run_trial), resources)
    tuner = tune.Tuner(
        trainable, param_space=space,
        # a new experiment each sitting: what is finished is found in the trials' folders, not in Tune's state
        tune_config=tune.TuneConfig(max_concurrent_trials=sweep.max_concurrent_trials, reuse_actors=True),
        run_config=tune.RunConfig(
            name=f"tune-{phase}", storage_path=str(sweep_dir),
            failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
            callbacks=[SweepMetricsCallback(job=f"{sweep.name}-{phase}", approx_key="trial"),
                       _no_retry_callback(sweep.max_failures)],
            verbose=1,
        ),
    )
    return {result.config["trial"]: error_cause(result.error) for result in tuner.fit() if result.error is not None}


def suite_layout(sweep: SweepConfig, sweep_dir: Path, errors: dict[str, str] | None = None,
                 mpc_errors: dict[str, str] | None = None) -> dict[str, Any]:
    """What the report reads: per task its teacher's and its arms' folders and its MPC runs' folders,
    the arms, the tasks averaged, and the cause of each failed trial (``<task>`` or ``<task>/<arm>``)
    and of each failed MPC run (``<task>/<arm>``)."""
    mpc = set(mpc_runs(sweep))
    return {
        "name": sweep.name,
        "arms": list(sweep.arms),
        "mpc_arms": mpc_arms(sweep),
        "average_tasks": list(sweep.average_tasks),
        "tasks": {task: {"teacher": str(teacher_dir(sweep, task, sweep_dir)),
                         "arms": {arm: str(student_dir(task, arm, sweep_dir)) for arm in sweep.arms},
                         "mpc": {arm: str(mpc_dir(task, arm, sweep_dir)) for arm in mpc_arms(sweep)
                                 if f"{task}/{arm}" in mpc}}
                  for task in sweep.tasks},
        "errors": dict(errors or {}),
        "mpc_errors": dict(mpc_errors or {}),
    }


def _pending(sweep: SweepConfig, phase: str, sweep_dir: Path, skip: set[str]) -> list[str]:
    """The phase's trials not finished here (a driver that sees no trial folder submits them all:
    each trial looks again where it runs)."""
    return [key for key in phase_trials(sweep, phase)
            if key.split("/")[0] not in skip and finished_metrics(trial_config(sweep, phase, key, sweep_dir)) is None]


def run_suite(sweep: SweepConfig, base_dir: str | Path | None = None,
              run_trial: SuiteRunner | None = None, run_mpc: MpcRunner | None = None) -> dict[str, Any]:
    """Run (or finish) the suite on the connected Ray cluster; write the report; return its summary.

    Relative paths resolve against ``base_dir`` (default: the current directory). ``run_trial``:
    what each trial runs (default: fine-tuning / distillation); ``run_mpc``: what each MPC run
    runs (default: the encrypted inference job)."""
    import ray

    from mpcformer.training.report import write_suite_report

    sweep = resolve_suite_paths(sweep, base_dir)
    sweep_dir = _sweep_dir(sweep)
    validate_suite(sweep, sweep_dir)
    if not ray.is_initialized():
        raise UserError("connect to Ray first (mpcformer sweep does this for you)")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    # written first too, so that an interrupted suite can be reported (python -m mpcformer.training.report --suite)
    (sweep_dir / SUITE_LAYOUT).write_text(json.dumps(suite_layout(sweep, sweep_dir), indent=2))
    errors: dict[str, str] = {}
    ran: dict[str, int] = {}
    for phase in PHASES:
        failed_teachers = {key for key in errors if "/" not in key}  # their tasks' arms cannot start
        for task in failed_teachers:
            errors.update({f"{task}/{arm}": f"not run: the teacher of {task} failed" for arm in sweep.arms})
        keys = _pending(sweep, phase, sweep_dir, failed_teachers)
        ran[phase] = len(keys)
        log.info("suite '%s' %s: %d to run, %d finished", sweep.name, phase, len(keys),
                 len(phase_trials(sweep, phase)) - len(keys))
        if keys:
            errors.update(_run_phase(sweep, sweep_dir, phase, keys, run_trial))
    ran[MPC_PHASE], mpc_errors = _run_mpc_phase(sweep, sweep_dir, errors, run_mpc)
    layout = suite_layout(sweep, sweep_dir, errors, mpc_errors)
    (sweep_dir / SUITE_LAYOUT).write_text(json.dumps(layout, indent=2))
    report = write_suite_report(sweep_dir)
    return {"sweep_dir": str(sweep_dir), "ran": ran, "errors": errors, "mpc_errors": mpc_errors, "report": report,
            "attempts": {key: _read_attempts(Path(trial_config(sweep, phase, key, sweep_dir).output_dir))
                         for phase in PHASES for key in phase_trials(sweep, phase)}}


# ----------------------------------------------------------------------------- phase 3: under MPC
def _run_infer(cfg: InferConfig) -> dict[str, Any]:
    from mpcformer.inference.job import run_infer

    return run_infer(cfg, progress=False)


def _start_over_if_stale(cfg: InferConfig, student: DistillConfig) -> None:
    """Clear an MPC folder that holds a run of other settings, or one begun before its student was
    (re)trained: its batches are not this student's, and the inference job would resume them."""
    from mpcformer.inference.job import holds_other_run

    out = Path(cfg.out)
    run_info, student_metrics = out / "run.json", Path(student.output_dir) / "metrics.json"
    if run_info.is_file() and (holds_other_run(cfg) or _older_than(run_info, student_metrics)):
        log.info("suite MPC run %s: starting over (another run's, or older than its student)", out)
        shutil.rmtree(out)


def _run_mpc_phase(sweep: SweepConfig, sweep_dir: Path, errors: dict[str, str],
                   run_mpc: MpcRunner | None) -> tuple[int, dict[str, str]]:
    """Run the MPC runs not finished here, one after another from the driver (each starts its own
    party actors on the cluster); returns how many ran and ``<task>/<arm>`` -> cause for the failed
    ones. A failed run does not stop the next; an arm without a finished student is not run."""
    keys, mpc_errors = [], {}
    for key in mpc_runs(sweep):
        task, arm = key.split("/", 1)
        student = student_config(sweep, task, arm, sweep_dir)
        if finished_metrics(student) is None:
            mpc_errors[key] = f"not run: the student {key} {'failed' if key in errors else 'is not finished'}"
        elif finished_mpc(mpc_config(sweep, task, arm, sweep_dir), student) is None:
            keys.append(key)
    log.info("suite '%s' %s: %d to run, %d finished", sweep.name, MPC_PHASE, len(keys),
             len(mpc_runs(sweep)) - len(keys) - len(mpc_errors))
    for key in keys:
        task, arm = key.split("/", 1)
        cfg = mpc_config(sweep, task, arm, sweep_dir)
        try:
            _start_over_if_stale(cfg, student_config(sweep, task, arm, sweep_dir))
            status = (run_mpc or _run_infer)(cfg)
            if not status.get("complete"):
                raise UserError(f"{status.get('batches_planned')} batches planned, not all committed; run again")
        except Exception as err:  # noqa: BLE001 - one run's failure is reported, the others still run
            mpc_errors[key] = error_cause(err)
            log.error("suite MPC run %s failed: %s", key, mpc_errors[key])
    return len(keys), mpc_errors
