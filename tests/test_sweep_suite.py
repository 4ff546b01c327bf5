"""The GLUE suite end to end through Ray Tune on the tiny preset: `mpcformer sweep --config
sweep-glue-minilm --quick` trains a teacher per task and every arm from it, runs each distilled arm
of each task under MPC on a few dev examples, the report has every row (MPC rows with agreement or
error that the written predictions reproduce) and averages the five tasks with WNLI apart; a rerun
reuses every finished trial and MPC run, an unfinished one is run again, and teachers trained
elsewhere are taken from ``teachers_dir``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mpcformer.cli import main
from mpcformer.config import load_config
from mpcformer.suite import quick_form, run_suite
from mpcformer.sweep import SweepConfig
from mpcformer.training.report import task_score

from ray_support import embedded_ray  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TASKS = ["cola", "sst2", "mrpc", "stsb", "rte", "wnli"]
AVERAGED = ["cola", "sst2", "mrpc", "stsb", "rte"]
ARMS = ["quad+2quad", "quad+2relu", "wo_d", "wo_pd"]
DISTILLED = ["quad+2quad", "quad+2relu"]
MPC_EXAMPLES = 8  # the quick form's
OFFICIAL = {"cola": ("matthews",), "sst2": ("accuracy",), "mrpc": ("f1", "accuracy"), "stsb": ("pearson", "spearman"),
            "rte": ("accuracy",), "wnli": ("accuracy",)}

pytestmark = pytest.mark.timeout(1800)  # 30 trainings and 12 MPC runs on 2 cores


@pytest.fixture(scope="module")
def ray_cluster():
    with embedded_ray(num_cpus=2):
        yield


@pytest.fixture(scope="module")
def quick_suite(glue_dir, sst2_dir, ray_cluster, tmp_path_factory):
    """The shipped suite's quick form, run once through the command line from the repository root
    (where its ../shared data paths resolve); results under a temporary storage path."""
    storage = tmp_path_factory.mktemp("suite")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        patch.delenv("RAY_ADDRESS", raising=False)
        code = main(["sweep", "--config", "sweep-glue-minilm", "--quick", "--set", f"storage_path={storage}"])
    sweep = quick_form(load_config(SweepConfig, "sweep-glue-minilm", {"storage_path": str(storage)}))
    return code, sweep, storage / "glue-minilm-quick"


def _metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def test_every_task_and_arm_has_a_result(quick_suite):
    code, _, sweep_dir = quick_suite
    assert code == 0
    for task in TASKS:
        teacher = _metrics(sweep_dir / "teachers" / task)
        assert teacher["job"] == "finetune" and teacher["task"] == task
        for arm in ARMS:
            student = _metrics(sweep_dir / "students" / task / arm)
            assert student["task"] == task and student["teacher"] == str(sweep_dir / "teachers" / task / "best")
            assert student["baseline"] == (arm if arm.startswith("wo_") else "none")
            assert student["combo"] == ("quad+2quad" if arm.startswith("wo_") else arm)
            assert set(OFFICIAL[task]) <= set(student["dev"]) and student["selection"]["chosen_on"] == "validation"


def test_the_report_has_every_row_and_averages_five_tasks(quick_suite):
    _, _, sweep_dir = quick_suite
    report = json.loads((sweep_dir / "suite.json").read_text())
    rows = {(r["task"], r["arm"]): r for r in report["rows"]}
    assert set(rows) == {(t, a) for t in TASKS for a in ["teacher", *ARMS]}
    assert all(r["status"] == "ok" for r in rows.values())
    assert report["average_tasks"] == AVERAGED and report["apart_tasks"] == ["wnli"]
    for arm in ["teacher", *ARMS]:
        folder = {t: sweep_dir / "teachers" / t if arm == "teacher" else sweep_dir / "students" / t / arm
                  for t in AVERAGED}
        expected = sum(task_score(_metrics(folder[t])["dev"], OFFICIAL[t]) for t in AVERAGED) / 5
        assert report["averages"][arm]["kept"] == pytest.approx(expected)
        assert report["averages"][arm]["missing"] == []
    markdown = (sweep_dir / "suite.md").read_text()
    in_average, apart = markdown.split("Reported apart")
    for task in TASKS:
        for arm in ["teacher", *ARMS]:
            assert f"| {task} | {arm} |" in (apart if task == "wnli" else in_average)


def _records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines() if line.strip()]


def test_every_distilled_arm_of_every_task_ran_under_mpc(quick_suite):
    _, _, sweep_dir = quick_suite
    assert sorted(p.relative_to(sweep_dir / "mpc").as_posix() for p in (sweep_dir / "mpc").glob("*/*")) == \
        sorted(f"{t}/{a}" for t in TASKS for a in DISTILLED)  # the baselines are not run under MPC
    report = json.loads((sweep_dir / "suite.json").read_text())
    rows = {(r["task"], r["arm"]): r for r in report["mpc_rows"]}
    assert set(rows) == {(t, a) for t in TASKS for a in DISTILLED}
    for (task, arm), row in rows.items():
        folder = sweep_dir / "mpc" / task / arm
        student = sweep_dir / "students" / task / arm / "best"
        assert json.loads((folder / "run.json").read_text())["model"] == str(student)
        records = _records(folder)
        assert sorted(r["example_id"] for r in records) == list(range(MPC_EXAMPLES))
        assert row["status"] == "ok" and row["examples"] == MPC_EXAMPLES and row["seconds_per_example"] > 0
        assert set(row["metrics"]) == set(OFFICIAL[task]) and all(v is not None for v in row["plaintext"].values())
        if task == "stsb":  # a regression: the largest score difference, no agreement
            assert row["regression"] and row["agreement"] is None
            assert row["max_abs_error"] == pytest.approx(max(abs(r["prediction"] - r["plaintext_prediction"])
                                                             for r in records))
        else:
            assert not row["regression"] and 0.0 <= row["agreement"] <= 1.0
            assert row["agreement"] == pytest.approx(
                sum(r["prediction"] == r["plaintext_prediction"] for r in records) / len(records))
    markdown = (sweep_dir / "suite.md").read_text().split("## Under MPC")[1]
    assert all(f"| {task} | {arm} | {MPC_EXAMPLES} |" in markdown for task, arm in rows)


def test_a_rerun_reuses_every_finished_trial_and_mpc_run(quick_suite, ray_cluster):
    _, sweep, sweep_dir = quick_suite
    outputs = sorted(sweep_dir.glob("*/**/metrics.json")) + sorted(sweep_dir.glob("mpc/*/*/summary.json"))
    assert len(outputs) == 30 + 12
    before = {p: p.stat().st_mtime_ns for p in outputs}
    again = run_suite(sweep)
    assert again["ran"] == {"teachers": 0, "students": 0, "mpc": 0}
    assert again["errors"] == {} and again["mpc_errors"] == {}
    assert {p: p.stat().st_mtime_ns for p in outputs} == before
    assert set(again["attempts"].values()) == {1}
    # an unfinished trial (no metrics.json) is the only one trained again; no MPC run measures a baseline
    (sweep_dir / "students" / "rte" / "wo_pd" / "metrics.json").unlink()
    # an MPC run without its summary resumes: its batches are kept, only the summary is written again
    mpc_rte = sweep_dir / "mpc" / "rte" / "quad+2quad"
    batches = {p: p.stat().st_mtime_ns for p in mpc_rte.glob("batches/*/*.jsonl")}
    (mpc_rte / "summary.json").unlink()
    partial = run_suite(sweep)
    assert partial["ran"] == {"teachers": 0, "students": 1, "mpc": 1}
    assert partial["errors"] == {} and partial["mpc_errors"] == {}
    assert partial["attempts"]["rte/wo_pd"] == 2 and partial["attempts"]["rte/wo_d"] == 1
    assert (sweep_dir / "students" / "rte" / "wo_pd" / "metrics.json").is_file()
    assert batches and {p: p.stat().st_mtime_ns for p in mpc_rte.glob("batches/*/*.jsonl")} == batches
    assert (mpc_rte / "summary.json").is_file()


def test_a_retrained_student_is_measured_again_under_mpc(quick_suite, ray_cluster):
    _, sweep, sweep_dir = quick_suite
    mpc_wnli = sweep_dir / "mpc" / "wnli" / "quad+2relu"
    old_batches = {p: p.stat().st_mtime_ns for p in mpc_wnli.glob("batches/*/*.jsonl")}
    (sweep_dir / "students" / "wnli" / "quad+2relu" / "metrics.json").unlink()
    summary = run_suite(sweep)
    assert summary["ran"] == {"teachers": 0, "students": 1, "mpc": 1} and summary["mpc_errors"] == {}
    new_batches = {p: p.stat().st_mtime_ns for p in mpc_wnli.glob("batches/*/*.jsonl")}
    assert set(new_batches) == set(old_batches) and all(new_batches[p] != old_batches[p] for p in old_batches)
    assert sorted(r["example_id"] for r in _records(mpc_wnli)) == list(range(MPC_EXAMPLES))


def test_teachers_trained_elsewhere_are_reused(quick_suite, ray_cluster):
    _, sweep, sweep_dir = quick_suite
    elsewhere = sweep.model_copy(update={
        "name": "with-teachers", "teachers_dir": str(sweep_dir / "teachers"), "arms": ["wo_d"],
        "tasks": {t: sweep.tasks[t] for t in ("rte", "wnli")},
    })
    summary = run_suite(elsewhere)
    assert summary["ran"] == {"teachers": 0, "students": 2, "mpc": 0} and summary["errors"] == {}
    student = _metrics(Path(summary["sweep_dir"]) / "students" / "wnli" / "wo_d")
    assert student["teacher"] == str(sweep_dir / "teachers" / "wnli" / "best")
    assert not (Path(summary["sweep_dir"]) / "teachers").exists()
