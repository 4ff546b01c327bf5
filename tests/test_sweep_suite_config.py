"""The GLUE suite without training: its config form, the trials of each phase (the MPC runs too),
reuse of finished trials and MPC runs, prerequisites in one line, the quick form, and the report's
arithmetic on synthetic runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mpcformer.config import ConfigError, build_config, load_config
from mpcformer.errors import UserError
from mpcformer.suite import (
    check_suite_prerequisites, finished_metrics, finished_mpc, mpc_config, mpc_limit, mpc_runs, phase_trials,
    quick_form, resolve_suite_paths, run_suite, student_config, suite_layout, teacher_config, validate_suite,
)
from mpcformer.sweep import SweepConfig
from mpcformer.training.report import render_suite, suite_summary, task_score, write_suite_report

REPO = Path(__file__).resolve().parents[1]
GLUE_TASKS = ["cola", "sst2", "mrpc", "stsb", "rte", "wnli"]


def _suite(**extra) -> SweepConfig:
    return build_config(SweepConfig, {
        "name": "s", "teacher_base": {"model": "tiny", "optim": {"lr": 1e-3}},
        "base": {"stage2": {"lr": 2e-5}},
        "tasks": {"rte": {"data": {"data_dir": "glue/RTE", "max_length": 128}, "teacher": {"optim": {"epochs": 5}},
                          "distill": {"stage1.epochs": 4, "stage2": {"epochs": 3}}},
                  "cola": {"data": {"data_dir": "glue/CoLA"}}},
        **extra,
    })


# ----------------------------------------------------------------------------- the config
def test_a_suite_takes_no_grid_and_checks_its_arms():
    with pytest.raises(ConfigError, match="takes no grid"):
        _suite(grid={"combo": ["quad+2quad"]})
    with pytest.raises(ConfigError, match="arms"):
        _suite(arms=["quad+2quad", "quad+2quad"])
    with pytest.raises(ConfigError, match="'arms'.*no_such"):
        _suite(arms=["no_such+thing"])
    with pytest.raises(ConfigError, match="tasks.rte.epochs"):
        build_config(SweepConfig, {"tasks": {"rte": {"epochs": 3}}})
    assert _suite().arms == ["quad+2quad", "quad+2relu", "wo_d", "wo_pd"]


def test_a_bad_task_setting_fails_before_any_trial(tmp_path):
    with pytest.raises(ConfigError, match="no_such_key"):
        validate_suite(_suite(tasks={"rte": {"distill": {"stage1.no_such_key": 1}}}), tmp_path)
    with pytest.raises(UserError, match="unknown task 'nope'"):
        validate_suite(_suite(tasks={"nope": {}}), tmp_path)
    with pytest.raises(UserError, match="validation_fraction"):
        validate_suite(_suite(tasks={"rte": {"data": {"validation_fraction": 0}}}), tmp_path)


def test_the_grid_form_is_unchanged():
    grid = load_config(SweepConfig, "sweep-sst2-minilm")
    assert not grid.tasks and grid.grid["combo"] == ["quad+2quad", "quad+2relu"]


def test_mpc_examples_are_a_count_or_all_per_task_and_mpc_base_leaves_the_derived_fields(tmp_path):
    sweep = _suite(mpc_examples=50, tasks={"rte": {"mpc_examples": "all"}, "cola": {}, "sst2": {"mpc_examples": 0}})
    assert [mpc_limit(sweep, t) for t in ("rte", "cola", "sst2")] == [None, 50, 0]
    assert _suite().mpc_examples == 200
    with pytest.raises(ConfigError, match="mpc_examples"):
        _suite(mpc_examples=-1)
    with pytest.raises(ConfigError, match="mpc_examples"):
        _suite(tasks={"rte": {"mpc_examples": "some"}})
    with pytest.raises(UserError, match="mpc_base sets data.max_length, model"):
        validate_suite(_suite(mpc_base={"model": "tiny", "data": {"max_length": 8}}), tmp_path)
    with pytest.raises(ConfigError, match="no_such_key"):
        validate_suite(_suite(mpc_base={"no_such_key": 1}), tmp_path)


# ----------------------------------------------------------------------------- trials per phase
def test_each_phase_derives_its_trials_from_the_task_settings(tmp_path):
    sweep = resolve_suite_paths(_suite(), tmp_path)
    sweep_dir = tmp_path / "runs" / "s"
    assert phase_trials(sweep, "teachers") == ["rte", "cola"]
    assert phase_trials(sweep, "students") == [f"{t}/{a}" for t in ("rte", "cola")
                                               for a in ("quad+2quad", "quad+2relu", "wo_d", "wo_pd")]
    teacher = teacher_config(sweep, "rte", sweep_dir)
    assert teacher.model == "tiny" and teacher.optim.epochs == 5 and teacher.optim.lr == 1e-3  # base kept
    assert teacher.data.task == "rte" and teacher.data.data_dir == f"{tmp_path}/glue/RTE"
    assert teacher.data.max_length == 128 and teacher.output_dir == str(sweep_dir / "teachers" / "rte")
    student = student_config(sweep, "rte", "quad+2relu", sweep_dir)
    assert (student.combo, student.baseline) == ("quad+2relu", "none")
    assert student.stage1.epochs == 4 and student.stage2.epochs == 3 and student.stage2.lr == 2e-5
    assert student.teacher == f"{sweep_dir}/teachers/rte/best" and student.data.max_length == 128
    baseline = student_config(sweep, "cola", "wo_pd", sweep_dir)
    assert (baseline.combo, baseline.baseline, baseline.data.task) == ("quad+2quad", "wo_pd", "cola")
    assert len({student_config(sweep, t, a, sweep_dir).output_dir for t in sweep.tasks for a in sweep.arms}) == 8


def test_each_distilled_arm_runs_under_mpc_on_its_students_dev_examples(tmp_path):
    sweep = resolve_suite_paths(_suite(mpc_base={"batch_size": 4, "group": {"cpus_per_party": 0.5}},
                                       tasks={"rte": {"data": {"data_dir": "glue/RTE", "max_length": 96},
                                                      "mpc_examples": "all"},
                                              "cola": {"data": {"data_dir": "glue/CoLA"}, "mpc_examples": 0},
                                              "wnli": {"data": {"data_dir": "glue/WNLI"}}}), tmp_path)
    sweep_dir = tmp_path / "s"
    assert mpc_runs(sweep) == ["rte/quad+2quad", "rte/quad+2relu", "wnli/quad+2quad", "wnli/quad+2relu"]
    cfg = mpc_config(sweep, "rte", "quad+2relu", sweep_dir)
    student = student_config(sweep, "rte", "quad+2relu", sweep_dir)
    assert cfg.model == f"{sweep_dir}/students/rte/quad+2relu/best" and cfg.combos == ["quad+2relu"]
    assert cfg.data.model_dump() == student.data.model_dump() and cfg.data.max_length == 96 and cfg.seed == student.seed
    assert (cfg.split, cfg.limit, cfg.check_plaintext) == ("dev", None, True)
    assert cfg.out == f"{sweep_dir}/mpc/rte/quad+2relu" and cfg.batch_size == 4 and cfg.group.cpus_per_party == 0.5
    assert mpc_config(sweep, "wnli", "quad+2quad", sweep_dir).limit == 200
    layout = suite_layout(sweep, sweep_dir)
    assert layout["mpc_arms"] == ["quad+2quad", "quad+2relu"] and layout["tasks"]["cola"]["mpc"] == {}
    assert layout["tasks"]["rte"]["mpc"]["quad+2quad"] == f"{sweep_dir}/mpc/rte/quad+2quad"


def test_teachers_from_elsewhere_skip_phase_one(tmp_path):
    sweep = resolve_suite_paths(_suite(teachers_dir="teachers"), tmp_path)
    assert phase_trials(sweep, "teachers") == []
    student = student_config(sweep, "cola", "wo_d", tmp_path / "s")
    assert student.teacher == f"{tmp_path}/teachers/cola/best"
    assert suite_layout(sweep, tmp_path / "s")["tasks"]["cola"]["teacher"] == f"{tmp_path}/teachers/cola"


# ----------------------------------------------------------------------------- reuse
def _finish(cfg, mtime: float | None = None) -> None:
    """What a finished run leaves: metrics.json with its config, and its kept checkpoint."""
    folder = Path(cfg.output_dir)
    (folder / "best").mkdir(parents=True, exist_ok=True)
    metrics = folder / "metrics.json"
    metrics.write_text(json.dumps({"config": cfg.model_dump(), "checkpoint": str(folder / "best"),
                                   "primary_metric": "accuracy", "dev": {"accuracy": 0.5}}))
    if mtime is not None:
        os.utime(metrics, (mtime, mtime))


def test_a_finished_trial_of_the_same_config_is_reused(tmp_path):
    sweep = resolve_suite_paths(_suite(), tmp_path)
    sweep_dir = tmp_path / "s"
    teacher, student = teacher_config(sweep, "rte", sweep_dir), student_config(sweep, "rte", "wo_d", sweep_dir)
    assert finished_metrics(teacher) is None  # nothing there yet
    _finish(teacher, mtime=1_000)
    _finish(student, mtime=2_000)
    assert finished_metrics(teacher) is not None and finished_metrics(student) is not None
    changed = resolve_suite_paths(_suite(base={"stage2": {"lr": 3e-5}}), tmp_path)
    assert finished_metrics(student_config(changed, "rte", "wo_d", sweep_dir)) is None  # another config: trained
    _finish(teacher, mtime=3_000)  # the teacher trained again after the student: the student is stale
    assert finished_metrics(student) is None


def _finish_mpc(cfg, agreement: float = 1.0, complete: bool = True, mtime: float | None = None) -> dict:
    """What a finished MPC run leaves: run.json of its settings and the client's summary.json."""
    from mpcformer.inference.batches import BatchStore
    from mpcformer.inference.job import _run_info

    store = BatchStore(cfg.out)
    store.open(_run_info(cfg))
    combo = {"examples": cfg.limit or 3, "batches": 1, "agreement_with_plaintext": agreement,
             "task_metrics": {"accuracy": 0.5}, "plaintext_task_metrics": {"accuracy": 0.625},
             "seconds_per_sequence": 0.25}
    path = store.write_summary({"combos": {cfg.combos[0]: combo}, "complete": complete})
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return {"complete": complete, "batches_planned": 1}


