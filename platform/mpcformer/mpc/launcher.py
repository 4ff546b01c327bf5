"""Launchers: run one function on every party of an MPC session (and the dealer beside them).

A :class:`Launcher` has one method, ``run(fn, args, kwargs, on_progress)``, returning what each party
returned, by rank, or raising :class:`~mpcformer.errors.PartyFailure` naming the party that failed.
Two implement it: :class:`LocalLauncher` (local processes, spawned, never forked: tests, ``bench``
and the baseline the Ray platform is compared with) and
:class:`mpcformer.cluster.party_group.RayLauncher` (a fresh party group of Ray actors). The party
function must be importable (module level) and return plain data: tensors cross back as lists or numbers.

    results = LocalLauncher(MPCConfig()).run(my_party_fn, args=(x,))
    results[0]  # what rank 0 returned
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue as queue_mod
import shutil
import socket
import tempfile
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

from mpcformer.errors import PartyFailure
from mpcformer.mpc.config import MPCConfig

__all__ = ["Launcher", "LocalLauncher", "run_local", "PartyFailure"]

#: ``on_progress(rank, event)``: what the parties report with :func:`mpcformer.mpc.progress.report`.
PartyProgress = Callable[[int, dict[str, Any]], None]


class Launcher(Protocol):
    """Runs ``fn(rank, *args, **kwargs)`` on every party; results by rank, or :class:`PartyFailure`."""

    def run(
        self, fn: Callable[..., Any], args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None,
        on_progress: PartyProgress | None = None,
    ) -> list[Any]: ...


@dataclass(frozen=True)
class LocalLauncher:
    """Parties and the dealer as local processes, each call a fresh session (:func:`run_local`)."""

    config: MPCConfig
    timeout_s: float = 600.0
    world_size: int = 2

    def run(
        self, fn: Callable[..., Any], args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None,
        on_progress: PartyProgress | None = None,
    ) -> list[Any]:
        return run_local(fn, args, kwargs, world_size=self.world_size, config=self.config,
                         timeout_s=self.timeout_s, on_progress=on_progress)

log = logging.getLogger(__name__)


def _party_main(fn, rank, world_size, rendezvous, config, args, kwargs, results, threads, send_progress) -> None:
    import torch

    torch.set_num_threads(threads)
    from mpcformer.mpc import progress
    from mpcformer.mpc.session import MPCSession

    if send_progress:
        progress.set_sink(lambda event: results.put((rank, "progress", event)))

    session = MPCSession(rank, world_size, rendezvous, config)
    try:
        session.__enter__()
        value = fn(rank, *args, **kwargs)
    except BaseException as err:  # report everything, including KeyboardInterrupt in a party
        # Report before leaving the session: peers only see "connection closed" after we leave,
        # so the root cause reaches the launcher first.
        results.put((rank, "error", f"{type(err).__name__}: {err}\n{traceback.format_exc()}"))
        session.close(failed=True)
        return
    session.close()
    results.put((rank, "ok", value))


def _dealer_main(world_size, rendezvous, config, results, threads) -> None:
    import torch

    # As many threads as a party: torch's default (every core) would spin OpenMP workers on the
    # cores the parties compute on.
    torch.set_num_threads(threads)
    from mpcformer.mpc.session import run_dealer

    try:
        run_dealer(world_size, rendezvous, config)
        results.put((world_size, "ok", None))
    except BaseException as err:
        results.put((world_size, "error", f"{type(err).__name__}: {err}\n{traceback.format_exc()}"))


def _who(rank: int, world_size: int) -> str:
    return "dealer" if rank == world_size else f"party {rank}"


def run_local(
    fn: Callable[..., Any],
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    world_size: int = 2,
    config: MPCConfig | None = None,
    timeout_s: float = 600.0,
    threads_per_party: int | None = None,
    on_progress: PartyProgress | None = None,
) -> list[Any]:
    """Run ``fn(rank, *args, **kwargs)`` on ``world_size`` parties (+ the dealer) and return by rank.

    ``on_progress(rank, event)`` receives what the parties :func:`mpcformer.mpc.progress.report`
    while they run. Raises :class:`PartyFailure` naming the first party that failed (with its
    error) or what missed the ``timeout_s`` deadline; every process is stopped before it returns
    or raises.
    """
    config = config or MPCConfig()
    kwargs = kwargs or {}
    threads = threads_per_party or max(1, (os.cpu_count() or 2) // world_size)
    ctx = mp.get_context("spawn")  # fork deadlocks once the parent has run torch ops
    workdir = tempfile.mkdtemp(prefix="mpcformer-rdv-")
    # TLS brings its own rendezvous on a TCP port (mpc/secure_transport.py); gloo meets through a file
    rendezvous = _tcp_rendezvous() if config.transport == "tls" else f"file://{os.path.join(workdir, 'rendezvous')}"
    if config.transport == "tls" and config.credentials_dir is None:  # a session CA of its own, as Ray's launcher issues
        from mpcformer.mpc.credentials import issue_credentials

        credentials = issue_credentials(os.path.join(workdir, "credentials"), ranks=world_size + 1)
        config = config.model_copy(update={"credentials_dir": str(credentials)})
    results = ctx.Queue()
    procs = {
        rank: ctx.Process(
            target=_party_main,
            args=(fn, rank, world_size, rendezvous, config, tuple(args), kwargs, results, threads, on_progress is not None),
            name=f"mpcformer-party-{rank}",
            daemon=True,
        )
        for rank in range(world_size)
    }
    if config.dealer == "ttp":
        procs[world_size] = ctx.Process(
            target=_dealer_main, args=(world_size, rendezvous, config, results, threads),
            name="mpcformer-dealer", daemon=True,
        )
    try:
        for proc in procs.values():
            proc.start()
        return _collect(procs, results, world_size, time.monotonic() + timeout_s, timeout_s, on_progress)
    finally:
        _stop_all(procs)
        shutil.rmtree(workdir, ignore_errors=True)


def _tcp_rendezvous() -> str:
    """``tcp://127.0.0.1:<port>`` with a port free right now (party 0 listens on it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


