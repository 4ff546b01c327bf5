"""Finished fine-tuning / distillation runs side by side: one markdown table and one plot.

    python -m mpcformer.training.report runs/finetune/sst2-minilm runs/distill/* --out docs/results-sst2

Reads each run folder's ``metrics.json`` and ``history.json`` (written by ``mpcformer finetune`` and
``mpcformer distill``) and writes ``<out>.md`` and ``<out>.png``. The table gives, per run, the
kept checkpoint (best on the validation split held out of the training file) with its validation
and dev metric, relative to the teacher, the last checkpoint's dev metric, where the kept one was
and the training time. The dev split is the test set: no choice is made on it. The plot shows the
dev metric against updates, every run on one axis.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpcformer.errors import UserError
from mpcformer.training.history import eval_points

__all__ = ["RunSummary", "load_run", "render_table", "plot_runs"]


@dataclass(frozen=True)
class RunSummary:
    """What one run folder says about itself."""

    name: str
    task: str
    job: str  # finetune | distill
    method: str  # teacher, mpcformer, w/o{d}, w/o{p,d}
    combo: str
    metric: str
    kept: float  # the kept checkpoint's dev (test) metric
    kept_validation: float | None  # the kept checkpoint's validation metric (what chose it)
    last: float | None  # the last checkpoint's dev (test) metric
    kept_at: str  # "stage2 update 1500"
    teacher: float | None
    train_seconds: float
    evals: list[tuple[int, float]]  # (update counted over all phases, dev metric)
    chosen_on: str  # "validation", or "last evaluation" when there was no validation split


def load_run(folder: str | Path) -> RunSummary:
    folder = Path(folder)
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
        history = json.loads((folder / "history.json").read_text())
    except FileNotFoundError as err:
        raise UserError(f"{folder}: no {Path(err.filename).name}; is it a finished `mpcformer finetune` or "
                        "`mpcformer distill` output folder?") from None
    metric = metrics["primary_metric"]
    distill = metrics["job"] == "distill"
    teacher = metrics.get("teacher_dev", {}).get(metric) if distill else None
    kept_at = f"{metrics.get('best_phase') or 'finetune'} update {metrics.get('best_step')}"
    return RunSummary(
        name=folder.name, task=metrics.get("task", "-"), job=metrics["job"], method=metrics.get("method", "teacher"),
        combo=metrics.get("combo", "exact"), metric=metric, kept=metrics["dev"][metric],
        kept_validation=_value(metrics.get("validation"), metric),
        last=_value((metrics.get("last") or {}).get("dev"), metric), kept_at=kept_at, teacher=teacher,
        train_seconds=sum(metrics.get("train_seconds", {}).values()), evals=eval_points(history, "dev", metric),
        chosen_on=(metrics.get("selection") or {}).get("chosen_on", "-"),
    )


def _value(split_metrics: dict[str, Any] | None, metric: str) -> float | None:
    return None if not split_metrics else split_metrics.get(metric)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def render_table(runs: list[RunSummary]) -> str:
    """Markdown table: the kept checkpoint (chosen on validation) and the last one, each with its
    dev (test) metric."""
    lines = [
        "| run | task | method | approximation | metric | validation (kept) | dev = test (kept) | vs teacher "
        "| dev = test (last) | kept at | chosen on | training time |",
        "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- | --- | ---: |",
    ]
    for r in runs:
        relative = f"{100 * r.kept / r.teacher:.1f}%" if r.teacher else "-"
        lines.append(f"| {r.name} | {r.task} | {r.method} | {r.combo} | {r.metric} | {_percent(r.kept_validation)} | "
                     f"{_percent(r.kept)} | {relative} | {_percent(r.last)} | {r.kept_at} | {r.chosen_on} | "
                     f"{r.train_seconds / 60:.0f} min |")
    return "\n".join(lines) + "\n"


def plot_runs(runs: list[RunSummary], path: str | Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    for r in runs:
        if r.evals:
            ax.plot([u for u, _ in r.evals], [100 * v for _, v in r.evals], "o-", markersize=3,
                    label=f"{r.name} ({r.method}, {r.combo})")
    ax.set(xlabel="update (phases end to end)", ylabel=f"dev (test) {runs[0].metric} (%)" if runs else "", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (holding metrics.json and history.json)")
    parser.add_argument("--out", type=Path, default=Path("runs/report"), help="writes <out>.md and <out>.png")
    parser.add_argument("--title", default="dev (test) metric during training")
    args = parser.parse_args(argv)
    try:
        runs = [load_run(folder) for folder in args.runs if folder.is_dir()]
    except UserError as err:
        parser.exit(2, f"error: {err}\n")
    if not runs:
        parser.exit(2, "error: none of the given paths is a run folder\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table = render_table(runs)
    args.out.with_suffix(".md").write_text(table)
    plot_runs(runs, args.out.with_suffix(".png"), args.title)
    print(table + f"wrote {args.out.with_suffix('.md')} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
