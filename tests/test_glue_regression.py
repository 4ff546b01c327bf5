"""STS-B, a regression, end to end on the `tiny` preset: teacher fine-tuning (MSE), MPCFormer distillation
(stage 1 layer-wise, stage 2 MSE on the score) and encrypted inference whose summary gives Pearson and
Spearman under MPC and the largest absolute error against the plaintext score."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ray = pytest.importorskip("ray")

from mpcformer.config import load_config  # noqa: E402
from mpcformer.training.config import DistillConfig, FinetuneConfig  # noqa: E402

pytestmark = pytest.mark.timeout(600)

TINY_CONFIG = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "infer-tiny.yaml"
COMBO = "quad+2quad"


@pytest.fixture(scope="module")
def stsb(glue_dir) -> dict:
    """The data section of every run: 64 STS-B training pairs, 32 dev pairs, 32 tokens."""
    return {"task": "stsb", "data_dir": str(glue_dir / "STS-B"), "max_train_examples": 64, "max_dev_examples": 32,
            "max_length": 32}


@pytest.fixture(scope="module")
def trained(stsb, tmp_path_factory) -> dict:
    """A fine-tuned tiny teacher and its quad+2quad student (one epoch each stage)."""
    from mpcformer.training.distill import run_distill
    from mpcformer.training.finetune import run_finetune

    root = tmp_path_factory.mktemp("stsb")
    teacher = run_finetune(FinetuneConfig(
        model="tiny", output_dir=str(root / "teacher"), progress=False, data=stsb,
        optim={"epochs": 1, "lr": 1e-3, "batch_size": 16},
    ))
    student = run_distill(DistillConfig(
        teacher=str(root / "teacher" / "best"), combo=COMBO, output_dir=str(root / "student"), progress=False,
        data=stsb, stage1={"epochs": 1, "batch_size": 16}, stage2={"epochs": 1, "batch_size": 16},
    ))
    return {"root": root, "teacher": teacher, "student": student}


def _evals(folder: Path) -> list[dict]:
    return [r for r in json.loads((folder / "history.json").read_text()) if r["kind"] == "eval"]


def test_teacher_fine_tunes_with_pearson_and_spearman_on_validation_and_dev(trained):
    metrics, folder = trained["teacher"], trained["root"] / "teacher"
    assert metrics["task"] == "stsb" and metrics["primary_metric"] == "pearson"
    assert metrics["train_examples"] == 64 and metrics["dev_examples"] == 32 and metrics["steps"] == 4
    assert metrics["selection"]["validation_examples"] == 575  # 10% of 5,749
    for split in ("validation", "dev"):
        assert set(metrics["kept"][split]) == {"pearson", "spearman"}
        assert all(-1 <= v <= 1 for v in metrics["last"][split].values())
    assert [r["step"] for r in _evals(folder)] == [4]
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(folder / "best").num_labels == 1  # one output: the score


def test_distillation_runs_both_stages_with_mse_on_the_score(trained, stsb):
    from mpcformer.data import encode, load_split
    from mpcformer.data.loading import DataConfig, collate
    from mpcformer.training.distill import _stage2_loss
    from mpcformer.training.finetune import load_checkpoint

    metrics, folder = trained["student"], trained["root"] / "student"
    history = json.loads((folder / "history.json").read_text())
    assert {r["phase"] for r in history} == {"stage1", "stage2"} and metrics["best_phase"] == "stage2"
    stage1 = [r for r in history if r["kind"] == "train" and r["phase"] == "stage1"]
    assert stage1 and all(math.isfinite(r["attention_loss"]) and math.isfinite(r["hidden_loss"]) for r in stage1)
    assert set(metrics["dev"]) == {"pearson", "spearman"} and set(metrics["teacher_dev"]) == {"pearson", "spearman"}
    # stage 2's loss on a batch is the MSE between the student's and the teacher's scores
    teacher, tokenizer = load_checkpoint(trained["root"] / "teacher" / "best")
    student, _ = load_checkpoint(folder / "best")
    examples = load_split(DataConfig(**stsb), "dev")
    encoded = encode(examples, tokenizer, 32)
    batch = collate([encoded[i] for i in range(4)], tokenizer.pad_token_id)
    assert batch["labels"].dtype == torch.float32
    loss, terms = _stage2_loss(teacher.eval(), student.eval(), regression=True, temperature=1.0)(batch)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        expected = F.mse_loss(student(**inputs).logits.view(-1), teacher(**inputs).logits.view(-1))
    assert loss.item() == pytest.approx(expected.item()) and terms == {}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def test_encrypted_inference_of_the_student_reports_pearson_and_max_abs_error(trained, stsb, local_ray, tmp_path):
    from mpcformer.inference.job import InferConfig, run_infer

    out = tmp_path / "infer"
    cfg = load_config(InferConfig, TINY_CONFIG, {
        "model": str(trained["root"] / "student" / "best"), "data.task": "stsb",
        "data.data_dir": stsb["data_dir"], "data.max_length": 32, "out": str(out), "limit": 4, "batch_size": 2,
        "check_plaintext": True, "group.mpc.timeout_s": 60, "pool.backoff_s": 0.2,
    })
    status = run_infer(cfg, progress=False)
    assert status["complete"]
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines() if line.strip()]
    assert sorted(r["example_id"] for r in records) == [0, 1, 2, 3]
    for r in records:  # the prediction is the score itself
        assert isinstance(r["prediction"], float) and r["prediction"] == r["logits"][0] and len(r["logits"]) == 1
        assert isinstance(r["label"], float) and r["abs_error"] == pytest.approx(abs(r["prediction"] - r["plaintext_prediction"]))
    combo = json.loads((out / "summary.json").read_text())["combos"][COMBO]
    assert set(combo["task_metrics"]) == {"pearson", "spearman"} and -1 <= combo["task_metrics"]["pearson"] <= 1
    assert combo["max_abs_error_vs_plaintext"] == pytest.approx(max(r["abs_error"] for r in records))
    assert 0 <= combo["max_abs_error_vs_plaintext"] < 0.05  # fixed-point error of the tiny student
    assert combo["accuracy"] is None and combo["agreement_with_plaintext"] is None


def test_num_labels_that_contradict_the_task_are_a_user_error(stsb):
    from mpcformer.errors import UserError
    from mpcformer.inference.job import InferConfig, model_labels

    assert model_labels(InferConfig(data=stsb)) == 1
    with pytest.raises(UserError, match="regression"):
        model_labels(InferConfig(data=stsb, num_labels=2))
