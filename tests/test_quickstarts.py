"""The docs' quick starts, run as written: each is a script under ``scripts/quickstart/`` that the docs
include verbatim (``scripts/quickstart/sync_docs.py``); here every include must match its script, and
each script runs green on a private one-node cluster (its own ports, temp dir and token)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
import yaml

from mpcformer.data import write_synthetic_sentiment
from mpcformer.observability.prometheus import PrometheusServer, free_ports
from ray_support import processes_naming

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts" / "quickstart"))
import sync_docs  # noqa: E402

DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
# the ports `ray start --head` would otherwise take from fixed defaults; the scripts set the others
OTHER_RAY_PORT_FLAGS = ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
                        "--ray-client-server-port", "--node-manager-port", "--object-manager-port")


def test_every_quick_start_the_docs_include_is_its_script_verbatim():
    included = {script: body for doc in DOCS for script, body in sync_docs.includes(doc)}
    assert set(included) >= {"scripts/quickstart/ray-jobs.sh", "scripts/quickstart/observability.sh"}
    for script, body in included.items():
        assert body == sync_docs.script_body(ROOT / script), f"{script} drifted: run scripts/quickstart/sync_docs.py"


def test_a_doc_that_drifted_from_its_script_is_caught(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- quickstart: scripts/quickstart/ray-jobs.sh -->\n```bash\necho stale\n```\n")
    [(script, body)] = sync_docs.includes(doc)
    assert body != sync_docs.script_body(ROOT / script)


def run_quick_start(name: str, tmp_path: Path, *port_variables: str) -> subprocess.CompletedProcess:
    """Run ``scripts/quickstart/<name>.sh`` from the repository root, with a free port in each of
    ``port_variables`` and private ports for the rest of the head; kill whatever it leaves."""
    temp_dir = tempfile.mkdtemp(prefix="mpcf-qs-", dir="/tmp")  # short: Ray's socket paths must fit
    *other, dashboard_metric, autoscaler_metric = free_ports(len(OTHER_RAY_PORT_FLAGS) + 2 + len(port_variables))
    head_args = " ".join(f"{flag} {port}" for flag, port in zip(OTHER_RAY_PORT_FLAGS, other))
    script_ports = dict(zip(port_variables, other[len(OTHER_RAY_PORT_FLAGS):]))
    env = {
        **os.environ, **{k: str(v) for k, v in script_ports.items()},
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # the venv's python and ray
        "RAY_TEMP_DIR": temp_dir, "HEAD_ARGS": f"{head_args} --num-cpus 4 --disable-usage-stats",
        "RAY_AUTH_TOKEN": uuid.uuid4().hex + uuid.uuid4().hex, "RAY_USAGE_STATS_ENABLED": "0",
        "DASHBOARD_METRIC_PORT": str(dashboard_metric), "AUTOSCALER_METRIC_PORT": str(autoscaler_metric),
        "DATA": str(write_synthetic_sentiment(tmp_path / "data", num_train=4, num_dev=16, seed=3)),
        "OUT": str(tmp_path / "out"), "HF_HUB_OFFLINE": "1",
    }
    for inherited in ("RAY_ADDRESS", "RAY_metrics_report_interval_ms"):  # the script's own defaults
        env.pop(inherited, None)
    log = tmp_path / f"{name}.log"
    with open(log, "w") as out:
        script = subprocess.Popen(["bash", f"scripts/quickstart/{name}.sh"], cwd=ROOT, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        try:
            script.wait(timeout=600)
        finally:
            if script.poll() is None:
                os.killpg(script.pid, signal.SIGTERM)
                script.wait(timeout=60)
            leftovers = processes_naming(temp_dir) + processes_naming(str(tmp_path))
            for pid in leftovers:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            shutil.rmtree(temp_dir, ignore_errors=True)
    output = log.read_text(errors="replace")
    assert script.returncode == 0, output[-6000:]
    assert not leftovers, f"the script left processes running: {leftovers}"
    return subprocess.CompletedProcess(script.args, script.returncode, output, "")


def predicted_ids(out: Path) -> dict[str, list[int]]:
    """The example ids of each approximation's predictions, sorted (a repeat would show twice)."""
    ids: dict[str, list[int]] = {}
    for line in (out / "predictions.jsonl").read_text().splitlines():
        row = json.loads(line)
        ids.setdefault(row["combo"], []).append(row["example_id"])
    return {combo: sorted(found) for combo, found in ids.items()}


