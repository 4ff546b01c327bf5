"""Connect a job to Ray: the cluster it was submitted to, an address, or a new local one."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from typing import Iterator

__all__ = ["connect", "metrics_url", "stop_on_sigterm"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def connect(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """Inside ``ray job submit`` (RAY_ADDRESS set) join that cluster; else start an embedded one.

    Shuts Ray down on exit only if this call started it.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    before = signal.getsignal(signal.SIGTERM)  # ray.init replaces it, and so does stop_on_sigterm
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
        log.info("started an embedded local Ray cluster")
    stop_on_sigterm()  # after ray.init, which installs its own handler (sys.exit from any frame)
    try:
        yield
    finally:
        ray.shutdown()
        if before is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, before)


def stop_on_sigterm() -> None:
    """Make SIGTERM raise :class:`~mpcformer.errors.Terminated` in the main thread (elsewhere it does
    nothing), so a job stops as on Ctrl-C: ``finally`` blocks close actors and write the status,
    then the CLI exits 143."""
    from mpcformer.errors import Terminated

    def terminated(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
        raise Terminated()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, terminated)


def metrics_url() -> str | None:
    """Prometheus endpoint of the head node's Ray metrics agent (where party metrics are exported)."""
    import ray

    if not ray.is_initialized():
        return None
    for node in ray.nodes():
        if node.get("Alive") and node.get("MetricsExportPort"):
            return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    return None
