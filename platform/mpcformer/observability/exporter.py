"""Expose the prometheus_client backend: an HTTP ``/metrics`` endpoint and Pushgateway pushes.

Only for processes without a Ray metrics agent (under Ray, the agent exports; see
:mod:`mpcformer.observability.backends`).

    from mpcformer.observability import configure, start_http_server
    configure("prometheus")
    port = start_http_server(9400)        # http://127.0.0.1:9400/metrics
"""

from __future__ import annotations

import logging
import os
import socket

__all__ = ["start_http_server", "push_registry", "exposition"]

log = logging.getLogger(__name__)


def _registry(registry=None):
    if registry is not None:
        return registry
    from mpcformer.observability.backends import configure, current_backend

    backend = current_backend()
    if backend.name != "prometheus":
        backend = configure("prometheus")
    return backend.registry  # type: ignore[attr-defined]


def start_http_server(port: int = 0, addr: str = "127.0.0.1", registry=None) -> int:
    """Serve the registry (default: the prometheus backend's) at ``http://addr:port/metrics``.

    ``port=0`` picks a free port. Returns the bound port. The server thread is a daemon: it ends
    with the process.
    """
    import prometheus_client

    server, _thread = prometheus_client.start_http_server(port, addr=addr, registry=_registry(registry))
    bound = server.server_port
    log.info("metrics at http://%s:%d/metrics", addr, bound)
    return bound


def push_registry(registry, gateway: str, job: str = "mpcformer", grouping_key: dict[str, str] | None = None) -> None:
    """Replace this process's group on the Pushgateway ``gateway`` (``host:port`` or URL).

    The group is ``job`` plus ``instance=<hostname>-<pid>`` unless ``grouping_key`` says otherwise;
    scrape the Pushgateway with ``honor_labels: true``.
    """
    import prometheus_client

    key = grouping_key or {"instance": f"{socket.gethostname()}-{os.getpid()}"}
    prometheus_client.push_to_gateway(gateway, job=job, registry=registry, grouping_key=key, timeout=10)


def exposition(registry=None) -> str:
    """The registry in Prometheus text format (what ``/metrics`` serves)."""
    import prometheus_client

    return prometheus_client.generate_latest(_registry(registry)).decode()
