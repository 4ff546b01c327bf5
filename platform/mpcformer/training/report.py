"""Finished fine-tuning / distillation runs side by side: one markdown table and one plot.

    python -m mpcformer.training.report runs/finetune/sst2-minilm runs/distill/* --out docs/results-sst2
    python -m mpcformer.training.report --suite runs/sweeps/glue-minilm     # suite.md, suite.json there

Reads each run folder's ``metrics.json`` and ``history.json`` (written by ``mpcformer finetune`` and
``mpcformer distill``) and writes ``<out>.md`` and ``<out>.png``. The table gives, per run, the
kept checkpoint (best on the validation split held out of the training file) with its validation
and dev metric, relative to the teacher, the last checkpoint's dev metric, where the kept one was
and the training time. The dev split is the test set: no choice is made on it. The plot shows the
dev metric against updates, every run on one axis.

``--suite`` reports a GLUE suite (:mod:`mpcformer.suite`): per task the teacher and every arm with
the task's official metrics (kept on validation; dev = test of the kept and of the last
checkpoint), each task's GLUE score (the mean of its official metrics: MRPC F1 and accuracy, STS-B
Pearson and Spearman, else the one metric), per arm the average score over the averaged tasks
(CoLA, SST-2, MRPC, STS-B, RTE) and its share of the teacher's average; the other tasks (WNLI)
are reported apart, outside the average. Under MPC (the suite's third phase) it gives per task and
distilled arm, on the same dev examples, the task's official metrics of the encrypted run beside
the same student's in plaintext, the prediction agreement between the two (classification) or the
largest absolute difference of the scores (regression), the latency per example (the encrypted
forwards' time over the examples) and the number of examples, and whether the run is within
:data:`MPC_MIN_AGREEMENT` / :data:`MPC_MAX_ABS_ERROR`.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpcformer.errors import UserError
from mpcformer.training.history import eval_points

__all__ = ["RunSummary", "load_run", "render_table", "plot_runs", "task_score", "suite_summary", "render_suite",
           "write_suite_report", "MPC_MIN_AGREEMENT", "MPC_MAX_ABS_ERROR"]


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


# ----------------------------------------------------------------------------- the GLUE suite
SUITE_LAYOUT = "suite-layout.json"  # written by mpcformer.suite: the folders of every trial

#: What an MPC run must reach to match its plaintext student: prediction agreement (classification)
MPC_MIN_AGREEMENT = 0.995
#: ... or the largest absolute score difference (regression, STS-B's 0-5 scale)
MPC_MAX_ABS_ERROR = 0.05


def task_score(values: dict[str, float] | None, names: tuple[str, ...] | list[str]) -> float | None:
    """GLUE's score of a task: the mean of its official metrics (None when one is missing)."""
    if not values or any(values.get(name) is None for name in names):
        return None
    return sum(values[name] for name in names) / len(names)


def _official_metrics(task: str, primary: str) -> tuple[str, ...]:
    from mpcformer.data.tasks import get_task

    try:
        return get_task(task).official_metrics
    except UserError:  # a task of the user's own: its primary metric
        return (primary,)


def _suite_row(task: str, arm: str, folder: str, error: str) -> dict[str, Any]:
    """One trial of the suite as the report shows it; ``status`` ok, failed (with the cause) or missing."""
    row: dict[str, Any] = {"task": task, "arm": arm, "folder": folder}
    try:
        metrics = json.loads((Path(folder) / "metrics.json").read_text())
    except (OSError, ValueError):
        return {**row, "status": "failed" if error else "missing", "error": error}
    primary = metrics["primary_metric"]
    names = _official_metrics(task, primary)
    kept_dev, last_dev = metrics.get("dev") or {}, (metrics.get("last") or {}).get("dev") or {}
    return {
        **row, "status": "ok", "error": "", "method": metrics.get("method", "teacher"),
        "combo": metrics.get("combo", "exact"), "metrics": list(names), "primary_metric": primary,
        "validation": metrics.get("validation") or {},  # the kept checkpoint's: what chose it
        "dev_kept": {n: kept_dev.get(n) for n in names}, "dev_last": {n: last_dev.get(n) for n in names},
        "score_kept": task_score(kept_dev, names), "score_last": task_score(last_dev, names),
        "kept_at": f"{metrics.get('best_phase') or 'finetune'} update {metrics.get('best_step')}",
        "chosen_on": (metrics.get("selection") or {}).get("chosen_on", "-"),
    }


