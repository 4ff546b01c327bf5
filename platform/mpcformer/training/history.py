"""Training history: JSON records and a PNG plot (loss per update; validation and dev metric per evaluation).

An evaluation record is ``{"kind": "eval", "phase", "step", "epoch", "validation": {metric: value}
or None, "dev": {metric: value}}``; the validation split chooses the kept checkpoint, dev is the test set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["phase_offsets", "plot_history", "write_run_outputs", "eval_points"]


def phase_offsets(history: list[dict[str, Any]]) -> dict[str, int]:
    """Where each phase starts when phases are laid end to end (in order of first appearance):
    phase ``k`` starts at the last update of phase ``k-1``."""
    offsets: dict[str, int] = {}
    start = 0
    for record in history:
        if record["phase"] not in offsets:
            offsets[record["phase"]] = start
            start += max(r["step"] for r in history if r["phase"] == record["phase"])
    return offsets


def _global_steps(records: list[dict[str, Any]], offsets: dict[str, int]) -> list[int]:
    return [offsets[r["phase"]] + r["step"] for r in records]


def eval_points(history: list[dict[str, Any]], split: str, metric: str, phase: str | None = None) -> list[tuple[int, float]]:
    """``(update over all phases laid end to end, value)`` of ``metric`` on ``split`` at each evaluation."""
    offsets = phase_offsets(history)
    return [
        (offsets[r["phase"]] + r["step"], r[split][metric]) for r in history
        if r["kind"] == "eval" and (phase is None or r["phase"] == phase) and metric in (r.get(split) or {})
    ]


def plot_history(history: list[dict[str, Any]], path: str | Path, title: str, metric: str) -> Path:
    """Plot train ``loss`` (log scale, one colour per phase) and the validation (dashed) and dev
    ``metric`` against updates.

    Phases are laid end to end: phase ``k`` starts where phase ``k-1`` stopped.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    offsets = phase_offsets(history)
    phases = list(offsets)

    fig, (ax_loss, ax_dev) = plt.subplots(1, 2, figsize=(11, 4))
    for phase in phases:
        train = [r for r in history if r["phase"] == phase and r["kind"] == "train"]
        if train:
            ax_loss.plot(_global_steps(train, offsets), [r["loss"] for r in train], label=phase)
        for split, style in (("validation", "o--"), ("dev", "o-")):
            points = eval_points(history, split, metric, phase)
            if points:
                ax_dev.plot(*zip(*points), style, label=f"{phase} {split}")
    ax_loss.set(xlabel="update", ylabel="training loss", yscale="log", title="loss")
    ax_dev.set(xlabel="update", ylabel=metric, title=f"{metric}: validation (chooses) and dev (test)")
    for ax in (ax_loss, ax_dev):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_run_outputs(output_dir: Path, metrics: dict[str, Any], history: list[dict[str, Any]], title: str) -> None:
    """``metrics.json``, ``history.json`` and ``history.png`` of a finished training run."""
    from mpcformer.training.loop import write_json

    write_json(output_dir / "metrics.json", metrics)
    write_json(output_dir / "history.json", history)
    plot_history(history, output_dir / "history.png", title, metrics["primary_metric"])
