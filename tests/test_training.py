"""Training: loss functions on hand-made tensors, fine-tuning and distillation on the tiny preset."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from mpcformer.approx.registry import Combo
from mpcformer.config import ConfigError
from mpcformer.data.synthetic import write_synthetic_sentiment
from mpcformer.training.config import DistillConfig, FinetuneConfig
from mpcformer.training.losses import (
    HiddenProjection,
    layer_map,
    layerwise_loss,
    masked_attention_mse,
    masked_hidden_mse,
    prediction_distillation_loss,
    soft_cross_entropy,
    task_loss,
)

# ----------------------------------------------------------------------------- losses (hand-made tensors)


@pytest.mark.timeout(30)
def test_attention_mse_ignores_padded_queries_and_keys():
    mask = torch.tensor([[1, 1, 0]])  # (B=1, T=3): last token is padding
    student = torch.zeros(1, 2, 3, 3)
    teacher = torch.full((1, 2, 3, 3), 2.0)
    teacher[..., 2] = -1e9  # padded key: arbitrary (HF-style) value
    teacher[..., 2, :] = float("inf")  # padded query
    # real pairs: 2 heads x 2 x 2 = 8, each (0 - 2)^2 = 4
    assert masked_attention_mse(student, teacher, mask).item() == pytest.approx(4.0)
    student.requires_grad_(True)
    masked_attention_mse(student, teacher, mask).backward()
    assert torch.isfinite(student.grad).all() and student.grad[..., 2].abs().sum() == 0


@pytest.mark.timeout(30)
def test_hidden_mse_averages_over_real_tokens_and_features():
    mask = torch.tensor([[1, 0], [1, 1]])
    student = torch.zeros(2, 2, 4)
    teacher = torch.tensor([[[1.0] * 4, [100.0] * 4], [[2.0] * 4, [3.0] * 4]])
    # real tokens: (1)^2, (2)^2, (3)^2 over 4 features each -> (1 + 4 + 9) * 4 / (3 * 4)
    assert masked_hidden_mse(student, teacher, mask).item() == pytest.approx(14 / 3)


@pytest.mark.timeout(30)
def test_soft_cross_entropy_matches_the_formula():
    student = torch.tensor([[1.0, 2.0], [0.5, -0.5]])
    teacher = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    for tau in (1.0, 2.0):
        p = F.softmax(teacher / tau, -1)
        expected = -(p * F.log_softmax(student / tau, -1)).sum(-1).mean()
        assert soft_cross_entropy(student, teacher, tau).item() == pytest.approx(expected.item())
    # hand value, row 2 at tau=1: targets (1/2, 1/2), log-probs log(e^.5/(e^.5+e^-.5)) and its complement
    row = -(0.5 * math.log(1 / (1 + math.exp(-1))) + 0.5 * math.log(1 / (1 + math.exp(1))))
    assert soft_cross_entropy(student[1:], teacher[1:]).item() == pytest.approx(row)
    # minimum over students is reached at the teacher's own logits (= teacher entropy)
    assert soft_cross_entropy(teacher, teacher) < soft_cross_entropy(student, teacher)
    with pytest.raises(ValueError):
        soft_cross_entropy(student, teacher, 0.0)


@pytest.mark.timeout(30)
def test_prediction_and_task_losses():
    s, t = torch.tensor([[1.0], [3.0]]), torch.tensor([[2.0], [1.0]])
    assert prediction_distillation_loss(s, t, regression=True).item() == pytest.approx((1 + 4) / 2)
    assert task_loss(s, torch.tensor([1.0, 3.0]), regression=True).item() == pytest.approx(0.0)
    logits = torch.tensor([[0.0, math.log(3.0)]])  # p = (1/4, 3/4)
    assert task_loss(logits, torch.tensor([1]), regression=False).item() == pytest.approx(-math.log(0.75))


@pytest.mark.timeout(30)
def test_projection_layer_map_and_layerwise_sum():
    assert isinstance(HiddenProjection(8, 8).proj, torch.nn.Identity)
    assert HiddenProjection(4, 8)(torch.zeros(2, 3, 4)).shape == (2, 3, 8)
    assert layer_map(2, 4) == [2, 4] and layer_map(3, 3) == [1, 2, 3]
    with pytest.raises(ValueError):
        layer_map(3, 4)
    mask = torch.ones(1, 2)
    scores_s, scores_t = [torch.zeros(1, 1, 2, 2)] * 2, [torch.ones(1, 1, 2, 2)] * 2
    hidden_s, hidden_t = [torch.zeros(1, 2, 3)] * 3, [torch.full((1, 2, 3), 2.0)] * 3
    attention, hidden = layerwise_loss(scores_s, scores_t, hidden_s, hidden_t, mask, HiddenProjection(3, 3))
    assert attention.item() == pytest.approx(2 * 1.0) and hidden.item() == pytest.approx(3 * 4.0)


# ----------------------------------------------------------------------------- configs


@pytest.mark.timeout(30)
def test_configs_reject_unknown_keys_and_accept_paper_baseline_names(tmp_path):
    from mpcformer.config import build_config, load_config

    cfg = build_config(DistillConfig, {}, {"baseline": "w/o{p,d}", "stage2.temperature": 2})
    assert cfg.baseline == "wo_pd" and cfg.stage2.temperature == 2 and cfg.stage2.lr == 5e-5
    with pytest.raises(ConfigError, match="stage1"):
        build_config(DistillConfig, {}, {"stage1.learning_rate": 1.0})
    (tmp_path / "f.yaml").write_text("model: tiny\noptim:\n  epochs: 2\n")
    loaded = load_config(FinetuneConfig, tmp_path / "f.yaml")
    assert loaded.optim.epochs == 2 and loaded.optim.lr == 5e-5 and loaded.data.max_length == 64


# ----------------------------------------------------------------------------- end to end on `tiny`


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    return write_synthetic_sentiment(tmp_path_factory.mktemp("synthetic"), num_train=400, num_dev=100, seed=0)


def _finetune_cfg(synthetic_dir, out, validation_fraction: float = 0.0, **optim) -> FinetuneConfig:
    """Fine-tuning on all 400 synthetic sentences by default (the last checkpoint is kept): the learning
    checks here are sized for them; selection on a held-out validation split is tested on its own below."""
    return FinetuneConfig(
        model="tiny", output_dir=str(out), seed=0, progress=False,
        data={"data_dir": str(synthetic_dir), "max_length": 32, "validation_fraction": validation_fraction},
        optim={"max_steps": 60, "lr": 3e-3, "batch_size": 16, **optim},
    )


@pytest.fixture(scope="module")
def tiny_teacher(synthetic_dir, tmp_path_factory):
    """A tiny teacher fine-tuned for 60 steps on the synthetic set (and its metrics)."""
    from mpcformer.training.finetune import run_finetune

    out = tmp_path_factory.mktemp("teacher")
    return out, run_finetune(_finetune_cfg(synthetic_dir, out))


@pytest.mark.timeout(400)
def test_finetune_writes_a_checkpoint_that_reloads_with_its_approximation(tiny_teacher, synthetic_dir):
    from mpcformer.models.surgery import combo_of
    from mpcformer.training.finetune import load_checkpoint

    out, metrics = tiny_teacher
    assert metrics["steps"] == 60 and metrics["dev"]["accuracy"] >= 0.75  # learnt the synthetic task
    model, tokenizer = load_checkpoint(out / "best")
    assert combo_of(model) == Combo.parse("exact")
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["dev"] == metrics["dev"] and (out / "history.png").stat().st_size > 0
    history = json.loads((out / "history.json").read_text())
    assert [r["step"] for r in history if r["kind"] == "eval"][-1] == 60
    batch = tokenizer(["the movie was wonderful"], return_tensors="pt")
    assert model(**batch).logits.shape == (1, 2)


@pytest.mark.timeout(400)
def test_bf16_training_learns_and_frozen_word_embeddings_stay_as_loaded(synthetic_dir, tmp_path):
    from mpcformer.models.presets import load_preset
    from mpcformer.training.finetune import load_checkpoint, run_finetune

    bf16 = run_finetune(_finetune_cfg(synthetic_dir, tmp_path / "bf16").model_copy(update={"precision": "bf16"}))
    assert bf16["dev"]["accuracy"] >= 0.75  # learnt the synthetic task under autocast
    # tiny's embeddings are random, so frozen ones cannot learn this task: only what changes is checked
    run_finetune(_finetune_cfg(synthetic_dir, tmp_path / "frozen", max_steps=5).model_copy(
        update={"precision": "bf16", "freeze_word_embeddings": True}))
    trained, _ = load_checkpoint(tmp_path / "frozen" / "best")
    start, _ = load_preset("tiny", num_labels=2, seed=0)
    assert torch.equal(trained.get_input_embeddings().weight, start.get_input_embeddings().weight)
    assert not torch.equal(trained.bert.encoder.layer[0].attention.self.query.weight,
                           start.bert.encoder.layer[0].attention.self.query.weight)
    assert trained.get_input_embeddings().weight.dtype == torch.float32  # autocast never casts the weights


@pytest.mark.timeout(400)
def test_finetune_resumes_and_is_deterministic(synthetic_dir, tmp_path):
    from mpcformer.training.finetune import run_finetune

    def losses(out):
        return [r["loss"] for r in json.loads((out / "history.json").read_text()) if r["kind"] == "train"]

    straight = run_finetune(_finetune_cfg(synthetic_dir, tmp_path / "a", max_steps=12))
    cfg = _finetune_cfg(synthetic_dir, tmp_path / "b", max_steps=12).model_copy(update={"save_every_steps": 5})
    _interrupt_after(cfg, steps=5)  # as if killed right after the checkpoint at update 5
    assert json.loads((tmp_path / "b" / "last" / "config.json").read_text())["mpcformer"]["normaliser"] == "softmax"
    resumed = run_finetune(cfg)
    assert resumed["resumed"] and resumed["steps"] == 12 == straight["steps"]
    assert len(losses(tmp_path / "b")) == 2  # logged at updates 1 and 10
    assert losses(tmp_path / "b") == pytest.approx(losses(tmp_path / "a"), rel=1e-5)


def _interrupt_after(cfg: FinetuneConfig, steps: int) -> None:
    """Run ``cfg`` but stop (as if killed) right after the checkpoint at update ``steps``."""
    from mpcformer.training import loop
    from mpcformer.training.finetune import run_finetune

    original = loop.Checkpointer.save_last

    def save_then_stop(self, model, optimizer, scheduler, state):
        original(self, model, optimizer, scheduler, state)
        if state.step >= steps:
            raise KeyboardInterrupt

    loop.Checkpointer.save_last = save_then_stop
    try:
        with pytest.raises(KeyboardInterrupt):
            run_finetune(cfg)
    finally:
        loop.Checkpointer.save_last = original


@pytest.mark.timeout(400)
def test_distillation_reduces_both_stage_losses(tiny_teacher, synthetic_dir, tmp_path):
    from mpcformer.models.surgery import combo_of, load_approximated
    from mpcformer.training.distill import run_distill

    teacher_dir, _ = tiny_teacher
    cfg = DistillConfig(
        teacher=str(teacher_dir / "best"), combo="quad+2quad", output_dir=str(tmp_path / "d"), progress=False,
        data={"data_dir": str(synthetic_dir), "max_length": 32, "validation_fraction": 0.0},
        stage1={"max_steps": 30, "lr": 2e-3, "batch_size": 16},
        stage2={"max_steps": 30, "lr": 2e-3, "batch_size": 16},
    )
    metrics = run_distill(cfg)
    history = json.loads((tmp_path / "d" / "history.json").read_text())

    def mean_loss(phase, key, steps):
        values = [r[key] for r in history if r["kind"] == "train" and r["phase"] == phase and r["step"] in steps]
        return sum(values) / len(values)

    for key in ("attention_loss", "hidden_loss"):
        assert mean_loss("stage1", key, (20, 30)) < 0.8 * mean_loss("stage1", key, (1,)), key
    assert mean_loss("stage2", "kl", (20, 30)) < mean_loss("stage2", "kl", (1,))
    assert metrics["combo"] == "quad+2quad" and metrics["best_phase"] == "stage2"
    assert combo_of(load_approximated(str(tmp_path / "d" / "best"))) == Combo.parse("quad+2quad")


@pytest.mark.timeout(400)
def test_a_fitted_layernorm_is_calibrated_between_the_stages_once(tiny_teacher, synthetic_dir, tmp_path):
    from mpcformer.models.surgery import CALIBRATION_KEY, ApproximatedLayerNorm, combo_of, load_approximated
    from mpcformer.training.distill import run_distill

    teacher_dir, _ = tiny_teacher
    cfg = DistillConfig(
        teacher=str(teacher_dir / "best"), combo="quad+2quad-fit+ln:fit", output_dir=str(tmp_path / "d"),
        progress=False, data={"data_dir": str(synthetic_dir), "max_length": 32, "validation_fraction": 0.0},
        stage1={"max_steps": 3, "batch_size": 16}, stage2={"max_steps": 3, "batch_size": 16},
        layernorm_calibration={"examples": 48},
    )
    metrics = run_distill(cfg)
    record = metrics["layernorm_calibration"]
    assert record["layernorm"] == "ln:fit" and record["examples"] == 48 and record["margin"] == 1.5
    student = load_approximated(str(tmp_path / "d" / "best"))
    assert combo_of(student) == Combo.parse("quad+2quad-fit+ln:fit")
    assert getattr(student.config, CALIBRATION_KEY) == record
    norms = {name: m for name, m in student.named_modules() if isinstance(m, ApproximatedLayerNorm)}
    assert set(norms) == set(record["params"]) and len(norms) == 5
    assert all(m.params["first_low"] == record["params"][name]["first_low"] for name, m in norms.items())
    # resuming the finished run calibrates nothing again
    assert run_distill(cfg)["layernorm_calibration"] == record


@pytest.mark.timeout(400)
def test_baselines_use_the_task_loss_and_the_right_init(tiny_teacher, synthetic_dir, tmp_path):
    from mpcformer.training.distill import run_distill
    from mpcformer.training.finetune import load_checkpoint

    teacher_dir, _ = tiny_teacher
    teacher, _ = load_checkpoint(teacher_dir / "best")
    common = dict(
        teacher=str(teacher_dir / "best"), combo="quad+2relu", progress=False,
        data={"data_dir": str(synthetic_dir), "max_length": 32, "max_train_examples": 64},
        stage1={"max_steps": 2, "batch_size": 16}, stage2={"max_steps": 2, "batch_size": 16},
    )
    runs = {}
    for baseline in ("wo_d", "wo_pd"):
        runs[baseline] = run_distill(DistillConfig(baseline=baseline, output_dir=str(tmp_path / baseline), **common))
        phases = {r["phase"] for r in json.loads((tmp_path / baseline / "history.json").read_text())}
        assert phases == {f"baseline-{baseline}"}
        assert max(r["step"] for r in json.loads((tmp_path / baseline / "history.json").read_text())) == 4
    # w/o{d} starts from the teacher (4 updates at lr 5e-5 barely move it), w/o{p,d} from random weights
    key = "bert.encoder.layer.0.attention.self.query.weight"
    teacher_weight = teacher.state_dict()[key]

    def drift(name: str) -> float:
        model, _ = load_checkpoint(tmp_path / name / "best")
        return (model.state_dict()[key] - teacher_weight).abs().mean().item()

    assert drift("wo_d") < 1e-3 < 5e-3 < drift("wo_pd")
    assert runs["wo_d"]["method"] == "w/o{d}" and runs["wo_pd"]["method"] == "w/o{p,d}"


@pytest.mark.timeout(120)
def test_cli_finetune_and_bad_input(synthetic_dir, tmp_path, capsys):
    from mpcformer.cli import main

    out = tmp_path / "cli"
    code = main(["finetune", "--model", "tiny", "--data-dir", str(synthetic_dir), "--output-dir", str(out),
                 "--max-steps", "2", "--max-train-examples", "32", "--no-progress"])
    assert code == 0 and (out / "best" / "config.json").is_file()
    assert json.loads(capsys.readouterr().out)["steps"] == 2
    code = main(["distill", "--teacher", str(tmp_path / "missing"), "--data-dir", str(synthetic_dir),
                 "--output-dir", str(tmp_path / "d")])
    assert code == 2 and "teacher checkpoint not found" in capsys.readouterr().err
    code = main(["finetune", "--model", "tiny", "--set", "optim.lr=-1", "--data-dir", str(synthetic_dir)])
    assert code == 2 and "optim.lr" in capsys.readouterr().err


@pytest.mark.timeout(180)
def test_quick_budget_runs_finetune_then_distill_beside_full_runs(synthetic_dir, tmp_path, monkeypatch, capsys):
    from mpcformer.cli import main

    monkeypatch.chdir(tmp_path)
    code = main(["finetune", "--model", "tiny", "--data-dir", str(synthetic_dir), "--quick", "--no-progress"])
    assert code == 0
    teacher = json.loads(capsys.readouterr().out)
    assert teacher["steps"] == FinetuneConfig.QUICK["optim.max_steps"]
    assert teacher["checkpoint"] == "runs/finetune/sst2-minilm-quick/best"  # not the full run's folder
    assert not (tmp_path / "runs/finetune/sst2-minilm").exists()
    code = main(["distill", "--teacher", teacher["checkpoint"], "--combo", "quad+2relu", "--data-dir", str(synthetic_dir),
                 "--quick", "--no-progress", "--output-dir", "runs/d"])  # an explicit folder wins
    assert code == 0
    metrics = json.loads((tmp_path / "runs/d/metrics.json").read_text())
    # 400 synthetic training sentences: 200 held out for validation (the minimum), 200 left of the 256 asked
    assert metrics["train_examples"] == 200 and metrics["dev_examples"] == 100  # the synthetic dev set has 100
    assert metrics["selection"]["validation_examples"] == 200
    assert metrics["config"]["stage1"]["max_steps"] == metrics["config"]["stage2"]["max_steps"] == 8
    assert set(metrics["final_losses"]) == {"stage1", "stage2"}

    from mpcformer.training import report

    assert report.main(["runs/finetune/sst2-minilm-quick", "runs/d", "--out", "cmp/runs"]) == 0
    table = (tmp_path / "cmp/runs.md").read_text().splitlines()
    assert len(table) == 4 and table[2].startswith("| sst2-minilm-quick | sst2 | teacher | exact | accuracy |")
    row = [cell.strip() for cell in table[3].split("|")[1:-1]]
    assert row[:5] == ["d", "sst2", "mpcformer", "quad+2relu", "accuracy"]
    assert row[5] == f"{100 * metrics['validation']['accuracy']:.2f}%"  # the kept checkpoint, chosen on validation
    assert row[6] == f"{100 * metrics['dev']['accuracy']:.2f}%"  # its dev (test) score
    assert row[8] == f"{100 * metrics['last']['dev']['accuracy']:.2f}%" and row[10] == "validation"
    assert (tmp_path / "cmp/runs.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit) as err:
        report.main([str(tmp_path)])  # not a run folder
    assert err.value.code == 2 and "metrics.json" in capsys.readouterr().err


# ----------------------------------------------------------------------------- checkpoint selection


@pytest.mark.timeout(400)
def test_the_kept_checkpoint_is_chosen_on_validation_never_on_dev(tmp_path):
    """Dev labels flipped: the better the model, the worse its dev score. A choice made on dev would keep
    the checkpoint best on dev; the kept one must be the one best on the validation split."""
    from mpcformer.data import encode, get_task, load_split
    from mpcformer.training.finetune import load_checkpoint, run_finetune
    from mpcformer.training.loop import evaluate

    # 800 sentences: 200 held out as the validation split (the minimum), 600 to train on
    synthetic_dir = write_synthetic_sentiment(tmp_path / "synthetic", num_train=800, num_dev=100, seed=0)
    flipped = tmp_path / "flipped-dev.tsv"
    rows = (synthetic_dir / "dev.tsv").read_text().splitlines()
    flipped.write_text("\n".join([rows[0]] + [f"{t}\t{1 - int(y)}" for t, y in (r.split("\t") for r in rows[1:])]) + "\n")
    cfg = _finetune_cfg(synthetic_dir, tmp_path / "run", validation_fraction=0.1).model_copy(update={"eval_every_steps": 20})
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"dev_file": str(flipped)})})
    metrics = run_finetune(cfg)
    evals = [r for r in json.loads((tmp_path / "run" / "history.json").read_text()) if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [20, 38, 40, 60]  # every 20 updates and at the epoch's end (600 / 16)
    validation = [r["validation"]["accuracy"] for r in evals]
    dev = [r["dev"]["accuracy"] for r in evals]
    best_on_validation, best_on_dev = validation.index(max(validation)), dev.index(max(dev))
    assert best_on_validation != best_on_dev  # the set-up separates the two choices
    assert metrics["best_step"] == evals[best_on_validation]["step"]
    assert metrics["kept"]["validation"] == evals[best_on_validation]["validation"] == metrics["validation"]
    assert metrics["dev"] == evals[best_on_validation]["dev"]  # reported, not chosen on
    assert metrics["last"]["step"] == 60 and metrics["last"]["dev"] == evals[-1]["dev"]
    assert metrics["selection"]["chosen_on"] == "validation" and metrics["selection"]["validation_examples"] == 200
    # the saved best/ is that checkpoint: its flipped-dev score is the kept one's
    model, tokenizer = load_checkpoint(tmp_path / "run" / "best")
    dev_set = encode(load_split(cfg.data, "dev"), tokenizer, 32)
    assert evaluate(model, dev_set, get_task("sst2"), 64, tokenizer.pad_token_id) == pytest.approx(metrics["dev"])