def _mpc_row(task: str, arm: str, folder: str, error: str) -> dict[str, Any]:
    """One MPC run as the report shows it (its ``summary.json``); ``status`` ok, failed (this sitting,
    with the cause: a summary left from before is not its student's) or missing."""
    row: dict[str, Any] = {"task": task, "arm": arm, "folder": folder}
    if error:
        return {**row, "status": "failed", "error": error}
    try:
        summary = json.loads((Path(folder) / "summary.json").read_text())
        combo = summary["combos"][arm]  # a distilled arm is its approximation's name
    except (OSError, ValueError, KeyError):
        return {**row, "status": "missing", "error": ""}
    mpc, plaintext = combo.get("task_metrics") or {}, combo.get("plaintext_task_metrics") or {}
    # the task's official metrics (a task of the user's own: every metric the summary gives)
    names = [n for n in _official_metrics(task, "") if n in mpc] or list(mpc)
    regression = "max_abs_error_vs_plaintext" in combo
    agreement, max_abs_error = combo.get("agreement_with_plaintext"), combo.get("max_abs_error_vs_plaintext")
    within = (max_abs_error is not None and max_abs_error < MPC_MAX_ABS_ERROR if regression
              else agreement is not None and agreement >= MPC_MIN_AGREEMENT)
    return {
        **row, "status": "ok", "error": "", "examples": combo["examples"], "metrics": names,
        "mpc": {n: mpc.get(n) for n in names}, "plaintext": {n: plaintext.get(n) for n in names},
        "score_mpc": task_score(mpc, names), "score_plaintext": task_score(plaintext, names),
        "regression": regression, "agreement": agreement, "max_abs_error": max_abs_error,
        "seconds_per_example": combo.get("seconds_per_sequence"), "within_bound": within,
    }


def _share(value: float | None, base: float | None) -> float | None:
    """``value / base``; None without both, or when ``base`` is at or below 0 (a Matthews or Pearson
    correlation can be), where a share means nothing."""
    return value / base if value is not None and base is not None and base > 0 else None


def _average(rows: list[dict[str, Any]], tasks: list[str], key: str) -> tuple[float | None, list[str]]:
    """Mean of ``key`` over ``tasks`` and the tasks without a value (the mean is None unless all have one)."""
    by_task = {r["task"]: r.get(key) for r in rows}
    missing = [t for t in tasks if by_task.get(t) is None]
    return (None if missing or not tasks else sum(by_task[t] for t in tasks) / len(tasks)), missing


def suite_summary(layout: dict[str, Any]) -> dict[str, Any]:
    """The report's content from a suite layout (:func:`mpcformer.suite.suite_layout`): a row per task
    and arm (``teacher`` first), each with its share of its teacher's score, and per arm the average
    over ``average_tasks`` with its share of the teacher's average."""
    errors = layout.get("errors", {})
    arms = ["teacher", *layout["arms"]]
    rows = []
    for task, folders in layout["tasks"].items():
        teacher = _suite_row(task, "teacher", folders["teacher"], errors.get(task, ""))
        for row in [teacher] + [_suite_row(task, arm, folders["arms"][arm], errors.get(f"{task}/{arm}", ""))
                                for arm in layout["arms"]]:
            row["vs_teacher"] = _share(row.get("score_kept"), teacher.get("score_kept"))
            rows.append(row)
    averaged = [t for t in layout["average_tasks"] if t in layout["tasks"]]
    averages = {}
    for arm in arms:
        arm_rows = [r for r in rows if r["arm"] == arm]
        kept, missing = _average(arm_rows, averaged, "score_kept")
        last, _ = _average(arm_rows, averaged, "score_last")
        averages[arm] = {"kept": kept, "last": last, "missing": missing}
    teacher_average = averages["teacher"]["kept"]
    for entry in averages.values():
        for key in ("kept", "last"):  # both against the teacher's kept average
            entry[f"{key}_vs_teacher"] = _share(entry[key], teacher_average)
    mpc_errors = layout.get("mpc_errors", {})
    mpc_rows = [_mpc_row(task, arm, folder, mpc_errors.get(f"{task}/{arm}", ""))
                for task, folders in layout["tasks"].items() for arm, folder in folders.get("mpc", {}).items()]
    return {"name": layout.get("name", ""), "arms": arms, "average_tasks": averaged,
            "apart_tasks": [t for t in layout["tasks"] if t not in averaged], "rows": rows, "averages": averages,
            "mpc_arms": layout.get("mpc_arms", []), "mpc_rows": mpc_rows,
            "mpc_bounds": {"min_agreement": MPC_MIN_AGREEMENT, "max_abs_error": MPC_MAX_ABS_ERROR}}


def _metric_cell(values: dict[str, float | None], names: list[str]) -> str:
    return " / ".join(f"{n} {_percent(values.get(n))}" for n in names)


def _relative(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _suite_rows_md(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| task | arm | validation (kept, chooses) | dev = test (kept) | dev = test (last) | task score (kept) "
             "| vs teacher | kept at |",
             "| --- | --- | --- | --- | --- | ---: | ---: | --- |"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['task']} | {r['arm']} | {r['status']}: {r['error'] or 'no metrics.json'} "
                         "| | | | | |")
            continue
        validation = f"{r['primary_metric']} {_percent(r['validation'].get(r['primary_metric']))}"
        lines.append(f"| {r['task']} | {r['arm']} | {validation} | {_metric_cell(r['dev_kept'], r['metrics'])} "
                     f"| {_metric_cell(r['dev_last'], r['metrics'])} | {_percent(r['score_kept'])} "
                     f"| {_relative(r['vs_teacher'])} | {r['kept_at']} |")
    return lines


