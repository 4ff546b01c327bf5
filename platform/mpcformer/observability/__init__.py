"""Prometheus metrics of private inference and distillation sweeps, Grafana dashboards, monitoring.

The recording API (one call per event; the backend is chosen automatically):

- :func:`record_forward` (each party, after each encrypted forward, from ``CostLedger.to_dict()``)
- :func:`record_protocol` (each party, with each forward: the protocol path its session runs)
- :func:`track_batch` / :func:`record_batch` / :func:`set_batches_in_flight` (the inference job driver)
- :func:`set_group_health` (whoever starts and watches a party group)
- :func:`record_trial` / :func:`record_trial_losses` (the sweep driver; or the Ray Tune callback
  :class:`mpcformer.observability.tune.SweepMetricsCallback`)

See ``docs/observability.md`` for the metric table and where each one comes from.
"""

from mpcformer.observability.backends import configure, current_backend, flush, ray_connected
from mpcformer.observability.exporter import exposition, start_http_server
from mpcformer.observability.metrics import (
    METRICS,
    MetricSpec,
    metric_spec,
    record_batch,
    record_forward,
    record_protocol,
    record_trial,
    record_trial_losses,
    set_batches_in_flight,
    set_group_health,
    track_batch,
)



def safe_record(name: str, *args, **kwargs) -> None:
    """Call the recording function ``name``; metrics never fail a job (errors are logged at DEBUG)."""
    import logging

    try:
        globals()[name](*args, **kwargs)
    except Exception as err:  # a broken exporter must not stop private inference
        logging.getLogger(__name__).debug("metric %s not recorded: %s", name, err)


__all__ = [
    "safe_record",
    "METRICS", "MetricSpec", "metric_spec",
    "record_forward", "record_protocol", "record_batch", "track_batch", "set_batches_in_flight", "set_group_health",
    "record_trial", "record_trial_losses",
    "configure", "current_backend", "flush", "ray_connected", "start_http_server", "exposition",
]