def first_forward_done_at(out: Path) -> float:
    """Wall-clock time at which the run's first encrypted forward ended (the client's records)."""
    return min(json.loads(line)["forward_done_at"] for line in (out / "predictions.jsonl").read_text().splitlines())


def scrape_interval_s(prometheus_dir: Path) -> float:
    """The scrape interval of the Prometheus config ``mpcformer.jobs.monitor`` wrote, in seconds."""
    interval = yaml.safe_load((prometheus_dir / "prometheus.yml").read_text())["global"]["scrape_interval"]
    assert interval.endswith("s") and interval[:-1].isdigit(), f"unexpected scrape interval {interval}"
    return float(interval[:-1])


def first_sample_at(prometheus_dir: Path, metric: str, tmp_path: Path) -> float:
    """Timestamp of the earliest sample of ``metric`` in the TSDB of a Prometheus that has stopped:
    a Prometheus that scrapes nothing reopens it and answers a range query (15 minutes back: more
    than the quick start's 10-minute limit)."""
    config = tmp_path / "replay.yml"
    config.write_text("global: {}\n")
    with PrometheusServer(config, prometheus_dir / "tsdb") as server:
        series = server.query(f"{metric}[15m]")
    assert series, f"Prometheus stored no sample of {metric}"
    return min(float(s["values"][0][0]) for s in series)


@pytest.mark.slow
def test_ray_jobs_quick_start_runs_resumes_and_stops_its_head(tmp_path):
    ran = run_quick_start("ray-jobs", tmp_path, "RAY_PORT", "DASHBOARD_PORT")
    out = tmp_path / "out"
    assert predicted_ids(out) == {"quad+2quad": list(range(8))}  # every example once, across both submissions
    assert json.loads((out / "summary.json").read_text())["complete"]
    assert "already finished" in ran.stdout  # the second submission resumed


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs the Debian package prometheus")
def test_observability_quick_start_finds_the_runs_rounds_in_prometheus(tmp_path):
    ran = run_quick_start("observability", tmp_path, "RAY_PORT", "METRICS_PORT", "PROM_PORT")
    answer = json.loads(ran.stdout.split("prometheus: ", 1)[1].splitlines()[0])
    rounds = {r["metric"]["approx"]: float(r["value"][1]) for r in answer["data"]["result"]}
    summary = json.loads((tmp_path / "out" / "infer" / "summary.json").read_text())
    assert summary["complete"]
    assert predicted_ids(tmp_path / "out" / "infer") == {"exact": list(range(8)), "quad+2quad": list(range(8))}
    # Prometheus counted what the job's summary reports, for each approximation
    per_run = {c: s["rounds_per_batch"] * s["batches"] for c, s in summary["combos"].items()}
    assert rounds["exact"] > rounds["quad+2quad"] > 0
    assert rounds["exact"] / rounds["quad+2quad"] == pytest.approx(per_run["exact"] / per_run["quad+2quad"])
    # ...and had the first forward's rounds within one scrape interval: samples are stamped at scrape
    # times, so allow a second interval for a loaded machine
    prometheus_dir = tmp_path / "out" / "prometheus"
    interval_s = scrape_interval_s(prometheus_dir)
    lag_s = first_sample_at(prometheus_dir, "ray_mpcformer_comm_rounds_total", tmp_path) - \
        first_forward_done_at(tmp_path / "out" / "infer")
    print(f"first forward to first Prometheus sample: {lag_s:.1f}s ({lag_s / interval_s:.2f} scrape intervals)")
    assert lag_s <= 2 * interval_s, f"the first forward's rounds reached Prometheus after {lag_s:.1f}s"
