"""A real Prometheus scraping a real local Ray cluster that ran the real encrypted inference job
(``run_infer``, the ``tiny`` preset, exact and quad+2quad on 8 SST-2 dev sentences) and a small
sweep (tests/obs_workload.py): every PromQL expression of every dashboard panel returns data, the
rounds and bytes per sequence equal the job's own summary (its parties' cost ledgers), and
quad+2quad costs fewer rounds and bytes than exact.

Also: ``python -m mpcformer.jobs.monitor`` finds targets through a Ray discovery file, prints its
URL and stops Prometheus on Ctrl-C.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mpcformer.observability.dashboards import dashboard_files, load_dashboard, panel_queries, substitute, variables
from mpcformer.observability.prometheus import PrometheusAPI, PrometheusServer, free_ports, write_config

sys.path.insert(0, str(Path(__file__).parent))
from ray_support import LocalRayHead  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None,
                                reason="no prometheus binary: run `bash scripts/install-system.sh` (Debian package)")

ROOT = Path(__file__).resolve().parents[1]
WORKLOAD = Path(__file__).with_name("obs_workload.py")
JOB, SWEEP, COMBOS, BATCHES, SEQUENCES_PER_BATCH = "obs-infer", "obs-sweep", ("exact", "quad+2quad"), 2, 4
SST2 = ROOT.parent / "shared" / "data" / "sst2"
#: Dashboard -> value of its `job` variable in this run.
JOB_OF = {"mpcformer-private-inference": JOB, "mpcformer-distillation-sweeps": SWEEP}
#: Windows long enough to hold the whole run (Grafana would pick them from the time range).
WINDOWS = {"__rate_interval": "5m", "__range": "10m"}


def _wait_for_line(path: Path, prefix: str, process: subprocess.Popen, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith(prefix):
                return line
        if process.poll() is not None:
            break
        time.sleep(0.5)
    raise AssertionError(f"no '{prefix}' line from {process.args[:3]} (exit {process.poll()}):\n"
                         + "\n".join(path.read_text(errors="replace").splitlines()[-30:]))


def _all_queries() -> list[tuple[str, object]]:
    """(expression with variables substituted, PanelQuery) for every panel target of every dashboard."""
    out = []
    for path in dashboard_files(ROOT / "dashboards"):
        for query in panel_queries(load_dashboard(path)):
            values = {"job": JOB_OF[query.dashboard], "approx": ".*", **WINDOWS}
            out.append((substitute(query.expr, values), query))
    return out


def _finite(result: list[dict]) -> list[float]:
    return [float(r["value"][1]) for r in result if math.isfinite(float(r["value"][1]))]


@pytest.fixture(scope="module")
def scraped(tmp_path_factory):
    """Ray head + Prometheus (1 s scrapes) + the workload (real inference job, sweep); yields
    (prometheus, the inference job's summary)."""
    if not (SST2 / "dev.tsv").is_file():
        pytest.skip(f"SST-2 data not found at {SST2} (../shared is absent on this machine)")
    tmp = tmp_path_factory.mktemp("prom-scrape")
    head = LocalRayHead(num_cpus=2).start()
    prom = workload = None
    try:
        config = write_config(tmp / "prometheus.yml", ray_sd_files=[head.sd_file], scrape_interval="1s", loopback=True)
        prom = PrometheusServer(config, tmp / "tsdb").start()
        log_path = tmp / "workload.log"
        with open(log_path, "w") as log_file:
            workload = subprocess.Popen(
                [sys.executable, str(WORKLOAD), "--address", head.address, "--job", JOB, "--sweep-job", SWEEP,
                 "--approx", ",".join(COMBOS), "--data", str(SST2), "--limit", str(BATCHES * SEQUENCES_PER_BATCH),
                 "--batch-size", str(SEQUENCES_PER_BATCH), "--out", str(tmp / "infer")],
                env=head.env, stdin=subprocess.PIPE, stdout=log_file, stderr=subprocess.STDOUT, text=True,
            )
        done = _wait_for_line(log_path, "WORKLOAD DONE ", workload, timeout_s=400)
        summary = json.loads(done.removeprefix("WORKLOAD DONE "))
        _wait_until_scraped(prom, summary, timeout_s=180)  # the tests below say what never arrived
        yield prom, summary
    finally:
        if workload is not None:
            _end(workload)
        if prom is not None:
            prom.stop()
        head.stop()


def _wait_until_scraped(prom: PrometheusServer, summary: dict, timeout_s: float) -> None:
    """Until every panel query has data and both parties' last forwards are scraped, or the deadline.

    Each party process exports its metrics on its own schedule, so a scrape can hold party 0's last
    forward and not yet party 1's: wait until both count every batch of every combo.
    """
    expected = {(combo, rank): figures["batches"] for combo, figures in summary["combos"].items() for rank in ("0", "1")}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        counted = {(r["metric"]["approx"], r["metric"]["rank"]): float(r["value"][1])
                   for r in prom.query(f'sum by (approx, rank) (ray_mpcformer_forwards_total{{job_name="{JOB}"}})')}
        if counted == expected and _per_sequence_matches(prom, summary) and all(prom.query(expr) for expr, _ in _all_queries()):
            return
        time.sleep(2)


def _per_sequence_matches(prom: PrometheusServer, summary: dict) -> bool:
    """Whether the rounds and bytes panels already show the summary's figures: a party exports its
    counters on its own schedule, so the forward count can be scraped before the last bytes are."""
    for title, key in (("Rounds per sequence", "rounds_per_sequence"), ("Bytes per sequence", "bytes_per_sequence")):
        shown = {r["metric"]["approx"]: float(r["value"][1]) for r in prom.query(_panel_by_title(title))}
        for combo, figures in summary["combos"].items():
            if combo not in shown or not math.isclose(shown[combo], figures[key], rel_tol=1e-9):
                return False
    return True


def _end(process: subprocess.Popen) -> None:
    try:
        process.stdin.close()
        process.wait(timeout=60)
    except (subprocess.TimeoutExpired, OSError):
        process.kill()
        process.wait(timeout=10)


@pytest.mark.timeout(480)
def test_every_dashboard_query_returns_data(scraped):
    prom = scraped[0]
    empty, nan_only = [], []
    for expr, query in _all_queries():
        result = prom.query(expr)
        if not result:
            empty.append(f"{query.dashboard} #{query.panel_id} {query.panel_title} [{query.ref_id}]: {expr}")
        elif not _finite(result):
            nan_only.append(f"{query.dashboard} #{query.panel_id} {query.panel_title} [{query.ref_id}]")
    assert not empty, "queries without data:\n" + "\n".join(empty)
    assert not nan_only, "queries with only NaN values:\n" + "\n".join(nan_only)


@pytest.mark.timeout(480)
def test_template_variables_list_the_run(scraped):
    prom = scraped[0]
    for path in dashboard_files(ROOT / "dashboards"):
        dashboard = load_dashboard(path)
        for variable in variables(dashboard):
            if variable["type"] != "query":
                continue
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"]["query"])
            assert match, f"{path.name}: variable {variable['name']} is not a label_values() query"
            selector, label = substitute(match.group(1), {"job": JOB_OF[dashboard["uid"]]}), match.group(2)
            values = {r["metric"][label] for r in prom.query(selector)}
            expected = {JOB_OF[dashboard["uid"]]} if variable["name"] == "job" else set(COMBOS)
            assert expected <= values, f"{path.name} ${variable['name']}: {values}"


def _panel_by_title(title: str, job: str = JOB) -> str:
    for path in dashboard_files(ROOT / "dashboards"):
        for query in panel_queries(load_dashboard(path)):
            if query.panel_title == title:
                return substitute(query.expr, {"job": job, "approx": ".*", **WINDOWS})
    raise KeyError(title)


@pytest.mark.timeout(480)
def test_rounds_and_bytes_per_sequence_match_the_job_summary_and_favour_quad_2quad(scraped):
    prom, summary = scraped
    assert summary["complete"] and set(summary["combos"]) == set(COMBOS), summary
    measured = {}
    for title, key in (("Rounds per sequence", "rounds"), ("Bytes per sequence", "bytes")):
        by_approx = {r["metric"]["approx"]: float(r["value"][1]) for r in prom.query(_panel_by_title(title))}
        assert set(by_approx) == set(COMBOS), (title, by_approx)
        measured[key] = by_approx
    for combo in COMBOS:  # the job's summary: rounds from the client's ledger, bytes from both parties'
        figures = summary["combos"][combo]
        assert figures["examples"] == BATCHES * SEQUENCES_PER_BATCH and figures["batches"] == BATCHES, figures
        assert measured["rounds"][combo] == pytest.approx(figures["rounds_per_sequence"], rel=1e-9), combo
        assert measured["bytes"][combo] == pytest.approx(figures["bytes_per_sequence"], rel=1e-9), combo
    for key in ("rounds", "bytes"):
        assert measured[key]["quad+2quad"] < measured[key]["exact"], (key, measured[key])
    print("per sequence:", json.dumps(measured))


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_monitor_job_scrapes_through_a_discovery_file_and_stops_on_ctrl_c_or_sigterm(tmp_path, stop_signal):
    from mpcformer import observability as obs

    job = f"monitor-test-{stop_signal.name}"  # the registry is per process: one series per case
    obs.configure("prometheus")
    try:
        obs.record_forward({"total": {"time_s": 0.2, "comm_time_s": 0.1, "rounds": 3.0, "bytes": 96.0},
                            "by_category": {"linear": {"time_s": 0.2, "comm_time_s": 0.1, "rounds": 3.0, "bytes": 96.0}}},
                           approx="exact", model="m", job=job, rank=0)
        port = obs.start_http_server(0)
    finally:
        obs.configure("auto")
    ray_dir = tmp_path / "ray"
    ray_dir.mkdir()
    # Ray names nodes by IP; 127.0.0.2 (loopback, nothing listens there) proves the rewrite to 127.0.0.1.
    (ray_dir / "prom_metrics_service_discovery.json").write_text(
        json.dumps([{"labels": {"job": "ray"}, "targets": [f"127.0.0.2:{port}"]}]))
    log_path = tmp_path / "monitor.log"
    with open(log_path, "w") as log_file:
        monitor = subprocess.Popen(
            [sys.executable, "-m", "mpcformer.jobs.monitor", "--ray-temp-dir", str(ray_dir), "--port", "0",
             "--data-dir", str(tmp_path / "prom"), "--scrape-interval", "1s"],
            stdout=log_file, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            # As when a shell starts it in the background (`monitor &`): SIGINT arrives ignored.
            preexec_fn=_ignore_sigint,
        )
    prometheus_pid = None
    try:
        line = _wait_for_line(log_path, "Prometheus: http://127.0.0.1:", monitor, timeout_s=60)
        url = line.split()[1]
        prometheus_pid = int(re.search(r"pid (\d+)", line).group(1))
        prom = PrometheusAPI(url)
        deadline, result = time.monotonic() + 30, []
        while time.monotonic() < deadline and not result:
            result = prom.query(f'ray_mpcformer_comm_rounds_total{{job_name="{job}"}}')
            time.sleep(1)
        assert result and float(result[0]["value"][1]) == 3.0
        assert result[0]["metric"]["instance"] == f"127.0.0.1:{port}"
    finally:
        monitor.send_signal(stop_signal)
        try:
            code = monitor.wait(timeout=30)
        except subprocess.TimeoutExpired:  # never leave the monitor and its Prometheus behind a failed test
            monitor.kill()
            if prometheus_pid is not None:
                os.kill(prometheus_pid, signal.SIGKILL)
            raise
    cmdline = Path(f"/proc/{prometheus_pid}/cmdline")
    outlived = cmdline.exists() and b"prometheus" in cmdline.read_bytes()
    if outlived:
        os.kill(prometheus_pid, signal.SIGKILL)  # clean up before failing
    assert code == 0, log_path.read_text()
    assert "Prometheus stopped." in log_path.read_text()
    assert not outlived, "Prometheus outlived the monitor"


@pytest.mark.timeout(120)
def test_a_node_added_to_a_linked_discovery_file_is_found_within_a_few_scrape_intervals(tmp_path):
    """Ray's discovery file is a link into its session folder, and the head rewrites the file there
    (the link's folder sees no event). Prometheus must still find a new node's target by the next
    refresh (one scrape interval), not after file SD's 5-minute default."""
    session = tmp_path / "ray" / "session_1"
    session.mkdir(parents=True)
    (session / "prom_metrics_service_discovery.json").write_text("[]")
    (tmp_path / "ray" / "prom_metrics_service_discovery.json").symlink_to(session / "prom_metrics_service_discovery.json")
    config = write_config(tmp_path / "prometheus.yml", ray_sd_files=[tmp_path / "ray" / "prom_metrics_service_discovery.json"],
                          scrape_interval="1s")
    with PrometheusServer(config, tmp_path / "tsdb") as prom:
        time.sleep(2)  # Prometheus has read the empty file
        target = f"127.0.0.1:{free_ports(1)[0]}"
        new = session / "new.json"  # the head writes a new file and renames it over the old one
        new.write_text(json.dumps([{"labels": {"job": "ray"}, "targets": [target]}]))
        new.replace(session / "prom_metrics_service_discovery.json")
        deadline, found = time.monotonic() + 30, []  # 30 scrape intervals; the default refresh is 300 s
        while time.monotonic() < deadline and not found:
            found = [t for t in prom.api.active_targets() if t["labels"].get("instance") == target]
            time.sleep(0.5)
    assert found, f"Prometheus did not find {target} in the linked discovery file within 30 s"
