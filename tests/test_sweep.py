"""Distillation sweeps on Ray Tune: a 2-trial grid completes, writes its tables, and resumes;
shipped configs by name; paths resolved where the command was given; prerequisites checked before
any trial; errors no retry fixes are not retried and their causes reach the tables."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from mpcformer.cli import main
from mpcformer.config import ConfigError, build_config, load_config
from mpcformer.errors import UserError
from mpcformer.sweep import (
    SweepConfig, error_cause, failure_lines, resolve_paths, run_sweep, trial_config, trial_configs, validate_grid,
)

from ray_support import embedded_ray  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_cluster():
    with embedded_ray(num_cpus=2):
        yield


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    from mpcformer.data.synthetic import write_synthetic_sentiment
    from mpcformer.training.config import FinetuneConfig
    from mpcformer.training.finetune import run_finetune

    root = tmp_path_factory.mktemp("sweep")
    # 400 sentences: 200 held out as the validation split that ranks the trials, 200 to train on
    data = write_synthetic_sentiment(root / "data", num_train=400, num_dev=48, seed=0)
    teacher = run_finetune(FinetuneConfig(
        model="tiny", output_dir=str(root / "teacher"), progress=False,
        data={"data_dir": str(data), "max_length": 24},
        optim={"max_steps": 20, "lr": 3e-3, "batch_size": 16},
    ))
    return root, data, teacher["checkpoint"]


def _sweep(root: Path, data: Path, teacher: str) -> SweepConfig:
    return load_config(SweepConfig, REPO / "jobs/configs/sweep-quick.yaml", {
        "storage_path": str(root / "sweeps"),
        "prerequisites": {},
        "base.teacher": teacher,
        "base.data.data_dir": str(data),
        "base.data.max_length": 24,
        "base.stage1.max_steps": 4,
        "base.stage2.max_steps": 4,
    })


def test_bad_grid_fails_before_any_trial(tmp_path):
    sweep = build_config(SweepConfig, {"grid": {"stage2.no_such_key": [1]}})
    with pytest.raises(ConfigError, match="no_such_key"):
        validate_grid(sweep, tmp_path)
    with pytest.raises(ConfigError, match="no values"):
        build_config(SweepConfig, {"grid": {"combo": []}})


def test_a_sweep_without_a_validation_split_is_refused(tmp_path):
    from mpcformer.errors import UserError

    sweep = build_config(SweepConfig, {"grid": {"data.validation_fraction": [0.0]}})
    with pytest.raises(UserError, match="validation_fraction"):
        validate_grid(sweep, tmp_path)


def test_trial_folders_are_stable_per_parameters(tmp_path):
    sweep = build_config(SweepConfig, {"grid": {"combo": ["quad+2quad"]}})
    a = trial_config(sweep, {"combo": "quad+2quad", "stage2.lr": 1e-5}, tmp_path)
    b = trial_config(sweep, {"stage2.lr": 1e-5, "combo": "quad+2quad"}, tmp_path)
    assert a.output_dir == b.output_dir and a.stage2.lr == 1e-5


@pytest.mark.timeout(600)
def test_two_trial_sweep_completes_and_resumes(tiny_setup, ray_cluster, monkeypatch):
    root, data, teacher = tiny_setup
    # Paths relative to the directory the sweep is started from: trials run in folders of Tune's.
    monkeypatch.chdir(root)
    sweep = _sweep(Path("."), Path(os.path.relpath(data, root)), os.path.relpath(teacher, root))
    assert not Path(sweep.base["teacher"]).is_absolute() and sweep.storage_path == "sweeps"
    first = run_sweep(sweep)
    assert first["trials"] == 2 and first["failed"] == 0, first["rows"]
    sweep_dir = Path(first["sweep_dir"])
    assert sweep_dir == root / "sweeps" / "quick"
    best = json.loads((sweep_dir / "best.json").read_text())
    assert set(best) == {"quad+2quad", "quad+2relu"}
    for entry in best.values():
        assert Path(entry["checkpoint_dir"]).is_dir() and 0.0 <= entry["score"] <= 1.0
        trial = json.loads((Path(entry["checkpoint_dir"]).parent / "metrics.json").read_text())
        assert entry["score"] == trial["validation"]["accuracy"]  # ranked on validation; dev is the test set
        assert entry["params"]["score"] == entry["score"]
    assert "quad+2relu" in (sweep_dir / "results.md").read_text()
    assert [r["attempts"] for r in first["rows"]] == [1, 1]
    mtimes = {p: p.stat().st_mtime for p in sweep_dir.glob("trials/*/metrics.json")}
    assert len(mtimes) == 2
    # Resume: the finished experiment is restored, not re-run; tables are rebuilt from it.
    second = run_sweep(sweep)
    assert second["trials"] == 2 and second["failed"] == 0
    assert {p: p.stat().st_mtime for p in sweep_dir.glob("trials/*/metrics.json")} == mtimes


# ----------------------------------------------------------------------------- shipped names, paths
@pytest.mark.parametrize("name", ["sweep-quick", "sweep-quick.yaml"])
def test_shipped_sweep_config_by_name(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no file of that name here
    assert load_config(SweepConfig, name) == load_config(SweepConfig, REPO / "jobs/configs/sweep-quick.yaml")


def test_a_missing_path_with_a_folder_is_not_taken_for_a_shipped_name(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(SweepConfig, tmp_path / "sweep-quick.yaml")


def test_relative_paths_resolve_against_the_submitting_directory(tmp_path, monkeypatch):
    submitted_from, trial_cwd = tmp_path / "here", tmp_path / "elsewhere"
    submitted_from.mkdir()
    trial_cwd.mkdir()
    monkeypatch.chdir(submitted_from)
    sweep = build_config(SweepConfig, {
        "storage_path": "out",
        "base": {"teacher": "teachers/t/best", "data": {"data_dir": "data/sst2"}},
        "grid": {"data.train_file": ["a/train.tsv", "/abs/train.tsv"], "combo": ["quad+2quad"]},
        "prerequisites": {"teachers/t/best": "mpcformer finetune ..."},
    })
    resolved = resolve_paths(sweep)
    here = str(submitted_from)
    assert resolved.storage_path == f"{here}/out"
    assert resolved.base["teacher"] == f"{here}/teachers/t/best"
    assert resolved.base["data"]["data_dir"] == f"{here}/data/sst2"
    assert resolved.grid["data.train_file"] == [f"{here}/a/train.tsv", "/abs/train.tsv"]
    assert resolved.grid["combo"] == ["quad+2quad"]
    assert list(resolved.prerequisites) == [f"{here}/teachers/t/best"]
    assert resolve_paths(resolved, trial_cwd) == resolved  # absolute paths stay
    # a trial builds its config wherever it runs: the paths still point under the submitting folder
    monkeypatch.chdir(trial_cwd)
    cfgs = trial_configs(resolved, Path(resolved.storage_path) / "s")
    assert {c.teacher for c in cfgs} == {f"{here}/teachers/t/best"}
    assert {c.data.train_file for c in cfgs} == {f"{here}/a/train.tsv", "/abs/train.tsv"}
    # a teacher the config leaves at its default is resolved too
    default = resolve_paths(build_config(SweepConfig, {}), submitted_from)
    assert Path(default.base["teacher"]).is_absolute() and default.base["teacher"].startswith(here)


# ----------------------------------------------------------------------------- prerequisites
def _cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def _no_ray(monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("Ray was started although a prerequisite is missing")

    monkeypatch.setattr("mpcformer.cluster_connect.connect", never)
    monkeypatch.setattr("mpcformer.sweep.run_sweep", never)


def test_missing_teacher_fails_in_one_line_before_any_trial(tmp_path, monkeypatch, capsys):
    from mpcformer.data.make_synthetic import main as make_synthetic

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    _no_ray(monkeypatch)
    assert make_synthetic(["runs/synthetic", "--num-train", "8", "--num-dev", "4"]) == 0  # the data is there
    code, err = _cli(["sweep", "--config", "sweep-quick"], capsys)
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert f"{tmp_path}/runs/finetune/tiny/best" in err and "mpcformer finetune --config finetune-tiny" in err
    assert "runs/synthetic" not in err  # only what is missing
    assert not (tmp_path / "runs" / "sweeps").exists()


def test_every_missing_path_is_named_with_its_command(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    _no_ray(monkeypatch)
    code, err = _cli(["sweep", "--config", "sweep-quick.yaml"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{tmp_path}/runs/synthetic" in err and "python -m mpcformer.data.make_synthetic runs/synthetic" in err
    assert f"{tmp_path}/runs/finetune/tiny/best" in err


def test_missing_data_file_of_one_grid_value_is_found(tmp_path):
    (tmp_path / "teacher").mkdir()
    (tmp_path / "a.tsv").write_text("sentence\tlabel\n")
    sweep = build_config(SweepConfig, {
        "base": {"teacher": "teacher", "data": {"dev_file": "a.tsv"}}, "grid": {"data.train_file": ["a.tsv", "b.tsv"]},
    })
    from mpcformer.sweep import check_prerequisites

    with pytest.raises(UserError, match=f"data file not found: {tmp_path}/b.tsv"):
        check_prerequisites(resolve_paths(sweep, tmp_path))


def test_missing_teacher_on_a_cluster_is_found_before_any_trial(tmp_path, ray_cluster):
    """Joined to a cluster, the driver checks on a node that runs trials (the head may not mount
    the teacher), still before Tune starts."""
    sweep = build_config(SweepConfig, {"name": "s", "storage_path": str(tmp_path / "out"),
                                       "base": {"teacher": str(tmp_path / "absent")}})
    with pytest.raises(UserError, match=f"teacher checkpoint not found: {tmp_path}/absent.*on a node that runs trials"):
        run_sweep(sweep)
    assert not (tmp_path / "out" / "s" / "tune").exists()


# ----------------------------------------------------------------------------- failed trials
def test_error_cause_unwraps_ray_task_errors():
    from ray.exceptions import RayTaskError

    wrapped = RayTaskError("ImplicitFunc.train", "Traceback ...", ValueError("bad lr\nmore")).as_instanceof_cause()
    assert error_cause(wrapped) == "ValueError: bad lr"
    assert error_cause(UserError("teacher checkpoint not found: x")) == "UserError: teacher checkpoint not found: x"


def _scripted_trial(fixed: Path):
    """Per combo: crash the worker on the first attempt then succeed; a UserError until ``fixed``
    exists; a pydantic ValidationError. Nested, so Ray ships it by value."""

    def trial(cfg):
        from mpcformer.training.config import DistillConfig

        out = Path(cfg.output_dir)
        if cfg.combo == "quad+2relu" and not fixed.exists():
            raise UserError("train.tsv:3: 1 fields but the header has 2\nnot shown")
        if cfg.combo == "relu+softmax":
            DistillConfig.model_validate({"seed": "not a number"})
        crashed = out / "crashed-once"
        if cfg.combo == "quad+2quad" and not crashed.exists():
            crashed.write_text("")
            os._exit(1)  # the worker dies: a crash, which a retry can fix
        return {"validation": {"accuracy": 0.75}, "dev": {"accuracy": 0.7}, "primary_metric": "accuracy",
                "checkpoint": str(out)}

    return trial


@pytest.mark.timeout(600)
def test_config_errors_are_not_retried_and_their_causes_are_reported(tmp_path, ray_cluster):
    for folder in ("teacher", "data"):
        (tmp_path / folder).mkdir()
    sweep = build_config(SweepConfig, {
        "name": "failing", "storage_path": str(tmp_path / "out"), "max_failures": 2,
        "base": {"teacher": str(tmp_path / "teacher"), "data": {"data_dir": str(tmp_path / "data")}},
        "grid": {"combo": ["quad+2quad", "quad+2relu", "relu+softmax"]},
    })
    fixed = tmp_path / "fixed"
    summary = run_sweep(sweep, run_trial=_scripted_trial(fixed))
    rows = {r["combo"]: r for r in summary["rows"]}
    assert summary["trials"] == 3 and summary["failed"] == 2
    crashed, user_error, invalid = rows["quad+2quad"], rows["quad+2relu"], rows["relu+softmax"]
    assert crashed["status"] == "ok" and crashed["attempts"] == 2 and crashed["score"] == 0.75
    assert user_error["status"] == "error" and user_error["attempts"] == 1
    assert user_error["error"] == "UserError: train.tsv:3: 1 fields but the header has 2"
    assert invalid["status"] == "error" and invalid["attempts"] == 1
    assert invalid["error"].startswith("ValidationError: ")
    sweep_dir = Path(summary["sweep_dir"])
    table = (sweep_dir / "results.md").read_text()
    assert "UserError: train.tsv:3: 1 fields but the header has 2" in table and "not shown" not in table
    assert "ImplicitFunc" not in table
    with open(sweep_dir / "results.csv", newline="") as fh:
        by_combo = {r["combo"]: r for r in csv.DictReader(fh)}
    assert by_combo["quad+2relu"]["error"] == user_error["error"] and by_combo["quad+2relu"]["attempts"] == "1"
    lines = failure_lines(summary)
    assert len(lines) == 2 and any("combo=quad+2relu" in line and user_error["error"] in line for line in lines)
    assert set(json.loads((sweep_dir / "best.json").read_text())) == {"quad+2quad"}
    # The cause fixed, the same sweep again: the stopped trials run again, the finished one does not.
    fixed.write_text("")
    again = {r["combo"]: r for r in run_sweep(sweep, run_trial=_scripted_trial(fixed))["rows"]}
    assert again["quad+2relu"]["status"] == "ok" and again["quad+2relu"]["attempts"] == 2
    assert again["relu+softmax"]["status"] == "error" and again["relu+softmax"]["attempts"] == 2
    assert again["quad+2quad"]["status"] == "ok" and again["quad+2quad"]["attempts"] == 2


@pytest.mark.timeout(600)
def test_a_bad_data_file_stops_its_real_trial_without_retries(tiny_setup, tmp_path, ray_cluster):
    root, data, teacher = tiny_setup
    bad = tmp_path / "bad-data"
    bad.mkdir()
    (bad / "dev.tsv").write_text((data / "dev.tsv").read_text())
    (bad / "train.tsv").write_text("sentence\tlabel\na fine film\t1\nno label here\n")
    sweep = _sweep(tmp_path, bad, teacher).model_copy(update={"name": "bad-data", "grid": {"combo": ["quad+2quad"]}})
    summary = run_sweep(sweep)
    (row,) = summary["rows"]
    assert row["status"] == "error" and row["attempts"] == 1
    assert row["error"].startswith("UserError: ") and "train.tsv:3" in row["error"]
    assert row["error"] in (Path(summary["sweep_dir"]) / "results.md").read_text()
