"""Batches of an encrypted-inference run and the output folder that makes re-runs resume.

Output folder layout (``out/``):

    run.json                           what was run (model, data, split, combos, batch size, ...): driver
    public-bundle/                     the owner's public bundle the client tokenised with: client
    batches/<combo>/batch-000012.jsonl one committed batch: one JSON record per example: client
    predictions.jsonl                  every record; appended live, rewritten in order: client
    events.jsonl                       group failures and retries seen by the driver: driver
    status.json                        counts only: batches done, retries, wall time: driver
    summary.json                       accuracy, agreement, task metrics (and in plaintext), latency
                                       percentiles, rounds/bytes per sequence, once every batch is in:
                                       client

A batch is *finished* exactly when its ``batches/`` file exists: the client actor writes it to a
temporary name, fsyncs and renames it (atomic on POSIX), under a lock that also appends its
records to ``predictions.jsonl``. A re-run skips finished batches; a batch computed twice (a
retry racing a late commit) is committed once. The client rebuilds ``predictions.jsonl`` from the
batch files when a run starts and ends (:meth:`BatchStore.rebuild_predictions`), so partial appends
of an interrupted run never survive. The driver only tests which batch files exist; it replaces
``run.json`` (and the events, status and summary beside it) only when the folder holds a
different run that finished no batch, a failed start.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from mpcformer.errors import UserError

__all__ = [
    "Batch",
    "plan_batches",
    "BatchStore",
    "commit_batch",
    "percentiles",
    "summarize_records",
]

_BATCH_DIR = "batches"
_PREDICTIONS = "predictions.jsonl"
_LOCK = ".commit.lock"


@dataclass(frozen=True)
class Batch:
    """Sequences ``example_ids`` (indices into the split) run through one MPC forward with ``combo``."""

    combo: str
    batch_id: int
    example_ids: tuple[int, ...]

    @property
    def key(self) -> str:
        return f"{self.combo}/{self.batch_id:06d}"


def plan_batches(num_examples: int, batch_size: int, combos: Sequence[str]) -> list[Batch]:
    """Cut examples ``0..num_examples-1`` into consecutive batches of ``batch_size``, for every combo."""
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    starts = range(0, num_examples, batch_size)
    return [
        Batch(combo, index, tuple(range(start, min(start + batch_size, num_examples))))
        for combo in combos
        for index, start in enumerate(starts)
    ]


def _batch_path(root: Path, combo: str, batch_id: int) -> Path:
    return root / _BATCH_DIR / combo / f"batch-{batch_id:06d}.jsonl"


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    with open(root / _LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a fsynced temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _jsonl(records: Sequence[dict[str, Any]]) -> str:
    return "".join(json.dumps(record, sort_keys=True) + "\n" for record in records)


def commit_batch(out_dir: str | Path, combo: str, batch_id: int, records: Sequence[dict[str, Any]]) -> bool:
    """Commit one batch (called by the client actor that learnt the predictions).

    Returns False, writing nothing, when the batch was already committed.
    """
    root = Path(out_dir)
    path = _batch_path(root, combo, batch_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = _jsonl(records)
    with _locked(root):
        if path.exists():
            return False
        _write_atomic(path, text)
        with open(root / _PREDICTIONS, "a", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    return True


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


class BatchStore:
    """An output folder: which batches are finished, events, status (the driver); records,
    predictions and summary (the client)."""

    def __init__(self, out_dir: str | Path):
        self.root = Path(out_dir)

    def finished_batches(self) -> int:
        """How many batch files this folder holds (what a resumed run would keep)."""
        return sum(1 for _ in self.root.glob(f"{_BATCH_DIR}/*/batch-*.jsonl"))

    def _previous_run(self) -> dict[str, Any] | None:
        info_path = self.root / "run.json"
        return json.loads(info_path.read_text()) if info_path.exists() else None

    def check_same_run(self, run_info: dict[str, Any]) -> None:
        """Refuse a folder that holds a different run with finished batches; writes nothing.
        A different run that finished nothing (a failed start) does not block: :meth:`open`
        replaces it."""
        previous = self._previous_run()
        if previous is not None and not _same_run(previous, run_info) and self.finished_batches():
            changed = sorted(k for k in set(previous) | set(run_info) if previous.get(k) != run_info.get(k))
            raise UserError(
                f"{self.root} holds a different run with {self.finished_batches()} finished batches "
                f"(changed: {', '.join(changed)}); use a new output folder, or delete this one to start over"
            )

    def open(self, run_info: dict[str, Any]) -> None:
        """Create the folder, or resume the run it holds; a different run that finished no batch
        (a failed start) is replaced, its events, status and summary deleted with it."""
        self.check_same_run(run_info)
        self.root.mkdir(parents=True, exist_ok=True)
        previous = self._previous_run()
        if previous is not None and not _same_run(previous, run_info):
            for stale in ("events.jsonl", "status.json", "summary.json", _PREDICTIONS):
                (self.root / stale).unlink(missing_ok=True)
        if previous is None or not _same_run(previous, run_info):
            _write_atomic(self.root / "run.json", json.dumps(run_info, indent=2, sort_keys=True) + "\n")
        for pattern in (f"{_BATCH_DIR}/*/.batch-*.tmp", ".*.tmp"):  # writes cut short by an interruption
            for stray in self.root.glob(pattern):
                stray.unlink(missing_ok=True)

    def is_done(self, batch: Batch) -> bool:
        return _batch_path(self.root, batch.combo, batch.batch_id).exists()

    def records(self, batches: Sequence[Batch]) -> list[dict[str, Any]]:
        """Records of every finished batch among ``batches``, in batch order."""
        out: list[dict[str, Any]] = []
        for batch in batches:
            path = _batch_path(self.root, batch.combo, batch.batch_id)
            if path.exists():
                out.extend(_read_jsonl(path))
        return out

    def rebuild_predictions(self, batches: Sequence[Batch]) -> int:
        """Rewrite ``predictions.jsonl`` from the committed batch files; returns the record count."""
        with _locked(self.root):
            records = self.records(batches)
            _write_atomic(self.root / _PREDICTIONS, _jsonl(records))
        return len(records)

    def log_event(self, event: dict[str, Any]) -> None:
        with open(self.root / "events.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(event, sort_keys=True) + "\n")

    def write_summary(self, summary: dict[str, Any]) -> Path:
        """``summary.json``: figures computed from the records (written by the client)."""
        path = self.root / "summary.json"
        _write_atomic(path, json.dumps(summary, indent=2, sort_keys=True) + "\n")
        return path

    def write_status(self, status: dict[str, Any]) -> Path:
        """``status.json``: the driver's counts and paths."""
        path = self.root / "status.json"
        _write_atomic(path, json.dumps(status, indent=2, sort_keys=True) + "\n")
        return path


