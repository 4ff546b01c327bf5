"""Every mpcformer metric, defined once, and the functions that record them.

Callers never touch a metric object: they hand plain data to one of the ``record_*`` functions,
which pick a backend (:mod:`mpcformer.observability.backends`) on first use:

- ``ray``: :mod:`ray.util.metrics`, inside a process connected to Ray (a job driver, an actor,
  a task). The node's metrics agent exports it on Ray's metrics export port; Prometheus finds
  the nodes through Ray's service-discovery file ``<temp-dir>/prom_metrics_service_discovery.json``.
- ``prometheus``: :mod:`prometheus_client`, where no Ray agent runs (``run_local`` parties, a
  plain script); exposed over HTTP (:func:`~mpcformer.observability.exporter.start_http_server`)
  and/or pushed to a Pushgateway.

Exported names are the same whatever the backend: Ray prefixes custom metric names with
``ray_``, so the prometheus_client backend registers the same ``ray_``-prefixed names and one
dashboard reads both. :data:`METRICS` is the table; ``docs/observability.md`` lists it.

    from mpcformer.observability import record_forward
    with ledger.active():
        logits = model(x)
    record_forward(ledger.to_dict(), approx="quad+2quad", model="bert-base", job="sst2-7", rank=rank)

Histograms answer quantiles (latency p95). Their ``_sum`` is approximate under Ray (Ray rebuilds
it from bucket midpoints), so every timed quantity also has an exact ``*_seconds_total`` counter
for means and breakdowns.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Iterator, Literal, Mapping

__all__ = [
    "EXPORT_PREFIX", "MetricSpec", "METRICS", "TRIAL_STATES", "metric_spec",
    "record_forward", "record_batch", "track_batch", "set_batches_in_flight",
    "set_group_health", "record_trial", "record_trial_losses",
]

#: Ray adds this to custom metric names; the prometheus_client backend adds it too.
EXPORT_PREFIX = "ray_"

Kind = Literal["counter", "gauge", "histogram"]
TrialState = Literal["running", "finished", "failed"]
TRIAL_STATES: tuple[str, ...] = ("running", "finished", "failed")

#: Wall time of one encrypted forward or batch: 10 ms .. 30 min.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
#: Time of one operation category within a forward: 1 ms .. 10 min.
OP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 600.0)

_FORWARD = ("job_name", "model", "approx", "rank")
_OPERATION = _FORWARD + ("operation",)
_JOB = ("job_name", "model", "approx")


@dataclass(frozen=True)
class MetricSpec:
    """One metric: base name (as given to Ray), kind, help text, label names, histogram buckets."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()
    source: str = "party"  # who records it: party | job | sweep (documentation)

    @property
    def exported_name(self) -> str:
        """The name Prometheus stores (what dashboards query)."""
        return EXPORT_PREFIX + self.name


METRICS: tuple[MetricSpec, ...] = (
    # -- per encrypted forward, recorded by each party ------------------------------------------
    MetricSpec("mpcformer_forwards_total", "counter", "Encrypted forwards completed by a party.", _FORWARD),
    MetricSpec("mpcformer_forward_sequences_total", "counter", "Sequences in the encrypted forwards of a party.", _FORWARD),
    MetricSpec("mpcformer_forward_latency_seconds", "histogram", "Wall time of one encrypted forward on a party.",
               _FORWARD, LATENCY_BUCKETS),
    MetricSpec("mpcformer_forward_seconds_total", "counter", "Wall time of all encrypted forwards (exact sum).", _FORWARD),
    MetricSpec("mpcformer_dealer_rounds_total", "counter", "Communication rounds with the dealer (TTP).", _FORWARD),
    MetricSpec("mpcformer_dealer_bytes_total", "counter", "Bytes exchanged with the dealer (TTP).", _FORWARD),
    MetricSpec("mpcformer_protocol_info", "gauge",
               "1 for the protocol path a job's parties run (mpcformer, crypten, or custom:<steps>).",
               ("job_name", "protocol_path")),
    # -- per operation category within a forward -------------------------------------------------
    MetricSpec("mpcformer_comm_rounds_total", "counter", "Party-to-party communication rounds by operation.", _OPERATION),
    MetricSpec("mpcformer_comm_bytes_total", "counter", "Party-to-party bytes sent by operation.", _OPERATION),
    MetricSpec("mpcformer_op_time_seconds", "histogram", "Wall time of one operation category in one forward.",
               _OPERATION, OP_BUCKETS),
    MetricSpec("mpcformer_comm_time_seconds", "histogram", "Communication time of one operation category in one forward.",
               _OPERATION, OP_BUCKETS),
    MetricSpec("mpcformer_op_seconds_total", "counter", "Wall time by operation (exact sum).", _OPERATION),
    MetricSpec("mpcformer_comm_seconds_total", "counter", "Communication time by operation (exact sum).", _OPERATION),
    # -- per inference job, recorded by the job driver -------------------------------------------
    MetricSpec("mpcformer_sequences_total", "counter", "Sequences of a job by outcome (done, failed).",
               _JOB + ("outcome",), source="job"),
    MetricSpec("mpcformer_batches_total", "counter", "Batches of a job by outcome (done, failed).",
               _JOB + ("outcome",), source="job"),
    MetricSpec("mpcformer_batch_latency_seconds", "histogram", "Wall time of one successful batch, end to end.",
               _JOB, LATENCY_BUCKETS, source="job"),
    MetricSpec("mpcformer_batches_in_flight", "gauge", "Batches submitted to party groups and not yet finished.",
               _JOB, source="job"),
    MetricSpec("mpcformer_party_group_up", "gauge", "1 while a party group (parties + dealer) is healthy, else 0.",
               ("job_name", "group"), source="job"),
    # -- per distillation sweep, recorded by the sweep driver ------------------------------------
    MetricSpec("mpcformer_sweep_trials", "gauge", "Trials of a sweep in each state (running, finished, failed).",
               ("job_name", "state"), source="sweep"),
    MetricSpec("mpcformer_sweep_best_metric", "gauge", "Best evaluation metric of a sweep per approximation.",
               ("job_name", "approx", "metric"), source="sweep"),
    MetricSpec("mpcformer_trial_metric", "gauge", "Latest evaluation metric of a trial.",
               ("job_name", "trial", "approx", "metric"), source="sweep"),
    MetricSpec("mpcformer_trial_loss", "gauge", "Latest distillation loss of a trial, by loss term.",
               ("job_name", "trial", "approx", "loss"), source="sweep"),
)

