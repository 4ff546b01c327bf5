"""The prepared GPU check (scripts/device/) must work the first time it meets a lent machine:
the wheel slimming, and a rehearsal of gpu_bench.sh on the CPU with the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts" / "device"))
from slim_wheel import slim  # noqa: E402


def test_slim_wheel_drops_folders_and_their_record_lines(tmp_path):
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    members = {
        "pkg/__init__.py": "x = 1\n", "pkg/jars/big.jar": "J" * 5000, "pkg/web/app.js": "W" * 3000,
        "pkg/core.py": "y = 2\n",
    }
    record = "".join(f"{name},sha256=abc,{len(body)}\n" for name, body in members.items()) + "pkg-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, body in members.items():
            zf.writestr(name, body)
        zf.writestr("pkg-1.0.dist-info/RECORD", record)
    before, after = slim(wheel, ["pkg/jars/", "pkg/web/"])
    assert after < before
    with zipfile.ZipFile(wheel) as zf:
        assert sorted(zf.namelist()) == ["pkg-1.0.dist-info/RECORD", "pkg/__init__.py", "pkg/core.py"]
        lines = zf.read("pkg-1.0.dist-info/RECORD").decode().splitlines()
    assert [line.split(",")[0] for line in lines] == ["pkg/__init__.py", "pkg/core.py", "pkg-1.0.dist-info/RECORD"]


@pytest.mark.timeout(600)
def test_gpu_bench_script_rehearses_on_the_cpu(tmp_path):
    out = tmp_path / "out"
    env = {
        **os.environ, "OUT": str(out), "PY": sys.executable, "SKIP_INSTALL": "1", "DEVICE": "cpu",
        "MODEL": "tiny", "BUDGET_S": "1",  # leaves no time for length 512: that step must say so
    }
    done = subprocess.run(
        ["bash", "scripts/device/gpu_bench.sh"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=540
    )
    log = (out / "log.txt").read_text()
    assert done.returncode == 0, log[-3000:]
    assert "CUDA tests exit 0" in log and "skipped length 512" in log and log.rstrip().endswith("done")
    report = json.loads((out / "bench-128" / "bench.json").read_text())
    assert [c["approx"] for c in report["combinations"]] == ["exact", "quad+2quad"]
    assert "quad+2quad" in log.split("bench tiny len 128")[1]  # the summary lines reached the log
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(len(p.relative_to(out).parts) <= 3 for p in files)  # the device tool's limits