def _same_run(previous: dict[str, Any], run_info: dict[str, Any]) -> bool:
    return previous == json.loads(json.dumps(run_info))  # both as JSON reads them


def percentiles(values: Sequence[float], qs: Sequence[int] = (50, 90, 99)) -> dict[str, float | None]:
    """Nearest-rank percentiles ``p<q>`` plus ``mean`` and ``max`` (empty input gives None: JSON has no NaN)."""
    if not values:
        return {**{f"p{q}": None for q in qs}, "mean": None, "max": None}
    ordered = sorted(values)
    ranked = {f"p{q}": ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)] for q in qs}
    return {**ranked, "mean": sum(ordered) / len(ordered), "max": ordered[-1]}


def summarize_records(records: Sequence[dict[str, Any]], regression: bool = False) -> dict[str, Any]:
    """Accuracy, agreement with plaintext, batch latency percentiles, rounds and bytes per sequence.

    Records carry per-batch figures (``batch_latency_s``, ``forward_done_at``, ``rounds``,
    ``bytes``); each batch is counted once. ``agreement`` = mean(prediction == plaintext_prediction)
    where the plaintext reference was computed. A regression's predictions are scores: no accuracy
    nor agreement, but ``max_abs_error_vs_plaintext`` = max |prediction - plaintext_prediction|.
    """
    batches: dict[int, dict[str, Any]] = {}
    for record in records:
        batches.setdefault(record["batch_id"], record)
    labelled = [] if regression else [r for r in records if isinstance(r.get("label"), int)]
    checked = [r for r in records if r.get("plaintext_prediction") is not None]
    errors = [abs(r["prediction"] - r["plaintext_prediction"]) for r in checked] if regression else []
    examples = len(records)
    total_rounds = sum(b["rounds"] for b in batches.values())
    total_bytes = sum(b["bytes"] for b in batches.values())
    return {
        "examples": examples,
        "batches": len(batches),
        "accuracy": (sum(r["prediction"] == r["label"] for r in labelled) / len(labelled)) if labelled else None,
        "agreement_with_plaintext": (
            sum(r["prediction"] == r["plaintext_prediction"] for r in checked) / len(checked)
            if checked and not regression else None
        ),
        **({"max_abs_error_vs_plaintext": max(errors, default=None)} if regression else {}),
        "max_abs_logit_error": max((r["max_abs_logit_error"] for r in checked if "max_abs_logit_error" in r), default=None),
        "batch_latency_s": percentiles([b["batch_latency_s"] for b in batches.values()]),
        "seconds_per_sequence": sum(b["batch_latency_s"] for b in batches.values()) / examples if examples else None,
        "rounds_per_batch": total_rounds / len(batches) if batches else None,
        "rounds_per_sequence": total_rounds / examples if examples else None,
        "bytes_per_sequence": total_bytes / examples if examples else None,
    }
