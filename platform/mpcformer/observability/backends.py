"""The two metric backends behind :mod:`mpcformer.observability.metrics`, and how one is chosen.

- :class:`RayBackend` records with :mod:`ray.util.metrics` (exported by the node's metrics agent,
  names prefixed ``ray_`` by Ray).
- :class:`PrometheusBackend` records into its own :class:`prometheus_client.CollectorRegistry`
  under the same exported names; :mod:`mpcformer.observability.exporter` serves it over HTTP or
  pushes it to a Pushgateway.
- :class:`NullBackend` drops everything (``MPCFORMER_METRICS_BACKEND=none``).

Choice (:func:`configure`, else on first use): ``MPCFORMER_METRICS_BACKEND`` (ray, prometheus,
none) if set; else ``ray`` when this process is connected to Ray (driver, actor or task), else
``prometheus``. With ``prometheus``, ``MPCFORMER_METRICS_PORT`` starts the HTTP endpoint and
``MPCFORMER_PUSHGATEWAY`` (``host:port``) pushes every ``MPCFORMER_PUSH_INTERVAL_S`` seconds
(default 5) and at exit.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
from typing import Any, Literal, Mapping, Protocol

from mpcformer.observability.metrics import METRICS, MetricSpec

__all__ = [
    "Backend", "RayBackend", "PrometheusBackend", "NullBackend", "BackendName",
    "configure", "current_backend", "ray_connected", "flush",
]

log = logging.getLogger(__name__)

BackendName = Literal["auto", "ray", "prometheus", "none"]
_CHOICES = ("auto", "ray", "prometheus", "none")


class Backend(Protocol):
    name: str

    def inc(self, spec: MetricSpec, value: float, labels: Mapping[str, str]) -> None: ...

    def set(self, spec: MetricSpec, value: float, labels: Mapping[str, str]) -> None: ...

    def observe(self, spec: MetricSpec, value: float, labels: Mapping[str, str]) -> None: ...

    def touch(self, spec: MetricSpec, labels: Mapping[str, str]) -> None:
        """Make a counter's labelled series exist at 0."""


class NullBackend:
    """Records nothing."""

    name = "none"

    def inc(self, spec, value, labels) -> None:
        pass

    set = observe = inc

    def touch(self, spec, labels) -> None:
        pass


class RayBackend:
    """:mod:`ray.util.metrics` objects, created on first use in this process (Ray exports them).

    Ray's metrics agent drops a gauge series that its process has not set again within two
    report intervals (``metrics_report_interval_ms``, 10 s by default), so this backend keeps
    the last value of every gauge series it set and sets it again every half interval from a
    daemon thread.
    """

    name = "ray"

    def __init__(self, refresh_s: float | None = None) -> None:
        self._metrics: dict[str, Any] = {}
        self._gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._lock = threading.Lock()
        self._refresh_s = refresh_s or _half_report_interval_s()
        self._refresher: threading.Thread | None = None

    def _get(self, spec: MetricSpec):
        with self._lock:
            found = self._metrics.get(spec.name)
            if found is None:
                found = self._metrics[spec.name] = self._build(spec)
            return found

    @staticmethod
    def _build(spec: MetricSpec):
        from ray.util import metrics as ray_metrics

        if spec.kind == "counter":
            return ray_metrics.Counter(spec.name, spec.help, tag_keys=spec.labels)
        if spec.kind == "gauge":
            return ray_metrics.Gauge(spec.name, spec.help, tag_keys=spec.labels)
        return ray_metrics.Histogram(spec.name, spec.help, boundaries=list(spec.buckets), tag_keys=spec.labels)

    def inc(self, spec: MetricSpec, value: float, labels: Mapping[str, str]) -> None:
        self._get(spec).inc(value, tags=dict(labels))

    def set(self, spec: MetricSpec, value: float, labels: Mapping[str, str]) -> None:
        gauge = self._get(spec)
        with self._lock:
            self._gauges[(spec.name, tuple(sorted(labels.items())))] = value
            if self._refresher is None:
                self._refresher = threading.Thread(target=self._refresh_forever, name="mpcformer-gauges", daemon=True)
                self._refresher.start()
        gauge.set(value, tags=dict(labels))

    def _refresh_forever(self) -> None:
        while True:
            time.sleep(self._refresh_s)
            with self._lock:
                live = [(self._metrics[name], value, dict(labels)) for (name, labels), value in self._gauges.items()]
            for gauge, value, labels in live:
                try:
                    gauge.set(value, tags=labels)
                except Exception as err:  # Ray shut down under us: stop quietly
                    log.debug("gauge refresh stopped: %s", err)
                    return

    def observe(self, spec: MetricSpec, value: float, labels: Mapping[str, str]) -> None:
        self._get(spec).observe(value, tags=dict(labels))

    def touch(self, spec: MetricSpec, labels: Mapping[str, str]) -> None:
        # ray.util.metrics.Counter.inc refuses 0; its recorder (an OpenTelemetry counter) takes it.
        counter = self._get(spec)
        try:
            counter._metric.record(0.0, tags=dict(labels))
        except Exception as err:  # a Ray version without that recorder: the series appears later
            log.debug("cannot create %s at 0 under Ray: %s", spec.name, err)


def _half_report_interval_s() -> float:
    try:
        import ray

        interval_ms = ray._config.metrics_report_interval_ms()
    except Exception:  # not connected yet, or another Ray version
        interval_ms = 10_000
    return max(interval_ms, 1000) / 2000.0


