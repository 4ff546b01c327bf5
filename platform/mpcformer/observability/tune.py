"""Sweep metrics from Ray Tune events: one callback in the sweep driver records every trial.

    from mpcformer.observability.tune import SweepMetricsCallback
    tune.RunConfig(..., callbacks=[SweepMetricsCallback(job=sweep.name, approx_key="combo")])

- trial started -> ``record_trial("running")``; finished -> ``"finished"`` with its metric;
  errored -> ``"failed"``;
- every reported result: keys ``loss_<term>`` -> :func:`record_trial_losses` (``{term: value}``),
  and the metric (``metric_key``, named by the result's ``primary_metric`` if present).
"""

from __future__ import annotations

import logging
from typing import Any, Literal, Mapping

from ray.tune import Callback

from mpcformer.observability.metrics import record_trial, record_trial_losses

__all__ = ["SweepMetricsCallback"]

log = logging.getLogger(__name__)


class SweepMetricsCallback(Callback):
    """Ray Tune callback recording trial states, metrics and losses of the sweep ``job``.

    ``approx_key``: the trial-config key holding the approximation (e.g. ``combo``);
    ``metric_key``: the result key of the evaluation metric (``score``); ``mode``: whether the best
    metric is the max or the min; ``loss_prefix``: result keys with this prefix are loss terms.
    Metrics never fail the sweep: a recording error is logged and ignored.
    """

    def __init__(self, job: str, approx_key: str = "combo", metric_key: str = "score",
                 mode: Literal["max", "min"] = "max", loss_prefix: str = "loss_"):
        self.job, self.approx_key, self.metric_key = job, approx_key, metric_key
        self.mode, self.loss_prefix = mode, loss_prefix

    def _approx(self, trial) -> str:
        return str((trial.config or {}).get(self.approx_key, "unknown"))

    def _record(self, state: str, trial, result: Mapping[str, Any] | None = None) -> None:
        result = result or {}
        try:
            metric = result.get(self.metric_key)
            losses = {key[len(self.loss_prefix):]: float(value) for key, value in result.items()
                      if key.startswith(self.loss_prefix) and isinstance(value, (int, float))}
            if losses:
                record_trial_losses(losses, job=self.job, trial=trial.trial_id, approx=self._approx(trial))
            record_trial(state, job=self.job, trial=trial.trial_id, approx=self._approx(trial),  # type: ignore[arg-type]
                         metric=None if metric is None else float(metric),
                         metric_name=str(result.get("primary_metric", self.metric_key)), mode=self.mode)
        except Exception as err:  # metrics must never fail a sweep
            log.warning("sweep metrics for trial %s not recorded: %s", getattr(trial, "trial_id", "?"), err)

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self._record("running", trial)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        self._record("running", trial, result)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._record("finished", trial, trial.last_result)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._record("failed", trial)