def _mpc_fidelity(r: dict[str, Any]) -> str:
    if r["regression"]:
        return "-" if r["max_abs_error"] is None else f"max abs error {r['max_abs_error']:.4f}"
    return f"agreement {_percent(r['agreement'])}"


def _mpc_rows_md(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| task | arm | examples | under MPC | plaintext | agreement / max abs error | latency per example "
             "| within bound |",
             "| --- | --- | ---: | --- | --- | --- | ---: | --- |"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['task']} | {r['arm']} | {r['status']}: {r['error'] or 'no summary.json'} | | | | | |")
            continue
        latency = "-" if r["seconds_per_example"] is None else f"{r['seconds_per_example']:.3f} s"
        lines.append(f"| {r['task']} | {r['arm']} | {r['examples']} | {_metric_cell(r['mpc'], r['metrics'])} "
                     f"| {_metric_cell(r['plaintext'], r['metrics'])} | {_mpc_fidelity(r)} | {latency} "
                     f"| {'yes' if r['within_bound'] else 'no'} |")
    return lines


def render_suite(summary: dict[str, Any]) -> str:
    """suite.md: the averages per arm, then every task's rows; the tasks outside the average apart."""
    tasks = ", ".join(summary["average_tasks"])
    lines = [f"# GLUE suite {summary['name']}", "",
             f"Average GLUE score (dev = test, kept checkpoint; {tasks}) per arm, and its share of the teacher's:", "",
             "| arm | average (kept) | % of teacher | average (last) | % of teacher | missing |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for arm in summary["arms"]:
        a = summary["averages"][arm]
        lines.append(f"| {arm} | {_percent(a['kept'])} | {_relative(a['kept_vs_teacher'])} | {_percent(a['last'])} "
                     f"| {_relative(a['last_vs_teacher'])} | {', '.join(a['missing'])} |")
    averaged = [r for r in summary["rows"] if r["task"] in summary["average_tasks"]]
    lines += ["", "## Tasks in the average", "", *_suite_rows_md(averaged)]
    apart = [r for r in summary["rows"] if r["task"] in summary["apart_tasks"]]
    if apart:
        lines += ["", f"## Reported apart (not in the average): {', '.join(summary['apart_tasks'])}", "",
                  *_suite_rows_md(apart)]
    if summary["mpc_rows"]:
        bounds = summary["mpc_bounds"]
        lines += ["", "## Under MPC", "",
                  f"The distilled students encrypted and in plaintext on the same dev examples; within bound: "
                  f"agreement at least {_percent(bounds['min_agreement'])} (classification), max abs error "
                  f"below {bounds['max_abs_error']} (regression).", "", *_mpc_rows_md(summary["mpc_rows"])]
    return "\n".join(lines) + "\n"


def write_suite_report(sweep_dir: str | Path) -> dict[str, Any]:
    """Write ``suite.md`` and ``suite.json`` in a suite's folder; returns the summary (and the markdown)."""
    sweep_dir = Path(sweep_dir)
    try:
        layout = json.loads((sweep_dir / SUITE_LAYOUT).read_text())
    except FileNotFoundError:
        raise UserError(f"{sweep_dir}: no {SUITE_LAYOUT}; is it the folder of a suite that `mpcformer sweep` ran "
                        "(<storage_path>/<name>)?") from None
    summary = suite_summary(layout)
    markdown = render_suite(summary)
    (sweep_dir / "suite.json").write_text(json.dumps(summary, indent=2))
    (sweep_dir / "suite.md").write_text(markdown)
    return {**summary, "markdown": markdown}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path, help="run folders (holding metrics.json and history.json)")
    parser.add_argument("--out", type=Path, default=Path("runs/report"), help="writes <out>.md and <out>.png")
    parser.add_argument("--title", default="dev (test) metric during training")
    parser.add_argument("--suite", type=Path, default=None,
                        help="a suite's folder (<storage_path>/<name>): writes suite.md and suite.json there")
    args = parser.parse_args(argv)
    if args.suite is not None:
        return _suite_main(parser, args.suite)
    if not args.runs:
        parser.exit(2, "error: give run folders, or --suite DIR\n")
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


def _suite_main(parser: argparse.ArgumentParser, folder: Path) -> int:
    try:
        report = write_suite_report(folder)
    except UserError as err:
        parser.exit(2, f"error: {err}\n")
    print(report["markdown"] + f"wrote {folder / 'suite.md'} and {folder / 'suite.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