class PrometheusBackend:
    """prometheus_client metrics in a private registry, named as Ray exports them."""

    name = "prometheus"

    def __init__(self, pushgateway: str | None = None, push_job: str = "mpcformer", push_interval_s: float = 5.0):
        from prometheus_client import CollectorRegistry

        self.registry = CollectorRegistry(auto_describe=True)
        self._metrics = {spec.name: self._build(spec, self.registry) for spec in METRICS}
        self.pushgateway, self.push_job, self.push_interval_s = pushgateway, push_job, push_interval_s
        self._last_push = 0.0

    @staticmethod
    def _build(spec: MetricSpec, registry):
        import prometheus_client as pc

        if spec.kind == "counter":
            return pc.Counter(spec.exported_name, spec.help, spec.labels, registry=registry)
        if spec.kind == "gauge":
            return pc.Gauge(spec.exported_name, spec.help, spec.labels, registry=registry)
        return pc.Histogram(spec.exported_name, spec.help, spec.labels, registry=registry, buckets=spec.buckets)

    def _series(self, spec: MetricSpec, labels: Mapping[str, str]):
        return self._metrics[spec.name].labels(**labels)

    def inc(self, spec: MetricSpec, value: float, labels: Mapping[str, str]) -> None:
        self._series(spec, labels).inc(value)
        self._maybe_push()

    def set(self, spec: MetricSpec, value: float, labels: Mapping[str, str]) -> None:
        self._series(spec, labels).set(value)
        self._maybe_push()

    def observe(self, spec: MetricSpec, value: float, labels: Mapping[str, str]) -> None:
        self._series(spec, labels).observe(value)
        self._maybe_push()

    def touch(self, spec: MetricSpec, labels: Mapping[str, str]) -> None:
        self._series(spec, labels)  # .labels() creates the series at 0

    def _maybe_push(self) -> None:
        if self.pushgateway and time.monotonic() - self._last_push >= self.push_interval_s:
            self.push()

    def push(self) -> None:
        """Push the whole registry to the Pushgateway now (no-op without one); errors are logged."""
        if not self.pushgateway:
            return
        from mpcformer.observability.exporter import push_registry

        self._last_push = time.monotonic()
        try:
            push_registry(self.registry, self.pushgateway, job=self.push_job)
        except OSError as err:  # metrics must never fail a job
            log.warning("could not push metrics to the Pushgateway at %s: %s", self.pushgateway, err)


_lock = threading.Lock()
_backend: Backend | None = None
_auto_chosen = False  # an automatic choice is revisited once the process connects to Ray
_prometheus: PrometheusBackend | None = None  # one registry per process, kept across configure()


def ray_connected() -> bool:
    """True in a process connected to Ray (a driver after ``ray.init``, an actor, a task)."""
    ray = sys.modules.get("ray")  # never import Ray just to find out
    return bool(ray is not None and ray.is_initialized())


def _prometheus_backend(pushgateway: str | None) -> PrometheusBackend:
    global _prometheus
    if _prometheus is None:
        _prometheus = PrometheusBackend(
            pushgateway=pushgateway,
            push_job=os.environ.get("MPCFORMER_PUSH_JOB", "mpcformer"),
            push_interval_s=float(os.environ.get("MPCFORMER_PUSH_INTERVAL_S", "5")),
        )
        atexit.register(_prometheus.push)
    elif pushgateway:
        _prometheus.pushgateway = pushgateway
    return _prometheus


def configure(
    backend: BackendName = "auto", *, http_port: int | None = None, http_addr: str = "127.0.0.1",
    pushgateway: str | None = None,
) -> Backend:
    """Choose the backend for this process (see the module doc); returns it.

    ``http_port`` (prometheus backend) serves ``/metrics`` on ``http_addr:http_port`` (0 = a free
    port; the exporter logs it). ``pushgateway`` (``host:port`` or URL) pushes to a Pushgateway.
    """
    global _backend, _auto_chosen
    if backend not in _CHOICES:
        raise ValueError(f"unknown metrics backend '{backend}'; choose one of {', '.join(_CHOICES)}")
    if backend == "auto":
        backend = os.environ.get("MPCFORMER_METRICS_BACKEND", "auto")  # type: ignore[assignment]
        if backend not in _CHOICES:
            raise ValueError(f"MPCFORMER_METRICS_BACKEND='{backend}' is not one of {', '.join(_CHOICES)}")
    _auto_chosen = backend == "auto"
    if backend == "auto":
        backend = "ray" if ray_connected() else "prometheus"
    with _lock:
        if backend == "ray":
            _backend = RayBackend()
        elif backend == "none":
            _backend = NullBackend()
        else:
            chosen = _prometheus_backend(pushgateway or os.environ.get("MPCFORMER_PUSHGATEWAY") or None)
            if http_port is None and os.environ.get("MPCFORMER_METRICS_PORT"):
                http_port = int(os.environ["MPCFORMER_METRICS_PORT"])
            if http_port is not None:
                from mpcformer.observability.exporter import start_http_server

                start_http_server(http_port, http_addr, registry=chosen.registry)
            _backend = chosen
        log.debug("metrics backend: %s", _backend.name)
        return _backend


def current_backend() -> Backend:
    """The configured backend, choosing one automatically on first use (and again after a
    process that chose prometheus automatically has connected to Ray)."""
    if _backend is None or (_auto_chosen and _backend.name == "prometheus" and ray_connected()):
        return configure()
    return _backend


def flush() -> None:
    """Push pending prometheus_client metrics to the Pushgateway, if one is configured."""
    if _prometheus is not None:
        _prometheus.push()
