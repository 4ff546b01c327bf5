"""Run a real Prometheus server against a Ray cluster (``python -m mpcformer.jobs.monitor``, tests).

Prometheus finds Ray's nodes through Ray's service-discovery file
``<ray temp dir>/prom_metrics_service_discovery.json`` (written by the dashboard on the head node;
it lists every node's metrics export port). Standalone exporters (the prometheus_client backend)
and Pushgateways are added as static targets.

    config = write_config("runs/prom/prometheus.yml", ray_sd_files=[ray_sd_file("/tmp/ray")])
    with PrometheusServer(config, data_dir="runs/prom/data") as prom:
        prom.query('sum by (approx) (ray_mpcformer_comm_rounds_total)')
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Sequence

import yaml

from mpcformer.errors import UserError

__all__ = ["PrometheusServer", "PrometheusAPI", "PrometheusError", "write_config", "ray_sd_file", "find_prometheus", "free_port"]

log = logging.getLogger(__name__)

SD_FILE_NAME = "prom_metrics_service_discovery.json"


class PrometheusError(RuntimeError):
    """Prometheus did not start, stopped, or rejected a query; the message says which and why."""


def find_prometheus() -> str:
    """Path of the ``prometheus`` binary, or a :class:`UserError` saying how to install it."""
    found = shutil.which("prometheus")
    if found is None:
        raise UserError("the 'prometheus' binary is not installed: run `bash scripts/install-system.sh` "
                        "(Debian package 'prometheus') or put it on PATH")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that are free right now.

    All sockets stay bound until every port is chosen: separate ``free_port()`` calls can return
    the same port twice (nothing holds the first), which Ray rejects when given both."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def ray_sd_file(ray_temp_dir: str | Path = "/tmp/ray") -> Path:
    """Ray's Prometheus service-discovery file for the cluster whose head uses ``ray_temp_dir``."""
    return Path(ray_temp_dir) / SD_FILE_NAME


def _loopback_relabel() -> list[dict[str, Any]]:
    # Ray's discovery file names the node by its IP; on a single-node local cluster the same ports
    # answer on 127.0.0.1, which keeps all scraping on loopback.
    return [{"source_labels": ["__address__"], "regex": r".*:(\d+)", "target_label": "__address__",
             "replacement": "127.0.0.1:$1"}]


def write_config(
    path: str | Path,
    *,
    ray_sd_files: Sequence[str | Path] = (),
    static_targets: Sequence[str] = (),
    pushgateways: Sequence[str] = (),
    scrape_interval: str = "5s",
    loopback: bool = False,
) -> Path:
    """Write a Prometheus config scraping Ray (file SD), exporters and Pushgateways; return its path.

    ``loopback`` rewrites every Ray target to ``127.0.0.1:<port>`` (single-node local clusters).
    """
    scrape_configs: list[dict[str, Any]] = []
    if ray_sd_files:
        # Ray's discovery file is a link into the session folder, so Prometheus's file watch misses its
        # updates; re-reading it every scrape interval finds a new node's target by the next scrape.
        sd_config = {"files": [str(f) for f in ray_sd_files], "refresh_interval": scrape_interval}
        ray_job: dict[str, Any] = {"job_name": "ray", "file_sd_configs": [sd_config]}
        if loopback:
            ray_job["relabel_configs"] = _loopback_relabel()
        scrape_configs.append(ray_job)
    if static_targets:
        scrape_configs.append({"job_name": "mpcformer", "static_configs": [{"targets": list(static_targets)}]})
    if pushgateways:
        scrape_configs.append({"job_name": "pushgateway", "honor_labels": True,
                               "static_configs": [{"targets": list(pushgateways)}]})
    config = {"global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
              "scrape_configs": scrape_configs}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class PrometheusServer:
    """One ``prometheus`` process on ``127.0.0.1:port`` with its own data dir; stopped by PID."""

    def __init__(self, config_path: str | Path, data_dir: str | Path, port: int | None = None,
                 retention: str = "1d", binary: str | None = None):
        self.config_path, self.data_dir = Path(config_path), Path(data_dir)
        self.port = port or free_port()
        self.retention = retention
        self.binary = binary or find_prometheus()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "prometheus.log"

    def start(self, timeout_s: float = 30.0) -> "PrometheusServer":
        """Start Prometheus and wait until it answers ``/-/ready``."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            self.binary, f"--config.file={self.config_path}", f"--storage.tsdb.path={self.data_dir}",
            f"--web.listen-address=127.0.0.1:{self.port}", f"--storage.tsdb.retention.time={self.retention}",
        ]
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.info("prometheus pid %d on %s (log %s)", self.process.pid, self.url, self.log_path)
        self._wait_ready(timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise PrometheusError(f"prometheus exited with code {self.process.returncode}; "
                                      f"last log lines:\n{self._log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        raise PrometheusError(f"prometheus was not ready on {self.url} within {timeout_s:.0f}s; log:\n{self._log_tail()}")

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 10.0) -> None:
        """Terminate the process (SIGTERM, then SIGKILL after ``timeout_s``). Safe to call twice."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("prometheus pid %d ignored SIGTERM for %.0fs; killing it", self.process.pid, timeout_s)
            self.process.kill()
            self.process.wait(timeout=timeout_s)

    def __enter__(self) -> "PrometheusServer":
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def api(self) -> "PrometheusAPI":
        return PrometheusAPI(self.url)

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Evaluate an instant PromQL query now (see :meth:`PrometheusAPI.query`)."""
        return self.api.query(expr)


class PrometheusAPI:
    """The HTTP API of a running Prometheus at ``url`` (``http://host:port``)."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        url = f"{self.url}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as err:
            body = json.loads(err.read() or b"{}")
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params or ''}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Evaluate an instant PromQL query now; the ``result`` list (``metric`` + ``value``)."""
        data = self._get("/api/v1/query", {"query": expr})
        result = data["result"]
        return result if isinstance(result, list) else [{"metric": {}, "value": result}]

    def active_targets(self) -> list[dict[str, Any]]:
        """Scrape targets Prometheus knows now, with ``health`` and ``lastError``."""
        return self._get("/api/v1/targets")["activeTargets"]
