"""Distillation sweeps on Ray Tune: a 2-trial grid completes, writes its tables, and resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mpcformer.config import ConfigError, build_config, load_config
from mpcformer.sweep import SweepConfig, run_sweep, trial_config, validate_grid

REPO = Path(__file__).resolve().parents[1]


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
def test_two_trial_sweep_completes_and_resumes(tiny_setup):
    import ray

    root, data, teacher = tiny_setup
    sweep = _sweep(root, data, teacher)
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        first = run_sweep(sweep)
        assert first["trials"] == 2 and first["failed"] == 0
        sweep_dir = Path(first["sweep_dir"])
        best = json.loads((sweep_dir / "best.json").read_text())
        assert set(best) == {"quad+2quad", "quad+2relu"}
        for entry in best.values():
            assert Path(entry["checkpoint_dir"]).is_dir() and 0.0 <= entry["score"] <= 1.0
            trial = json.loads((Path(entry["checkpoint_dir"]).parent / "metrics.json").read_text())
            assert entry["score"] == trial["validation"]["accuracy"]  # ranked on validation; dev is the test set
            assert entry["params"]["score"] == entry["score"]
        assert "quad+2relu" in (sweep_dir / "results.md").read_text()
        mtimes = {p: p.stat().st_mtime for p in sweep_dir.glob("trials/*/metrics.json")}
        assert len(mtimes) == 2
        # Resume: the finished experiment is restored, not re-run; tables are rebuilt from it.
        second = run_sweep(sweep)
        assert second["trials"] == 2 and second["failed"] == 0
        assert {p: p.stat().st_mtime for p in sweep_dir.glob("trials/*/metrics.json")} == mtimes
    finally:
        ray.shutdown()
