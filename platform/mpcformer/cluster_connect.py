"""Connect a job to Ray: the cluster it was submitted to, an address, or a new local one."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

__all__ = ["connect"]

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
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
        log.info("started an embedded local Ray cluster")
    try:
        yield
    finally:
        ray.shutdown()