def _collect(procs, results, world_size, deadline, timeout_s, on_progress=None) -> list[Any]:
    values: dict[int, Any] = {}
    while len(values) < len(procs):
        try:
            rank, status, value = results.get(timeout=0.2)
        except queue_mod.Empty:
            for rank, proc in procs.items():
                if rank not in values and not proc.is_alive() and proc.exitcode not in (0, None):
                    raise PartyFailure(_who(rank, world_size), f"process exited with code {proc.exitcode}")
            if time.monotonic() > deadline:
                missing = ", ".join(_who(r, world_size) for r in procs if r not in values)
                raise PartyFailure(missing, f"no result within the {timeout_s:.0f}s deadline")
            continue
        if status == "progress":
            if on_progress is not None:
                on_progress(rank, value)
            continue
        if status == "error":
            rank, value = _root_cause(rank, value, results)
            raise PartyFailure(_who(rank, world_size), value)
        values[rank] = value
    return [values[rank] for rank in range(world_size)]


_PEER_LOSS_MARKERS = ("Connection closed", "Connection reset", "Timed out", "timed out", "Broken pipe")


def _root_cause(rank: int, message: str, results, grace_s: float = 1.0) -> tuple[int, str]:
    """Prefer a party's own error over its peers' "connection closed" that it caused."""
    if not any(m in message for m in _PEER_LOSS_MARKERS):
        return rank, message
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            other_rank, status, other = results.get(timeout=0.1)
        except queue_mod.Empty:
            continue
        if status == "error" and not any(m in other for m in _PEER_LOSS_MARKERS):
            return other_rank, other
    return rank, message


def _stop_all(procs: dict[int, mp.Process], grace_s: float = 5.0) -> None:
    deadline = time.monotonic() + grace_s
    for proc in procs.values():
        proc.join(timeout=max(0.0, deadline - time.monotonic()))
    for proc in procs.values():
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5)
