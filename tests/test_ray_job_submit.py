"""`ray job submit` of the infer job to a real head (`ray start --head`) with token auth on.

The head is :class:`ray_support.LocalRayHead`: its own ports, temp dir and token, stopped by PID.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytest.importorskip("ray")

from mpcformer.data import write_synthetic_sentiment  # noqa: E402
from ray_support import LocalRayHead  # noqa: E402

pytestmark = pytest.mark.timeout(420)

RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture(scope="module")
def ray_head():
    """A token-authenticated head on private ports; yields (job server URL, env with the token)."""
    head = LocalRayHead(num_cpus=2)
    env = {**head.env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    head.env = env
    with head:
        wait_for_job_server(head.job_server, env, head)
        yield head.job_server, env


def ray_cli(env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([RAY, *args], env=env, capture_output=True, text=True, timeout=timeout)


def wait_for_job_server(url: str, env: dict, head: LocalRayHead, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ray_cli(env, "job", "list", "--address", url, timeout=60).returncode == 0:
            return
        time.sleep(2)
    raise RuntimeError(f"the job server at {url} did not come up within {timeout_s:.0f}s:\n{head._log_tail()}")


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
