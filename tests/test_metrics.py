"""The metrics API on the prometheus_client backend: exposition parsed with prometheus_client's own
text parser, Pushgateway pushes, backend choice, input checks."""

from __future__ import annotations

import http.server
import threading
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mpcformer import observability as obs
from mpcformer.observability import backends
from mpcformer.observability.metrics import EXPORT_PREFIX, METRICS

pytestmark = pytest.mark.timeout(60)

CATEGORIES = ("embedding", "linear", "attention-matmul", "softmax", "activation", "layernorm", "pooler", "classifier", "other")


def _costs(scale: float = 1.0) -> dict:
    """A CostLedger.to_dict() with every category: category i has i+1 rounds, 100(i+1) bytes."""
    by_category = {
        cat: {"time_s": 0.01 * (i + 1) * scale, "comm_time_s": 0.005 * (i + 1) * scale,
              "rounds": float(i + 1) * scale, "bytes": 100.0 * (i + 1) * scale}
        for i, cat in enumerate(CATEGORIES)
    }
    total = {key: sum(c[key] for c in by_category.values()) for key in ("time_s", "comm_time_s", "rounds", "bytes")}
    return {"total": total, "dealer": {"time_s": 0.1, "comm_time_s": 0.1, "rounds": 4.0, "bytes": 512.0},
            "by_category": by_category, "by_layer": {}}


@pytest.fixture
def prom():
    """The prometheus_client backend for this test; the automatic choice is restored afterwards."""
    backend = obs.configure("prometheus")
    yield backend
    obs.configure("auto")


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples, name: str, **labels) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_forward_exposition_parses_with_values_per_operation(prom):
    job = "t-forward"
    obs.record_forward(_costs(), approx="quad+2quad", model="tiny", job=job, rank=0, sequences=4)
    obs.record_forward(_costs(2.0), approx="quad+2quad", model="tiny", job=job, rank=0, sequences=4)
    port = obs.start_http_server(0)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = _samples(text)
    base = {"job_name": job, "model": "tiny", "approx": "quad+2quad", "rank": "0"}
    assert _value(samples, "ray_mpcformer_forwards_total", **base) == 2
    assert _value(samples, "ray_mpcformer_forward_sequences_total", **base) == 8
    assert _value(samples, "ray_mpcformer_forward_latency_seconds_count", **base) == 2
    assert _value(samples, "ray_mpcformer_dealer_bytes_total", **base) == 1024
    for i, cat in enumerate(CATEGORIES):
        op = {**base, "operation": cat}
        assert _value(samples, "ray_mpcformer_comm_rounds_total", **op) == pytest.approx(3.0 * (i + 1))
        assert _value(samples, "ray_mpcformer_comm_bytes_total", **op) == pytest.approx(300.0 * (i + 1))
        assert _value(samples, "ray_mpcformer_op_seconds_total", **op) == pytest.approx(0.03 * (i + 1))
        assert _value(samples, "ray_mpcformer_op_time_seconds_count", **op) == 2
        assert _value(samples, "ray_mpcformer_comm_time_seconds_bucket", **op, le="+Inf") == 2
    total_time = _costs()["total"]["time_s"] * 3
    assert _value(samples, "ray_mpcformer_forward_seconds_total", **base) == pytest.approx(total_time)


def test_every_metric_is_exported_under_its_ray_name(prom):
    job = "t-all"
    obs.record_forward(_costs(), approx="exact", model="tiny", job=job, rank=1)
    with obs.track_batch(job=job, model="tiny", approx="exact", sequences=2):
        pass
    obs.set_group_health(True, job=job)
    obs.record_trial("finished", job=job, trial="t0", approx="exact", metric=0.9)
    obs.record_trial_losses({"logits": 0.3}, job=job, trial="t0", approx="exact")
    families = {f.name: f for f in text_string_to_metric_families(obs.exposition())}
    for spec in METRICS:
        family_name = spec.exported_name.removesuffix("_total") if spec.kind == "counter" else spec.exported_name
        assert family_name in families, f"{spec.exported_name} missing from the exposition"
        assert families[family_name].type == spec.kind
        assert families[family_name].documentation == spec.help
        assert spec.exported_name.startswith(EXPORT_PREFIX + "mpcformer_")
    assert all(spec.name.endswith("_total") for spec in METRICS if spec.kind == "counter")
    assert all("seconds" in spec.name for spec in METRICS if spec.kind == "histogram")


