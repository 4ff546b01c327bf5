"""The GLUE suite end to end through Ray Tune on the tiny preset: `mpcformer sweep --config
sweep-glue-minilm --quick` trains a teacher per task and every arm from it, the report has every
row and averages the five tasks with WNLI apart; a rerun reuses every finished trial, an unfinished
one is trained again, and teachers trained elsewhere are taken from ``teachers_dir``."""

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
OFFICIAL = {"cola": ("matthews",), "sst2": ("accuracy",), "mrpc": ("f1", "accuracy"), "stsb": ("pearson", "spearman"),
            "rte": ("accuracy",), "wnli": ("accuracy",)}

pytestmark = pytest.mark.timeout(900)


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


def test_a_rerun_reuses_every_finished_trial(quick_suite, ray_cluster):
    _, sweep, sweep_dir = quick_suite
    outputs = sorted(sweep_dir.glob("*/**/metrics.json"))
    assert len(outputs) == 30
    before = {p: p.stat().st_mtime_ns for p in outputs}
    again = run_suite(sweep)
    assert again["ran"] == {"teachers": 0, "students": 0} and again["errors"] == {}
    assert {p: p.stat().st_mtime_ns for p in outputs} == before
    assert set(again["attempts"].values()) == {1}
    # an unfinished trial (no metrics.json) is the only one trained again
    (sweep_dir / "students" / "rte" / "wo_pd" / "metrics.json").unlink()
    partial = run_suite(sweep)
    assert partial["ran"] == {"teachers": 0, "students": 1} and partial["errors"] == {}
    assert partial["attempts"]["rte/wo_pd"] == 2 and partial["attempts"]["rte/wo_d"] == 1
    assert (sweep_dir / "students" / "rte" / "wo_pd" / "metrics.json").is_file()


def test_teachers_trained_elsewhere_are_reused(quick_suite, ray_cluster):
    _, sweep, sweep_dir = quick_suite
    elsewhere = sweep.model_copy(update={
        "name": "with-teachers", "teachers_dir": str(sweep_dir / "teachers"), "arms": ["wo_d"],
        "tasks": {t: sweep.tasks[t] for t in ("rte", "wnli")},
    })
    summary = run_suite(elsewhere)
    assert summary["ran"] == {"teachers": 0, "students": 2} and summary["errors"] == {}
    student = _metrics(Path(summary["sweep_dir"]) / "students" / "wnli" / "wo_d")
    assert student["teacher"] == str(sweep_dir / "teachers" / "wnli" / "best")
    assert not (Path(summary["sweep_dir"]) / "teachers").exists()