_BY_NAME: dict[str, MetricSpec] = {spec.name: spec for spec in METRICS}


def metric_spec(name: str) -> MetricSpec:
    """The spec of ``name`` (base name, with or without the export prefix)."""
    spec = _BY_NAME.get(name.removeprefix(EXPORT_PREFIX))
    if spec is None:
        raise KeyError(f"unknown metric '{name}'; defined: {', '.join(_BY_NAME)}")
    return spec


def _emit():
    from mpcformer.observability.backends import current_backend

    return current_backend()


def _inc(name: str, value: float, labels: Mapping[str, str]) -> None:
    if value > 0:  # counters only go up; Ray rejects 0
        _emit().inc(_BY_NAME[name], float(value), labels)


# ----------------------------------------------------------------------------------- forwards
def _check_costs(costs: Mapping) -> None:
    if not isinstance(costs, Mapping) or "total" not in costs or "by_category" not in costs:
        raise ValueError("record_forward expects CostLedger.to_dict() (keys 'total', 'dealer', 'by_category')")
    from mpcformer.mpc.costs import CATEGORIES  # lazy: it loads CrypTen

    unknown = set(costs["by_category"]) - set(CATEGORIES)
    if unknown:
        raise ValueError(f"unknown operation categories {sorted(unknown)}; known: {', '.join(CATEGORIES)}")


def record_forward(
    costs: Mapping, *, approx: str, model: str, job: str, rank: int, sequences: int = 1
) -> None:
    """Record one encrypted forward of one party from its ``CostLedger.to_dict()``.

    Counts the forward and its ``sequences``; observes its latency (``total.time_s``); adds the
    dealer's rounds/bytes; per operation category adds rounds, bytes, wall and communication
    time. Call it on every party (``rank`` labels the series), after the ledger is closed.
    """
    _check_costs(costs)
    labels = {"job_name": job, "model": model, "approx": approx, "rank": str(rank)}
    total, dealer = costs["total"], costs.get("dealer", {})
    backend = _emit()
    _inc("mpcformer_forwards_total", 1, labels)
    _inc("mpcformer_forward_sequences_total", sequences, labels)
    backend.observe(_BY_NAME["mpcformer_forward_latency_seconds"], float(total["time_s"]), labels)
    _inc("mpcformer_forward_seconds_total", total["time_s"], labels)
    _inc("mpcformer_dealer_rounds_total", dealer.get("rounds", 0.0), labels)
    _inc("mpcformer_dealer_bytes_total", dealer.get("bytes", 0.0), labels)
    for operation, cost in costs["by_category"].items():
        op_labels = {**labels, "operation": operation}
        _inc("mpcformer_comm_rounds_total", cost["rounds"], op_labels)
        _inc("mpcformer_comm_bytes_total", cost["bytes"], op_labels)
        _inc("mpcformer_op_seconds_total", cost["time_s"], op_labels)
        _inc("mpcformer_comm_seconds_total", cost["comm_time_s"], op_labels)
        backend.observe(_BY_NAME["mpcformer_op_time_seconds"], float(cost["time_s"]), op_labels)
        backend.observe(_BY_NAME["mpcformer_comm_time_seconds"], float(cost["comm_time_s"]), op_labels)


def record_protocol(protocol_path: str, *, job: str) -> None:
    """Mark the protocol path a party of ``job`` runs (:func:`mpcformer.mpc.runtime.protocol_label`)."""
    _emit().set(_BY_NAME["mpcformer_protocol_info"], 1.0, {"job_name": job, "protocol_path": protocol_path})