def test_batches_in_flight_and_outcomes(prom):
    job, labels = "t-batch", {"job_name": "t-batch", "model": "m", "approx": "exact"}
    with obs.track_batch(job=job, model="m", approx="exact", sequences=3):
        inside = _samples(obs.exposition())
        assert _value(inside, "ray_mpcformer_batches_in_flight", **labels) == 1
    with pytest.raises(RuntimeError):
        with obs.track_batch(job=job, model="m", approx="exact", sequences=5):
            raise RuntimeError("party 1 died")
    after = _samples(obs.exposition())
    assert _value(after, "ray_mpcformer_batches_in_flight", **labels) == 0
    assert _value(after, "ray_mpcformer_sequences_total", **labels, outcome="done") == 3
    assert _value(after, "ray_mpcformer_sequences_total", **labels, outcome="failed") == 5
    assert _value(after, "ray_mpcformer_batches_total", **labels, outcome="failed") == 1
    assert _value(after, "ray_mpcformer_batch_latency_seconds_count", **labels) == 1  # failures are not timed


def test_failed_series_exist_at_zero_from_the_first_batch(prom):
    obs.record_batch(job="t-zero", model="m", approx="exact", sequences=2, latency_s=0.5)
    samples = _samples(obs.exposition())
    assert _value(samples, "ray_mpcformer_sequences_total", job_name="t-zero", model="m", approx="exact", outcome="failed") == 0


def test_group_health_and_sweep_state(prom):
    job = "t-sweep"
    obs.set_group_health(True, job=job, group="g0")
    obs.set_group_health(False, job=job, group="g1")
    obs.record_trial("running", job=job, trial="a", approx="quad+2quad")
    obs.record_trial("running", job=job, trial="b", approx="quad+2quad")
    obs.record_trial("finished", job=job, trial="a", approx="quad+2quad", metric=0.80)
    obs.record_trial("failed", job=job, trial="b", approx="quad+2quad", metric=0.85)
    obs.record_trial("finished", job=job, trial="c", approx="quad+2quad", metric=0.70)
    obs.record_trial("finished", job=job, trial="d", approx="2relu-run", metric=0.4, metric_name="loss", mode="min")
    obs.record_trial("finished", job=job, trial="e", approx="2relu-run", metric=0.2, metric_name="loss", mode="min")
    obs.record_protocol("crypten", job=job)
    samples = _samples(obs.exposition())
    assert _value(samples, "ray_mpcformer_protocol_info", job_name=job, protocol_path="crypten") == 1
    assert _value(samples, "ray_mpcformer_party_group_up", job_name=job, group="g0") == 1
    assert _value(samples, "ray_mpcformer_party_group_up", job_name=job, group="g1") == 0
    assert _value(samples, "ray_mpcformer_sweep_trials", job_name=job, state="running") == 0
    assert _value(samples, "ray_mpcformer_sweep_trials", job_name=job, state="finished") == 4
    assert _value(samples, "ray_mpcformer_sweep_trials", job_name=job, state="failed") == 1
    best = dict(job_name=job, approx="quad+2quad", metric="accuracy")
    assert _value(samples, "ray_mpcformer_sweep_best_metric", **best) == pytest.approx(0.85)
    lowest = _value(samples, "ray_mpcformer_sweep_best_metric", job_name=job, approx="2relu-run", metric="loss")
    assert lowest == pytest.approx(0.2)
    assert _value(samples, "ray_mpcformer_trial_metric", **best, trial="c") == pytest.approx(0.70)