def test_a_finished_mpc_run_of_the_same_settings_after_its_student_is_reused(tmp_path):
    sweep = resolve_suite_paths(_suite(), tmp_path)
    sweep_dir = tmp_path / "s"
    student = student_config(sweep, "rte", "quad+2quad", sweep_dir)
    cfg = mpc_config(sweep, "rte", "quad+2quad", sweep_dir)
    assert finished_mpc(cfg, student) is None  # nothing there yet
    _finish(student, mtime=1_000)
    _finish_mpc(cfg, mtime=2_000)
    assert finished_mpc(cfg, student)["combos"]["quad+2quad"]["examples"] == 200
    changed = resolve_suite_paths(_suite(mpc_base={"batch_size": 3}), tmp_path)
    other = mpc_config(changed, "rte", "quad+2quad", sweep_dir)
    assert finished_mpc(other, student) is None  # other settings: run again
    _finish(student, mtime=3_000)  # the student retrained after the run: measured again
    assert finished_mpc(cfg, student) is None
    _finish_mpc(cfg, complete=False)
    assert finished_mpc(cfg, student) is None


def test_the_mpc_phase_runs_what_is_not_finished_and_a_failure_stops_no_other_run(tmp_path, monkeypatch):
    monkeypatch.setattr("ray.is_initialized", lambda: True)  # every trial is finished: Tune never starts
    sweep = resolve_suite_paths(_suite(storage_path="out", mpc_examples=3, arms=["quad+2quad", "quad+2relu", "wo_d"]),
                                tmp_path)
    sweep_dir = tmp_path / "out" / "s"
    for task in sweep.tasks:
        _finish(teacher_config(sweep, task, sweep_dir), mtime=1_000)
        for arm in sweep.arms:
            _finish(student_config(sweep, task, arm, sweep_dir), mtime=2_000)
    stale = mpc_config(sweep, "cola", "quad+2relu", sweep_dir)
    _finish_mpc(stale, mtime=1_500)
    os.utime(Path(stale.out) / "run.json", (1_500, 1_500))  # begun before its student: its batches are not its
    (Path(stale.out) / "batches").mkdir()
    ran = []

    def run_mpc(cfg):
        ran.append(cfg.out)
        assert not (Path(cfg.out) / "batches").exists()  # a stale folder is cleared first
        if "/rte/" in cfg.out:
            raise RuntimeError("party lost")
        return _finish_mpc(cfg)

    first = run_suite(sweep, run_mpc=run_mpc)
    assert first["ran"] == {"teachers": 0, "students": 0, "mpc": 4}
    assert ran == [f"{sweep_dir}/mpc/{t}/{a}" for t in ("rte", "cola") for a in ("quad+2quad", "quad+2relu")]
    assert list(first["mpc_errors"]) == ["rte/quad+2quad", "rte/quad+2relu"] and first["errors"] == {}
    rows = {(r["task"], r["arm"]): r for r in first["report"]["mpc_rows"]}
    assert set(rows) == {(t, a) for t in ("rte", "cola") for a in ("quad+2quad", "quad+2relu")}  # no baseline
    assert rows[("cola", "quad+2relu")]["status"] == "ok" and rows[("cola", "quad+2relu")]["examples"] == 3
    assert rows[("rte", "quad+2relu")]["status"] == "failed" and rows[("rte", "quad+2relu")]["error"]
    ran.clear()
    again = run_suite(sweep, run_mpc=run_mpc)  # the finished runs are reused, the failed ones run again
    assert again["ran"]["mpc"] == 2 and ran == [f"{sweep_dir}/mpc/rte/{a}" for a in ("quad+2quad", "quad+2relu")]


