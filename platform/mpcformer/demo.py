"""The demo: the whole MPCFormer story on a local (or connected) Ray cluster, in minutes.

1. obtain a teacher: a short fine-tune of the MiniLM preset;
2. distill ``quad+2quad`` from it (layer-wise, then prediction distillation) on a small budget
   (what it reaches on SST-2, and how long it takes on 2 cores: docs/results.md);
3. run encrypted inference through Ray party actors for ``exact`` (the teacher) on a few dev
   sentences and ``quad+2quad`` (the student) on more, checking agreement with plaintext;
4. a table (accuracy with the number of sentences behind it, latency, rounds, bytes, speed-up)
   and one closing line that says in words whether distillation kept the teacher's accuracy.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import Field, model_validator

from mpcformer.config import ComboName, StrictModel
from mpcformer.data.loading import DataConfig

__all__ = ["DemoConfig", "resolve_demo_data", "run_demo", "format_table", "closing_line", "heartbeat"]

log = logging.getLogger(__name__)

#: the demo's voice: flushed at once, so a log file or a pipe shows it when it happens
say_now = functools.partial(print, flush=True)


class DemoConfig(StrictModel):
    data_dir: str | None = Field(None, description="GLUE SST-2 style folder (train/dev TSV); None = hub, else synthetic")
    out: str = "runs/demo"
    model: str = "minilm"
    # 64 tokens hold every SST-2 dev sentence whole (the longest has 55), so nothing is cut
    max_length: int = Field(64, ge=8, le=512)
    seed: int = 0
    # training budget: one pass over each subset in updates of train_batch_size (length-grouped batches,
    # bfloat16 autocast, word embeddings frozen: about 100 phrases/s on 2 idle cores)
    train_batch_size: int = Field(32, ge=1, description="sequences per update (teacher and both stages)")
    precision: Literal["fp32", "bf16"] = Field("bf16", description="training forwards under CPU autocast")
    freeze_word_embeddings: bool = Field(True, description="train everything but the word-embedding table")
    # SST-2's training file is mostly sub-phrases; its longer entries look like the dev sentences and
    # teach both models more per update (a student distilled on them scores ~1.5 points higher)
    min_train_words: int | None = Field(10, ge=1, description="training sentences with fewer words are left out")
    teacher_examples: int = Field(4000, ge=16, description="training sentences for the teacher (one pass)")
    teacher_lr: float = Field(1e-4, gt=0)
    stage1_examples: int = Field(8000, ge=16, description="training sentences of the layer-wise stage (one pass)")
    stage2_examples: int = Field(6000, ge=16, description="training sentences of the prediction stage (one pass)")
    stage1_lr: float = Field(5e-4, gt=0, description="layer-wise stage (attention scores, hidden states)")
    stage2_lr: float = Field(1e-4, gt=0, description="prediction stage (logits)")
    dev_examples: int | None = Field(None, ge=8, description="plaintext dev evaluation subset; None = the whole dev split")
    private_sentences: int = Field(64, ge=1, description="first dev sentences the student runs under MPC")
    exact_private_sentences: int = Field(
        8, ge=1, description="first dev sentences the teacher (exact) runs under MPC: it is the slow one"
    )
    batch_size: int = Field(8, ge=1, description="sequences per MPC forward")
    approx: ComboName = "quad+2quad"
    goal_points: float = Field(3.0, ge=0, description="the student should land within this many points of the teacher")

    @model_validator(mode="after")
    def _speedup_on_shared_batches(self) -> "DemoConfig":
        # the speed-up compares both models on the same batches: the teacher's are the student's first ones
        if self.exact_private_sentences > self.private_sentences:
            raise ValueError(
                f"exact_private_sentences ({self.exact_private_sentences}) must not exceed private_sentences "
                f"({self.private_sentences})"
            )
        if self.exact_private_sentences % self.batch_size and self.exact_private_sentences != self.private_sentences:
            raise ValueError(
                f"exact_private_sentences ({self.exact_private_sentences}) must be a multiple of batch_size "
                f"({self.batch_size}) so both models run the same batches"
            )
        return self


def resolve_demo_data(cfg: DemoConfig, say: Callable[[str], None]) -> tuple[DataConfig, str]:
    """A local folder if given, else GLUE SST-2 from the hub, else the generated synthetic set."""
    common = dict(task="sst2", max_length=cfg.max_length, max_dev_examples=cfg.dev_examples)
    sst2 = dict(common, min_train_words=cfg.min_train_words)  # the generated set has short sentences only
    if cfg.data_dir:
        return DataConfig(data_dir=str(Path(cfg.data_dir).resolve()), **sst2), f"SST-2 from {cfg.data_dir}"
    from mpcformer.data.loading import load_split

    hub = DataConfig(**sst2)
    try:
        load_split(hub.model_copy(update={"max_dev_examples": 8}), "dev")
        return hub, "GLUE SST-2 from the Hugging Face hub"
    except Exception as err:  # offline, or the hub is unreachable
        from mpcformer.data.synthetic import write_synthetic_sentiment

        folder = write_synthetic_sentiment(Path(cfg.out, "synthetic-data").resolve(), seed=cfg.seed)
        say(
            f"No --data folder and the dataset hub is unreachable ({type(err).__name__}); using a small SYNTHETIC "
            f"sentiment set generated by mpcformer in {folder}. Its accuracy figures are not SST-2's."
        )
        return DataConfig(data_dir=str(folder), **common), "synthetic sentiment (generated; offline)"


def _train(cfg: DemoConfig, data: DataConfig, source: str, out: Path, say: Callable[[str], None]):
    """Steps 1 and 2: the teacher's and the student's training metrics."""
    from mpcformer.training.config import DistillConfig, FinetuneConfig
    from mpcformer.training.distill import run_distill
    from mpcformer.training.finetune import run_finetune

    batch = cfg.train_batch_size
    speed = {"precision": cfg.precision, "freeze_word_embeddings": cfg.freeze_word_embeddings}
    say(f"[1/4] teacher: fine-tuning {cfg.model}, one pass over {cfg.teacher_examples} sentences in batches of "
        f"{batch} ({source})")
    teacher = run_finetune(FinetuneConfig(
        model=cfg.model, seed=cfg.seed, output_dir=str(out / "teacher"),
        data={**data.model_dump(), "max_train_examples": cfg.teacher_examples},
        optim={"epochs": 1.0, "lr": cfg.teacher_lr, "batch_size": batch},
        save_every_steps=100, **speed,
    ))
    say(f"[2/4] student: distilling {cfg.approx} from the teacher, one pass over {cfg.stage1_examples} sentences "
        f"layer by layer, then {cfg.stage2_examples} on predictions, in batches of {batch} (first both models are "
        "scored on the dev set)")
    # both stages read one subset; a stage with fewer examples stops after its share of updates
    student = run_distill(DistillConfig(
        teacher=teacher["checkpoint"], combo=cfg.approx, seed=cfg.seed, output_dir=str(out / "student"),
        data={**data.model_dump(), "max_train_examples": max(cfg.stage1_examples, cfg.stage2_examples)},
        stage1={"epochs": 1.0, "lr": cfg.stage1_lr, "batch_size": batch, "max_steps": -(-cfg.stage1_examples // batch)},
        stage2={"epochs": 1.0, "lr": cfg.stage2_lr, "batch_size": batch, "max_steps": -(-cfg.stage2_examples // batch)},
        save_every_steps=100, **speed,
    ))
    return teacher, student


@contextlib.contextmanager
def heartbeat(say: Callable[[str], None], what: str, every_s: float = 15.0):
    """Say ``what`` and the seconds so far every ``every_s`` while the block runs: an encrypted batch of the
    exact model can take minutes on a busy 2-core machine, and its progress bar moves once per batch."""
    stop = threading.Event()
    started = time.monotonic()

    def beat() -> None:
        while not stop.wait(every_s):
            say(f"      ... {what}: {time.monotonic() - started:.0f} s")

    thread = threading.Thread(target=beat, name="demo-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _private(
    cfg: DemoConfig, combo: str, trained: dict[str, Any], data: DataConfig, sentences: int, out: Path,
    say: Callable[[str], None],
):
    """Step 3 for one model: its MPC figures on its first ``sentences`` dev sentences, and on the
    first ``cfg.exact_private_sentences`` of them (the batches both models run)."""
    from mpcformer.inference.batches import BatchStore, plan_batches, summarize_records
    from mpcformer.inference.job import InferConfig, run_infer

    folder = out / f"infer-{combo}"
    with heartbeat(say, f"private inference ({combo}) running"):
        status = run_infer(InferConfig(
        model=trained["checkpoint"], seed=cfg.seed, data=data.model_dump(), split="dev", combos=[combo],
            batch_size=cfg.batch_size, limit=sentences, out=str(folder),
            check_plaintext=True,  # evaluation mode: the demo measures agreement with plaintext inference
            job_name="demo",
        ))
    # The demo plays both roles: it reads what the client wrote.
    figures = json.loads(Path(status["summary"]).read_text())["combos"][combo]
    shared = plan_batches(status["examples"], cfg.batch_size, [combo])[: -(-cfg.exact_private_sentences // cfg.batch_size)]
    figures["on_shared_batches"] = summarize_records(BatchStore(folder).records(shared))
    return figures


def run_demo(cfg: DemoConfig, say: Callable[[str], None] = say_now) -> dict[str, Any]:
    """Run the four steps on the connected Ray cluster; returns the figures behind the table."""
    out = Path(cfg.out).resolve()
    data, source = resolve_demo_data(cfg, say)
    teacher, student = _train(cfg, data, source, out, say)
    primary = teacher["primary_metric"]
    rows = []
    for combo, trained, sentences in (
        ("exact", teacher, cfg.exact_private_sentences), (cfg.approx, student, cfg.private_sentences),
    ):
        say(f"[3/4] private inference ({combo}): {sentences} dev sentences, {cfg.batch_size} per encrypted forward, "
            "through Ray party actors")
        figures = _private(cfg, combo, trained, data, sentences, out, say)
        rows.append({
            "approx": combo,
            "plaintext_dev_accuracy": trained["dev"][primary],
            "dev_sentences": trained["dev_examples"],
            "private_accuracy": figures["accuracy"],
            "private_sentences": figures["examples"],
            "agreement_with_plaintext": figures["agreement_with_plaintext"],
            "seconds_per_sequence": figures["seconds_per_sequence"],
            "rounds_per_sequence": figures["rounds_per_sequence"],
            "bytes_per_sequence": figures["bytes_per_sequence"],
            "seconds_per_sequence_on_shared": figures["on_shared_batches"]["seconds_per_sequence"],
        })
    exact_s = rows[0]["seconds_per_sequence_on_shared"]
    for row in rows:
        row["speedup_vs_exact"] = exact_s / row["seconds_per_sequence_on_shared"]
    return {
        "data": source, "rows": rows, "goal_points": cfg.goal_points,
        "speedup_sentences": rows[0]["private_sentences"],
        "student_before_distillation": (student.get("initial_dev") or {}).get(primary),
        "teacher": teacher["checkpoint"], "student": student["checkpoint"],
        "train_seconds": {"teacher": teacher["train_seconds"], "student": student["train_seconds"]},
        "config": cfg.model_dump(),
    }


def format_table(result: dict[str, Any]) -> str:
    """The demo's closing table (plain text); accuracies say how many sentences are behind them."""
    head = ("approx", "plain dev acc", "private acc", "agree", "s/seq", "rounds/seq", "MB/seq", "speed-up")
    widths = (11, 14, 13, 9, 7, 10, 8, 8)
    lines = [" | ".join(f"{h:>{w}}" for h, w in zip(head, widths)), "-" * (sum(widths) + 3 * (len(head) - 1))]
    for r in result["rows"]:
        n = r["private_sentences"]
        agreed = round(r["agreement_with_plaintext"] * n)
        cells = (
            r["approx"], f"{r['plaintext_dev_accuracy']:.3f} ({r['dev_sentences']})",
            f"{r['private_accuracy']:.3f} ({n})", f"{agreed}/{n}", f"{r['seconds_per_sequence']:.2f}",
            f"{r['rounds_per_sequence']:,.0f}", f"{r['bytes_per_sequence'] / 1e6:,.1f}", f"{r['speedup_vs_exact']:.2f}x",
        )
        lines.append(" | ".join(f"{c:>{w}}" for c, w in zip(cells, widths)))
    lines.append(
        "(n) = dev sentences behind the figure; plain = plaintext; agree = private predictions equal to plaintext "
        f"ones; speed-up = exact's MPC seconds per sequence / this row's, on the same first {result['speedup_sentences']} "
        "sentences"
    )
    before = result.get("student_before_distillation")
    if before is not None:
        lines.append(f"{result['rows'][1]['approx']} before distillation (teacher weights, approximations swapped in): "
                     f"plain dev acc {before:.3f} ({result['rows'][1]['dev_sentences']})")
    return "\n".join(lines)


def closing_line(result: dict[str, Any]) -> str:
    """One sentence: did distillation keep the teacher's accuracy (within ``goal_points``), how much faster."""
    teacher, student = result["rows"][0], result["rows"][1]
    a, b, n = student["plaintext_dev_accuracy"], teacher["plaintext_dev_accuracy"], student["dev_sentences"]
    gap = 100 * (b - a)
    kept = f"{a / b:.1%}" if b else "n/a"
    faster = f"runs {student['speedup_vs_exact']:.1f}x faster than the teacher under MPC"
    if gap <= result["goal_points"]:
        return (f"{student['approx']} after distillation keeps {kept} of the teacher's accuracy ({a:.3f} vs {b:.3f} on "
                f"{n} dev sentences, within {result['goal_points']:g} points) and {faster}.")
    return (f"{student['approx']} after distillation reaches only {kept} of the teacher's accuracy ({a:.3f} vs {b:.3f} "
            f"on {n} dev sentences): {gap:.1f} points behind, MISSING this demo's goal of {result['goal_points']:g} "
            f"(a longer distillation budget closes the gap, see docs/results.md); it {faster}.")