# ---------------------------------------------------------------------------------------- jobs
_lock = threading.Lock()
_in_flight: dict[tuple[str, str, str], int] = {}


def record_batch(
    *, job: str, model: str, approx: str, sequences: int, failed: bool = False, latency_s: float | None = None
) -> None:
    """Record one finished batch of ``sequences`` sequences (``failed=True`` if it raised).

    Both outcomes' series exist from the first batch on (the other one at 0), so an error panel
    shows 0 rather than "no data".
    """
    labels = {"job_name": job, "model": model, "approx": approx}
    outcome, other = ("failed", "done") if failed else ("done", "failed")
    backend = _emit()
    for name in ("mpcformer_sequences_total", "mpcformer_batches_total"):
        backend.touch(_BY_NAME[name], {**labels, "outcome": other})
    _inc("mpcformer_batches_total", 1, {**labels, "outcome": outcome})
    _inc("mpcformer_sequences_total", sequences, {**labels, "outcome": outcome})
    if latency_s is not None and not failed:
        backend.observe(_BY_NAME["mpcformer_batch_latency_seconds"], float(latency_s), labels)


def set_batches_in_flight(count: int, *, job: str, model: str, approx: str) -> None:
    """Set the number of batches of a job that are running now."""
    with _lock:
        _in_flight[(job, model, approx)] = count
    _emit().set(_BY_NAME["mpcformer_batches_in_flight"], float(count),
                {"job_name": job, "model": model, "approx": approx})


@contextlib.contextmanager
def track_batch(*, job: str, model: str, approx: str, sequences: int) -> Iterator[None]:
    """Count a batch in flight while the block runs, then :func:`record_batch` it (failed if it raised).

        with track_batch(job="sst2-7", model="bert-base", approx="quad+2quad", sequences=len(batch)):
            logits = group.forward(batch)
    """
    key = (job, model, approx)
    with _lock:
        _in_flight[key] = _in_flight.get(key, 0) + 1
        count = _in_flight[key]
    set_batches_in_flight(count, job=job, model=model, approx=approx)
    tic = time.perf_counter()
    failed = True
    try:
        yield
        failed = False
    finally:
        with _lock:
            _in_flight[key] -= 1
            count = _in_flight[key]
        set_batches_in_flight(count, job=job, model=model, approx=approx)
        record_batch(job=job, model=model, approx=approx, sequences=sequences, failed=failed,
                     latency_s=time.perf_counter() - tic)


def set_group_health(up: bool, *, job: str, group: str = "parties") -> None:
    """Mark a party group (its parties and dealer) as up (every member answers) or down."""
    _emit().set(_BY_NAME["mpcformer_party_group_up"], 1.0 if up else 0.0, {"job_name": job, "group": group})


# -------------------------------------------------------------------------------------- sweeps
_trial_states: dict[str, dict[str, str]] = {}
_best: dict[tuple[str, str, str], float] = {}


def record_trial(
    state: TrialState, *, job: str, trial: str, approx: str,
    metric: float | None = None, metric_name: str = "accuracy", mode: Literal["max", "min"] = "max",
) -> None:
    """Record a sweep trial's state (running, finished, failed) and, if given, its latest metric.

    Keeps this process's view of the sweep's trials: the trial-state gauges count them, and the
    best metric per approximation follows ``mode`` (``max`` for accuracy, ``min`` for a loss).
    Call it from the sweep driver (one process per sweep).
    """
    if state not in TRIAL_STATES:
        raise ValueError(f"unknown trial state '{state}'; known: {', '.join(TRIAL_STATES)}")
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got '{mode}'")
    with _lock:
        states = _trial_states.setdefault(job, {})
        states[trial] = state
        counts = {s: sum(1 for v in states.values() if v == s) for s in TRIAL_STATES}
    backend = _emit()
    for each, count in counts.items():
        backend.set(_BY_NAME["mpcformer_sweep_trials"], float(count), {"job_name": job, "state": each})
    if metric is None:
        return
    labels = {"job_name": job, "approx": approx, "metric": metric_name}
    backend.set(_BY_NAME["mpcformer_trial_metric"], float(metric), {**labels, "trial": trial})
    with _lock:
        key = (job, approx, metric_name)
        previous = _best.get(key)
        better = previous is None or (metric > previous if mode == "max" else metric < previous)
        if better:
            _best[key] = float(metric)
        best = _best[key]
    backend.set(_BY_NAME["mpcformer_sweep_best_metric"], best, labels)


def record_trial_losses(losses: Mapping[str, float], *, job: str, trial: str, approx: str) -> None:
    """Record a trial's latest loss terms, e.g. ``{"attention": 0.1, "hidden": 0.3, "logits": 0.7}``."""
    backend = _emit()
    for loss, value in losses.items():
        backend.set(_BY_NAME["mpcformer_trial_loss"], float(value),
                    {"job_name": job, "trial": trial, "approx": approx, "loss": loss})
