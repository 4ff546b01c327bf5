"""`ray job submit` of the infer job to a real head (`ray start --head`) with token auth on.

The head gets its own ports and temp dir and runs as `ray start --block`, a child process of this
test: SIGTERM makes it stop everything it started; any process still holding the temp dir after
that is killed by PID.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

pytest.importorskip("ray")

from mpcformer.data import write_synthetic_sentiment  # noqa: E402
from mpcformer.observability.prometheus import free_ports  # noqa: E402

pytestmark = pytest.mark.timeout(420)

VENV_BIN = Path(sys.executable).parent
RAY = str(VENV_BIN / "ray")


def free_port_range(size: int, avoid: set[int]) -> int:
    """First port of ``size`` consecutive ports that are free now and not in ``avoid`` (for Ray's worker ports)."""
    for base in range(21000, 60000, 997):
        if avoid & set(range(base, base + size)):
            continue
        try:
            probes = []
            for port in range(base, base + size):
                sock = socket.socket()
                probes.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in probes:
                sock.close()
    raise RuntimeError("no free port range")


def pids_using(marker: str) -> list[int]:
    """Processes whose command line mentions ``marker`` (our head's unique temp dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.fixture(scope="module")
def ray_head():
    """A token-authenticated head on private ports; yields (dashboard URL, env with the token)."""
    temp_dir = tempfile.mkdtemp(prefix="mpcf-rj-", dir="/tmp")  # short: Ray's socket paths must fit
    gcs, node_manager, object_manager, client, dashboard, agent_grpc, agent_http, metrics, runtime_env = free_ports(9)
    workers = free_port_range(64, avoid={gcs, node_manager, object_manager, client, dashboard, agent_grpc,
                                         agent_http, metrics, runtime_env})
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": uuid.uuid4().hex + uuid.uuid4().hex,
        "HF_HUB_OFFLINE": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)
    command = [
        RAY, "start", "--head", "--block", "--temp-dir", temp_dir, "--num-cpus", "2",
        "--port", str(gcs), "--node-manager-port", str(node_manager), "--object-manager-port", str(object_manager),
        "--ray-client-server-port", str(client), "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
        "--dashboard-port", str(dashboard), "--dashboard-agent-grpc-port", str(agent_grpc),
        "--dashboard-agent-listen-port", str(agent_http), "--metrics-export-port", str(metrics),
        "--runtime-env-agent-port", str(runtime_env), "--min-worker-port", str(workers),
        "--max-worker-port", str(workers + 63), "--disable-usage-stats",
    ]
    log = open(Path(temp_dir) / "ray-start.log", "w")
    head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dashboard}"
    try:
        wait_for_job_server(url, env, head, Path(temp_dir) / "ray-start.log")
        yield url, env
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops what it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait(timeout=10)
        deadline = time.monotonic() + 20
        while (left := pids_using(temp_dir)) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in pids_using(temp_dir):  # anything that outlived the head
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"processes outlived the head: {left}"


def ray_cli(env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([RAY, *args], env=env, capture_output=True, text=True, timeout=timeout)


def wait_for_job_server(url: str, env: dict, head: subprocess.Popen, log: Path, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise RuntimeError(f"ray start exited with {head.returncode}:\n{log.read_text()[-3000:]}")
        if ray_cli(env, "job", "list", "--address", url, timeout=60).returncode == 0:
            return
        time.sleep(2)
    raise RuntimeError(f"the job server at {url} did not come up within {timeout_s:.0f}s:\n{log.read_text()[-3000:]}")


def wait_for_job(url: str, env: dict, job_id: str, timeout_s: float = 300) -> str:
    deadline = time.monotonic() + timeout_s
    status = ""
    while time.monotonic() < deadline:
        status = ray_cli(env, "job", "status", "--address", url, job_id).stdout
        for final in ("SUCCEEDED", "FAILED", "STOPPED"):  # printed as "Job '<id>' succeeded"
            if f"' {final.lower()}" in status or f": {final}" in status:
                return final
        time.sleep(3)
    return f"still running after {timeout_s:.0f}s: {status}"


def test_infer_job_submitted_with_token_auth_succeeds(ray_head, tmp_path):
    url, env = ray_head
    data = write_synthetic_sentiment(tmp_path / "data", num_train=4, num_dev=8, seed=5)
    out = tmp_path / "out"

    wrong_token = {**env, "RAY_AUTH_TOKEN": "not-the-token"}
    assert ray_cli(wrong_token, "job", "list", "--address", url, timeout=60).returncode != 0  # auth is on

    job_id = f"mpcformer-infer-{uuid.uuid4().hex[:8]}"
    submitted = ray_cli(
        env, "job", "submit", "--address", url, "--submission-id", job_id, "--no-wait", "--",
        "python", "-m", "mpcformer.jobs.infer", "--config", "infer-tiny", "--data", str(data), "--out", str(out),
        "--limit", "4", "--batch-size", "2", "--max-length", "16", "--no-progress",
    )
    assert submitted.returncode == 0, submitted.stderr + submitted.stdout
    final = wait_for_job(url, env, job_id)
    logs = ray_cli(env, "job", "logs", "--address", url, job_id).stdout
    assert final == "SUCCEEDED", logs[-4000:]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["combos"]["quad+2quad"]["examples"] == 4
    assert summary["combos"]["quad+2quad"]["agreement_with_plaintext"] == 1.0
    ids = sorted(json.loads(line)["example_id"] for line in (out / "predictions.jsonl").read_text().splitlines())
    assert ids == [0, 1, 2, 3]
    assert "wrote" in logs