# ----------------------------------------------------------------------------- prerequisites
def test_a_missing_data_folder_is_one_line_naming_it(tmp_path):
    sweep = resolve_suite_paths(_suite(storage_path=str(tmp_path / "out")), tmp_path)
    (tmp_path / "glue" / "CoLA").mkdir(parents=True)
    with pytest.raises(UserError) as err:
        check_suite_prerequisites(sweep)
    message = str(err.value)
    assert len(message.splitlines()) == 1 and f"{tmp_path}/glue/RTE" in message and "CoLA" not in message


def test_missing_teachers_from_elsewhere_name_the_command_that_makes_them(tmp_path):
    for task in ("RTE", "CoLA"):
        (tmp_path / "glue" / task).mkdir(parents=True)
    (tmp_path / "teachers" / "cola" / "best").mkdir(parents=True)
    sweep = resolve_suite_paths(_suite(teachers_dir="teachers", storage_path="out"), tmp_path)
    with pytest.raises(UserError) as err:
        check_suite_prerequisites(sweep)
    message = str(err.value)
    assert len(message.splitlines()) == 1 and f"{tmp_path}/teachers/rte/best" in message
    assert f"mpcformer finetune --task rte --data-dir {tmp_path}/glue/RTE --output-dir {tmp_path}/teachers/rte" \
        in message
    assert "teachers/cola" not in message


