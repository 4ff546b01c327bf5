"""monitor: run a real Prometheus that scrapes a local Ray cluster; prints its URL, stops on Ctrl-C or SIGTERM.

    ray start --head --metrics-export-port=8080      # or any running local cluster
    python -m mpcformer.jobs.monitor                 # Prometheus on http://127.0.0.1:9090

Prometheus finds the Ray nodes through Ray's service-discovery file in the cluster's temp dir
(``--ray-temp-dir``, default /tmp/ray). Point Grafana at the printed URL and load dashboards/.
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
from pathlib import Path

from mpcformer.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ray-temp-dir", default="/tmp/ray",
                        help="temp dir of the Ray head (`ray start --temp-dir`); default /tmp/ray")
    parser.add_argument("--port", type=int, default=9090, help="Prometheus port on 127.0.0.1 (0 = any free port)")
    parser.add_argument("--data-dir", default="runs/prometheus", help="Prometheus config and TSDB folder")
    parser.add_argument("--scrape-interval", default="5s", help="Prometheus scrape interval, e.g. 5s")
    parser.add_argument("--target", action="append", default=[], metavar="HOST:PORT",
                        help="also scrape a standalone mpcformer exporter (prometheus_client backend); repeatable")
    parser.add_argument("--pushgateway", action="append", default=[], metavar="HOST:PORT",
                        help="also scrape a Pushgateway (honor_labels); repeatable")
    parser.add_argument("--node-ips", action="store_true",
                        help="scrape Ray nodes at the IPs in Ray's discovery file (multi-node) instead of 127.0.0.1")
    parser.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                        help="stop after this many seconds instead of waiting for Ctrl-C")


def run(args: argparse.Namespace) -> int:
    from mpcformer.observability.prometheus import (
        PrometheusError, PrometheusServer, free_port, ray_sd_file, write_config,
    )

    if args.port < 0 or args.port > 65535:
        raise UserError(f"--port {args.port} is not a TCP port (0..65535)")
    sd_file = ray_sd_file(args.ray_temp_dir)
    if not Path(args.ray_temp_dir).is_dir():
        raise UserError(f"no Ray temp dir at {args.ray_temp_dir}: start Ray first (`ray start --head`) "
                        "or pass the cluster's --ray-temp-dir")
    data_dir = Path(args.data_dir)
    config = write_config(
        data_dir / "prometheus.yml", ray_sd_files=[sd_file], static_targets=args.target,
        pushgateways=args.pushgateway, scrape_interval=args.scrape_interval, loopback=not args.node_ips,
    )
    server = PrometheusServer(config, data_dir / "tsdb", port=args.port or free_port(), retention="15d")
    _stop_on_ctrl_c_and_sigterm()
    try:
        server.start()
    except PrometheusError as err:
        raise UserError(f"Prometheus did not start: {err}") from None
    try:
        print(f"Prometheus: {server.url}  (pid {server.process.pid}, config {config})")
        if not sd_file.exists():
            print(f"waiting for Ray's discovery file {sd_file} (the head writes it when its dashboard runs)")
        print("Grafana: add this URL as a Prometheus datasource and import dashboards/*.json "
              "(or use dashboards/provisioning). Ctrl-C stops Prometheus.", flush=True)
        return _wait(server, args.duration)
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()
        print("Prometheus stopped.")


def _stop_on_ctrl_c_and_sigterm() -> None:
    """Make SIGINT and SIGTERM stop Prometheus, set explicitly: a process started in the background
    by a non-interactive shell inherits SIGINT *ignored* (Python then installs no Ctrl-C handler),
    and Kubernetes and `ray job stop` send SIGTERM."""
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may set handlers; an embedding caller keeps its own

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, interrupt)


def _wait(server, duration: float | None) -> int:
    deadline = None if duration is None else time.monotonic() + duration
    while deadline is None or time.monotonic() < deadline:
        if server.process.poll() is not None:
            print(f"Prometheus exited with code {server.process.returncode}; see {server.log_path}")
            return 1
        time.sleep(0.5)
    return 0


if __name__ == "__main__":
    from mpcformer.cli import job_main

    raise SystemExit(job_main("mpcformer.jobs.monitor"))
