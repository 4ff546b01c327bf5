"""Ray clusters for tests, in one place.

- :func:`embedded_ray`: ``ray.init(address="local")`` in this process (most tests), shut down after.
- :class:`LocalRayHead`: a head of its own (`ray start --head --block`) with its own ports, temp dir
  and token, for drivers that join a cluster (``ray job submit``, Prometheus scraping). Stopped by
  PID: SIGTERM to the blocking `ray start` (which takes its daemons down), then any process still
  naming this head's private temp dir is killed by its PID.
- :func:`processes_naming`: processes whose command line names a marker (a temp dir), for clean-up.

Multi-node layouts use ``ray.cluster_utils.Cluster`` directly (tests/test_party_group.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from mpcformer.observability.prometheus import free_ports, ray_sd_file

__all__ = ["LocalRayHead", "embedded_ray", "processes_naming"]

RAY_BIN = Path(sys.executable).with_name("ray")
# every port `ray start --head` would otherwise pick itself or take from fixed defaults
RAY_PORT_FLAGS = ("--port", "--metrics-export-port", "--dashboard-port", "--dashboard-agent-listen-port",
                  "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--ray-client-server-port",
                  "--node-manager-port", "--object-manager-port")


@contextlib.contextmanager
def embedded_ray(num_cpus: int, runtime_env: dict[str, Any] | None = None, **init_args: Any) -> Iterator[None]:
    """An embedded local cluster for the duration of the block (no dashboard, quiet workers)."""
    import ray

    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             runtime_env=runtime_env, **init_args)
    try:
        yield
    finally:
        ray.shutdown()


def processes_naming(marker: str) -> list[int]:
    """PIDs of other processes whose command line contains ``marker``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


class LocalRayHead:
    """A one-node Ray cluster for tests; ``address`` for drivers, ``sd_file`` for Prometheus."""

    def __init__(self, num_cpus: int = 2, report_interval_ms: int = 1000):
        self.temp_dir = Path(tempfile.mkdtemp(prefix="mpcf-ray-", dir="/tmp"))  # short: Ray's socket paths
        # every port this head uses, chosen at once so that no two coincide
        *ray_ports, dashboard_metric_port, autoscaler_metric_port = free_ports(len(RAY_PORT_FLAGS) + 2)
        self.ports = dict(zip(RAY_PORT_FLAGS, ray_ports, strict=True))
        self.num_cpus = num_cpus
        self.report_interval_ms = report_interval_ms
        self.env = {
            **os.environ,
            "RAY_metrics_report_interval_ms": str(report_interval_ms),  # export custom metrics every second
            "DASHBOARD_METRIC_PORT": str(dashboard_metric_port),  # defaults are fixed ports shared by every local cluster
            "AUTOSCALER_METRIC_PORT": str(autoscaler_metric_port),
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "token",  # drivers of a token-auth cluster (the default) must say so
            # its own token: ~/.ray/auth_token exists only once some earlier `ray.init` wrote it
            "RAY_AUTH_TOKEN": uuid.uuid4().hex + uuid.uuid4().hex,
        }
        self.process: subprocess.Popen | None = None

    @property
    def gcs_port(self) -> int:
        return self.ports["--port"]

    @property
    def metrics_port(self) -> int:
        return self.ports["--metrics-export-port"]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def job_server(self) -> str:
        """URL of the head's job server (`ray job submit --address`)."""
        return f"http://127.0.0.1:{self.ports['--dashboard-port']}"

    @property
    def sd_file(self) -> Path:
        return ray_sd_file(self.temp_dir)

    @property
    def log_path(self) -> Path:
        return self.temp_dir.with_suffix(".log")

    def start(self, timeout_s: float = 90.0) -> "LocalRayHead":
        command = [str(RAY_BIN), "start", "--head", "--block", f"--temp-dir={self.temp_dir}",
                   f"--num-cpus={self.num_cpus}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                   "--disable-usage-stats", *(f"{flag}={port}" for flag, port in self.ports.items()),
                   # every process of the cluster (drivers included) exports every report interval; the
                   # agent drops gauges not refreshed within two intervals
                   "--system-config", json.dumps({"metrics_report_interval_ms": self.report_interval_ms})]
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(command, env=self.env, stdout=log_file, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.process.returncode}:\n{self._log_tail()}")
            if self.sd_file.exists() and f":{self.metrics_port}" in self.sd_file.read_text():
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"Ray head did not list its metrics port in {self.sd_file} within {timeout_s:.0f}s:\n"
                           f"{self._log_tail()}")

    def _log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def _leftover_pids(self) -> list[int]:
        return processes_naming(str(self.temp_dir))

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        for pid in self._leftover_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> "LocalRayHead":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