def test_the_command_line_refuses_a_missing_teacher_in_one_line(tmp_path, monkeypatch, capsys):
    from mpcformer.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr("mpcformer.cluster_connect.connect", lambda *a, **k: pytest.fail("Ray started"))
    config = tmp_path / "suite.yaml"
    config.write_text("name: s\ntasks: {wnli: {data: {data_dir: data}}}\n")
    (tmp_path / "data").mkdir()
    assert main(["sweep", "--config", str(config), "--set", "teachers_dir=elsewhere"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"{tmp_path}/elsewhere/wnli/best" in err
    assert "mpcformer finetune --task wnli" in err


# ----------------------------------------------------------------------------- shipped configs, quick form
def test_the_shipped_suites_cover_every_task():
    real = load_config(SweepConfig, "sweep-glue-minilm")
    quick = load_config(SweepConfig, "sweep-glue-minilm-quick")
    assert list(real.tasks) == list(quick.tasks) == GLUE_TASKS
    assert real.teacher_base["model"] == "minilm" and quick.teacher_base["model"] == "tiny"
    assert "wnli" not in real.average_tasks and len(real.average_tasks) == 5
    sweep_dir = Path("/nowhere")
    for sweep in (real, quick):
        validate_suite(sweep, sweep_dir)
    pairs = {t: teacher_config(real, t, sweep_dir).data.max_length for t in GLUE_TASKS}
    assert all(pairs[t] == 128 for t in ("mrpc", "stsb", "rte", "wnli"))
    for task in GLUE_TASKS:
        data_dirs = {teacher_config(s, task, sweep_dir).data.data_dir for s in (quick, real)}
        assert len(data_dirs) == 1
    # under MPC: 200 dev examples per task, all of RTE's and MRPC's; the quick file a few
    assert {t: mpc_limit(real, t) for t in GLUE_TASKS} == {**{t: 200 for t in GLUE_TASKS}, "rte": None, "mrpc": None}
    assert {mpc_limit(quick, t) for t in GLUE_TASKS} == {8}
    assert mpc_runs(real) == [f"{t}/{a}" for t in GLUE_TASKS for a in ("quad+2quad", "quad+2relu")]


def test_the_quick_form_keeps_the_tasks_at_a_tiny_budget():
    real = load_config(SweepConfig, "sweep-glue-minilm")
    quick = quick_form(real)
    assert quick.name == "glue-minilm-quick" and list(quick.tasks) == list(real.tasks) and quick.arms == real.arms
    sweep_dir = Path("/nowhere")
    for task in quick.tasks:
        teacher = teacher_config(quick, task, sweep_dir)
        assert teacher.model == "tiny" and teacher.optim.max_steps and teacher.data.max_train_examples <= 64
        student = student_config(quick, task, "quad+2quad", sweep_dir)
        assert student.stage1.max_steps and student.stage2.max_steps and student.data.max_length <= 32
    assert {mpc_limit(quick, t) for t in quick.tasks} == {8}  # RTE's and MRPC's "all" too
    cfg = mpc_config(quick, "rte", "quad+2quad", sweep_dir)
    assert cfg.limit == 8 and cfg.data.max_length <= 32 and cfg.group.cpus_per_party + cfg.group.cpus_for_dealer <= 1
    with pytest.raises(UserError, match="--quick"):
        quick_form(load_config(SweepConfig, "sweep-quick"))


# ----------------------------------------------------------------------------- the report's arithmetic
def _run(folder: Path, task: str, primary: str, kept: dict, last: dict, method: str = "teacher") -> None:
    folder.mkdir(parents=True)
    folder.joinpath("metrics.json").write_text(json.dumps({
        "job": "finetune" if method == "teacher" else "distill", "task": task, "method": method,
        "primary_metric": primary, "validation": {primary: kept[primary] - 0.01}, "dev": kept,
        "last": {"dev": last}, "best_step": 10, "best_phase": None if method == "teacher" else "stage2",
        "selection": {"chosen_on": "validation"},
    }))


#: task -> (metric, teacher's dev metrics, a student's): scores 0.5 (cola), 0.9, 0.85, 0.8, 0.6
SYNTHETIC = {
    "cola": ("matthews", {"matthews": 0.5}, {"matthews": 0.4}),
    "sst2": ("accuracy", {"accuracy": 0.9}, {"accuracy": 0.9}),
    "mrpc": ("f1", {"f1": 0.9, "accuracy": 0.8}, {"f1": 0.8, "accuracy": 0.7}),
    "stsb": ("pearson", {"pearson": 0.82, "spearman": 0.78}, {"pearson": 0.6, "spearman": 0.6}),
    "rte": ("accuracy", {"accuracy": 0.6}, {"accuracy": 0.5}),
    "wnli": ("accuracy", {"accuracy": 0.56}, {"accuracy": 0.2}),
}


def _synthetic_suite(root: Path, arms: list[str], absent: str | None = None) -> dict:
    layout = {"name": "synthetic", "arms": arms, "average_tasks": ["cola", "sst2", "mrpc", "stsb", "rte"],
              "tasks": {}, "errors": {}}
    for task, (primary, teacher, student) in SYNTHETIC.items():
        _run(root / "teachers" / task, task, primary, teacher, teacher)
        arms_dirs = {}
        for arm in arms:
            arms_dirs[arm] = str(root / "students" / task / arm)
            if f"{task}/{arm}" != absent:
                _run(root / "students" / task / arm, task, primary, student, {k: v / 2 for k, v in student.items()},
                     method="mpcformer")
        layout["tasks"][task] = {"teacher": str(root / "teachers" / task), "arms": arms_dirs}
    return layout


def test_task_scores_follow_glue():
    assert task_score({"f1": 0.9, "accuracy": 0.8}, ("f1", "accuracy")) == pytest.approx(0.85)
    assert task_score({"pearson": 0.82, "spearman": 0.78}, ("pearson", "spearman")) == pytest.approx(0.8)
    assert task_score({"f1": 0.9}, ("f1", "accuracy")) is None


def test_the_average_covers_five_tasks_with_wnli_apart(tmp_path):
    summary = suite_summary(_synthetic_suite(tmp_path, ["quad+2quad"]))
    teacher, student = summary["averages"]["teacher"], summary["averages"]["quad+2quad"]
    assert summary["average_tasks"] == ["cola", "sst2", "mrpc", "stsb", "rte"] and summary["apart_tasks"] == ["wnli"]
    assert teacher["kept"] == pytest.approx((0.5 + 0.9 + 0.85 + 0.8 + 0.6) / 5)  # WNLI's 0.56 left out
    assert student["kept"] == pytest.approx((0.4 + 0.9 + 0.75 + 0.6 + 0.5) / 5)
    assert student["kept_vs_teacher"] == pytest.approx(student["kept"] / teacher["kept"])
    assert student["last"] == pytest.approx(student["kept"] / 2)
    rows = {(r["task"], r["arm"]): r for r in summary["rows"]}
    assert len(rows) == 12
    assert rows[("mrpc", "teacher")]["dev_kept"] == {"f1": 0.9, "accuracy": 0.8}
    assert rows[("stsb", "quad+2quad")]["vs_teacher"] == pytest.approx(0.6 / 0.8)
    assert rows[("cola", "quad+2quad")]["validation"] == {"matthews": pytest.approx(0.39)}
    markdown = render_suite(summary)
    main, apart = markdown.split("Reported apart")
    assert "| wnli |" in apart and "| wnli |" not in main
    assert "f1 80.00% / accuracy 70.00%" in main and "pearson 60.00% / spearman 60.00%" in main


def test_a_missing_or_failed_trial_leaves_its_arm_without_an_average(tmp_path):
    layout = _synthetic_suite(tmp_path, ["quad+2quad", "wo_d"], absent="rte/wo_d")
    layout["errors"] = {"rte/wo_d": "UserError: boom"}
    (tmp_path / "suite-layout.json").write_text(json.dumps(layout))
    report = write_suite_report(tmp_path)
    assert report["averages"]["wo_d"]["kept"] is None and report["averages"]["wo_d"]["missing"] == ["rte"]
    assert report["averages"]["quad+2quad"]["kept"] is not None
    assert "failed: UserError: boom" in (tmp_path / "suite.md").read_text()
    saved = json.loads((tmp_path / "suite.json").read_text())
    assert saved["averages"]["wo_d"]["missing"] == ["rte"] and len(saved["rows"]) == 18


def test_the_report_command_writes_suite_files(tmp_path, capsys):
    from mpcformer.training.report import main

    (tmp_path / "suite-layout.json").write_text(json.dumps(_synthetic_suite(tmp_path, ["quad+2relu"])))
    assert main(["--suite", str(tmp_path)]) == 0
    assert (tmp_path / "suite.md").is_file() and (tmp_path / "suite.json").is_file()
    assert "quad+2relu" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["--suite", str(tmp_path / "absent")])
    assert exit_info.value.code == 2


def _mpc_summary(folder: Path, combo: str, examples: int, mpc: dict, plaintext: dict, **fidelity) -> None:
    folder.mkdir(parents=True)
    folder.joinpath("summary.json").write_text(json.dumps({"complete": True, "combos": {combo: {
        "examples": examples, "task_metrics": mpc, "plaintext_task_metrics": plaintext, "seconds_per_sequence": 1.5,
        "agreement_with_plaintext": None, **fidelity}}}))


def test_the_mpc_rows_put_each_student_under_mpc_beside_plaintext_with_its_bound(tmp_path):
    layout = _synthetic_suite(tmp_path, ["quad+2quad", "wo_d"])
    layout["mpc_arms"] = ["quad+2quad"]
    for task in SYNTHETIC:
        layout["tasks"][task]["mpc"] = {"quad+2quad": str(tmp_path / "mpc" / task / "quad+2quad")}
    folder = {task: tmp_path / "mpc" / task / "quad+2quad" for task in SYNTHETIC}
    cola = {"accuracy": 0.7, "matthews": 0.4}
    _mpc_summary(folder["cola"], "quad+2quad", 200, cola, cola, agreement_with_plaintext=0.995)
    _mpc_summary(folder["sst2"], "quad+2quad", 200, {"accuracy": 0.85}, {"accuracy": 0.9},
                 agreement_with_plaintext=0.99)
    _mpc_summary(folder["mrpc"], "quad+2quad", 408, {"accuracy": 0.7, "f1": 0.8}, {"accuracy": 0.7, "f1": 0.8},
                 agreement_with_plaintext=1.0)
    _mpc_summary(folder["stsb"], "quad+2quad", 200, {"pearson": 0.6, "spearman": 0.58},
                 {"pearson": 0.6, "spearman": 0.6}, max_abs_error_vs_plaintext=0.04)
    _mpc_summary(folder["rte"], "quad+2quad", 277, {"accuracy": 0.5}, {"accuracy": 0.5}, agreement_with_plaintext=1.0)
    layout["mpc_errors"] = {"wnli/quad+2quad": "JobFailed: party lost"}
    (tmp_path / "suite-layout.json").write_text(json.dumps(layout))
    report = write_suite_report(tmp_path)
    rows = {r["task"]: r for r in report["mpc_rows"]}
    assert list(rows) == list(SYNTHETIC) and {r["arm"] for r in report["mpc_rows"]} == {"quad+2quad"}
    assert {t: r["within_bound"] for t, r in rows.items() if t != "wnli"} == {
        "cola": True, "sst2": False, "mrpc": True, "stsb": True, "rte": True}
    assert rows["mrpc"]["metrics"] == ["f1", "accuracy"] and rows["mrpc"]["examples"] == 408
    assert rows["stsb"]["regression"] and rows["stsb"]["max_abs_error"] == 0.04 and rows["stsb"]["agreement"] is None
    assert rows["stsb"]["score_plaintext"] == pytest.approx(0.6) and rows["stsb"]["score_mpc"] == pytest.approx(0.59)
    assert rows["sst2"]["mpc"] == {"accuracy": 0.85} and rows["sst2"]["plaintext"] == {"accuracy": 0.9}
    assert rows["wnli"]["status"] == "failed" and rows["wnli"]["error"] == "JobFailed: party lost"
    saved = json.loads((tmp_path / "suite.json").read_text())
    assert saved["mpc_rows"] == report["mpc_rows"] and saved["mpc_bounds"] == {"min_agreement": 0.995,
                                                                              "max_abs_error": 0.05}
    markdown = (tmp_path / "suite.md").read_text().split("## Under MPC")[1]
    assert "| mrpc | quad+2quad | 408 | f1 80.00% / accuracy 70.00% | f1 80.00% / accuracy 70.00% |" in markdown
    assert "| stsb | quad+2quad | 200 |" in markdown and "max abs error 0.0400" in markdown
    assert ("| sst2 | quad+2quad | 200 | accuracy 85.00% | accuracy 90.00% | agreement 99.00% | 1.500 s | no |"
            in markdown)
    assert "| wnli | quad+2quad | failed: JobFailed: party lost |" in markdown


def test_a_suite_without_mpc_runs_has_no_mpc_section(tmp_path):
    (tmp_path / "suite-layout.json").write_text(json.dumps(_synthetic_suite(tmp_path, ["wo_d"])))
    report = write_suite_report(tmp_path)
    assert report["mpc_rows"] == [] and "Under MPC" not in report["markdown"]