def test_bad_inputs_say_what_to_pass(prom):
    with pytest.raises(ValueError, match="CostLedger.to_dict"):
        obs.record_forward({"rounds": 3}, approx="exact", model="m", job="j", rank=0)
    bad = _costs()
    bad["by_category"]["gelu"] = bad["by_category"].pop("activation")
    with pytest.raises(ValueError, match="known: embedding"):
        obs.record_forward(bad, approx="exact", model="m", job="j", rank=0)
    with pytest.raises(ValueError, match="known: running, finished, failed"):
        obs.record_trial("paused", job="j", trial="t", approx="exact")
    with pytest.raises(ValueError, match="choose one of"):
        obs.configure("statsd")
    with pytest.raises(KeyError, match="defined:"):
        obs.metric_spec("mpcformer_nothing_total")
    assert obs.metric_spec("ray_mpcformer_comm_rounds_total").kind == "counter"


def test_backend_choice(monkeypatch):
    try:
        monkeypatch.setenv("MPCFORMER_METRICS_BACKEND", "none")
        assert obs.configure().name == "none"
        obs.record_forward(_costs(), approx="exact", model="m", job="j", rank=0)  # dropped, no error
        monkeypatch.delenv("MPCFORMER_METRICS_BACKEND")
        expected = "ray" if backends.ray_connected() else "prometheus"
        assert obs.configure().name == expected
        monkeypatch.setenv("MPCFORMER_METRICS_BACKEND", "bogus")
        with pytest.raises(ValueError, match="MPCFORMER_METRICS_BACKEND"):
            obs.configure()
    finally:
        monkeypatch.delenv("MPCFORMER_METRICS_BACKEND", raising=False)
        obs.configure("auto")


class _Gateway(http.server.BaseHTTPRequestHandler):
    """A Pushgateway stand-in on loopback: keeps each pushed body by path."""

    pushed: dict[str, str] = {}

    def do_PUT(self):  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        type(self).pushed[self.path] = body
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_pushgateway_push_carries_the_registry(prom):
    server = http.server.HTTPServer(("127.0.0.1", 0), _Gateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        obs.configure("prometheus", pushgateway=f"127.0.0.1:{server.server_port}")
        obs.record_batch(job="t-push", model="m", approx="exact", sequences=7, latency_s=1.0)
        obs.flush()
    finally:
        prom.pushgateway = None
        server.shutdown()
        server.server_close()
    assert _Gateway.pushed, "nothing was pushed"
    path, body = next(iter(_Gateway.pushed.items()))
    assert path.startswith("/metrics/job/mpcformer/instance/")
    samples = _samples(body)
    assert _value(samples, "ray_mpcformer_sequences_total", job_name="t-push", model="m", approx="exact", outcome="done") == 7


def test_docs_list_every_metric_under_its_exported_name():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "observability.md").read_text()
    missing = [spec.exported_name for spec in METRICS if f"`{spec.exported_name}`" not in doc]
    assert not missing, f"docs/observability.md does not list {missing}"


def test_tune_callback_records_trial_states_metric_and_losses(prom):
    from types import SimpleNamespace

    from mpcformer.observability.tune import SweepMetricsCallback

    callback = SweepMetricsCallback(job="t-tune", approx_key="combo")
    good = SimpleNamespace(trial_id="a1", config={"combo": "quad+2quad"}, last_result={})
    bad = SimpleNamespace(trial_id="b2", config={"combo": "quad+2relu"}, last_result={})
    callback.on_trial_start(0, [good, bad], good)
    callback.on_trial_start(0, [good, bad], bad)
    good.last_result = {"score": 0.87, "primary_metric": "accuracy", "loss_logits": 0.25, "loss_hidden": 0.5}
    callback.on_trial_result(1, [good, bad], good, good.last_result)
    callback.on_trial_complete(2, [good, bad], good)
    callback.on_trial_error(2, [good, bad], bad)
    samples = _samples(obs.exposition())
    states = {s: _value(samples, "ray_mpcformer_sweep_trials", job_name="t-tune", state=s) for s in ("running", "finished", "failed")}
    assert states == {"running": 0, "finished": 1, "failed": 1}
    assert _value(samples, "ray_mpcformer_sweep_best_metric", job_name="t-tune", approx="quad+2quad", metric="accuracy") == 0.87
    loss = dict(job_name="t-tune", trial="a1", approx="quad+2quad")
    assert _value(samples, "ray_mpcformer_trial_loss", **loss, loss="logits") == 0.25
    assert _value(samples, "ray_mpcformer_trial_loss", **loss, loss="hidden") == 0.5
