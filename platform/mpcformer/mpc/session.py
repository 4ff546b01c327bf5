"""One party's MPC session: join, configure CrypTen, always tear down.

    with MPCSession(rank=0, world_size=2, rendezvous="tcp://10.0.0.1:29500", config=cfg):
        x = crypten.cryptensor(t, src=0)

The dealer (CrypTen's trusted third party, rank = world size) runs :func:`run_dealer`; it exits
when rank 0 tears down (CrypTen sends it "terminate" from ``crypten.uninit()`` on rank 0).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import logging
import os
from typing import Callable

from mpcformer.mpc.compat import crypten
from mpcformer.mpc.config import MPCConfig
from mpcformer.mpc import runtime
import torch.distributed as dist

__all__ = [
    "MPCSession", "run_dealer", "install_runtime", "session_device", "session_generation", "on_session_close",
    "on_clean_leave", "SessionError",
]

log = logging.getLogger(__name__)


class SessionError(RuntimeError):
    """An MPC session could not start or a peer failed; the message names the party and the cause."""


#: Device of the session open in this process (parties run one session at a time).
_device = "cpu"
#: Sessions opened so far in this process: what was built in one session is void in the next.
_generation = 0
#: Called when this process leaves a session, to drop what only that session could use.
_close_hooks: list[Callable[[], None]] = []
#: Called first when a party leaves without an error, while its connections are still up.
_clean_leave_hooks: list[Callable[[], None]] = []


def on_session_close(hook: Callable[[], None]) -> None:
    """Run ``hook()`` whenever a party of this process leaves its session (errors are logged)."""
    if hook not in _close_hooks:
        _close_hooks.append(hook)


def on_clean_leave(hook: Callable[[], None]) -> None:
    """Run ``hook()`` when a party of this process leaves its session without an error, before the
    close hooks and before rank 0 tells the dealer to exit (errors are logged)."""
    if hook not in _clean_leave_hooks:
        _clean_leave_hooks.append(hook)


def session_generation() -> int:
    """Number of the session open in this process (1, 2, ...); objects tied to a session keep it."""
    return _generation


def session_device() -> str:
    """Where the open session's shares live: ``"cuda"`` or ``"cpu"`` (also outside any session)."""
    return _device


def _check_device(config: MPCConfig, who: str) -> None:
    """On CUDA: check the GPU is there (the runtime then routes CrypTen's exchanges through host memory)."""
    if config.device != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise SessionError(
            f"{who} is configured with device 'cuda' but torch sees no GPU (torch {torch.__version__}, "
            f"CUDA build: {torch.version.cuda or 'no'}); use device: cpu, or give the party a GPU "
            "(Ray: use_gpu / gpus_per_party)"
        )


def install_runtime(config: MPCConfig, parties: int) -> runtime.Runtime:
    """Apply ``config`` to CrypTen for one session: the runtime's patches and CrypTen settings
    (:mod:`mpcformer.mpc.runtime`); the caller restores it when the session ends."""
    if config.dealer == "tfp":
        log.warning("insecure dealer 'tfp': party 0 generates the Beaver triples and can learn the client's inputs")
    if config.randomness != "os":
        log.warning("randomness 'crypten-insecure-baseline': CrypTen's seeds carry 32 bits of entropy; a benchmark baseline only")
    installed = runtime.Runtime(config, parties).install()
    if installed.applied("ring_matmul"):
        from mpcformer.mpc import ring_matmul

        try:
            ring_matmul.active_kernel()  # "auto" measures now, at set-up, not inside the first timed forward
        except BaseException:
            installed.restore()
            raise
    return installed


def with_deadline(create: Callable, config: MPCConfig) -> Callable:
    """``dist.init_process_group`` / ``dist.new_group`` giving every group CrypTen creates the
    session's deadline instead of gloo's 30 minutes (a runtime patch)."""
    timeout = datetime.timedelta(seconds=config.timeout_s)

    @functools.wraps(create)
    def create_with_deadline(*args, **kwargs):
        kwargs.setdefault("timeout", timeout)
        return create(*args, **kwargs)

    return create_with_deadline


def _set_party_env(rank: int, world_size: int, rendezvous: str, backend: str) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), RENDEZVOUS=rendezvous, DISTRIBUTED_BACKEND=backend
    )


class MPCSession:
    """Context manager for one party (``0 <= rank < world_size``) of an MPC session."""

    def __init__(self, rank: int, world_size: int, rendezvous: str, config: MPCConfig | None = None):
        if world_size < 2:
            raise SessionError(f"an MPC session needs at least 2 parties, got world_size={world_size}")
        if not 0 <= rank < world_size:
            raise SessionError(f"party rank {rank} is outside 0..{world_size - 1}")
        self.rank, self.world_size, self.rendezvous = rank, world_size, rendezvous
        self.config = config or MPCConfig()
        self._open = False
        self._emulator = None
        self.runtime: runtime.Runtime | None = None

    def __enter__(self) -> "MPCSession":
        _check_device(self.config, f"party {self.rank}")
        self.runtime = install_runtime(self.config, self.world_size)
        try:
            self._join()
        except BaseException:
            if self._open:  # joined, then failed (the emulated link): leave as a session does
                self.close(failed=True)
            else:  # a session that did not open leaves CrypTen as it found it
                self.runtime.restore()
                self.runtime = None
            raise
        return self

    def _join(self) -> None:
        global _device, _generation
        _set_party_env(self.rank, self.world_size, self.rendezvous, self.config.backend)
        log.info("party %d/%d joining %s", self.rank, self.world_size, self.rendezvous)
        try:
            crypten.init()
        except Exception as err:
            raise SessionError(
                f"party {self.rank} could not join the MPC session at {self.rendezvous} within "
                f"{self.config.timeout_s:.0f}s: {err}"
            ) from err
        self._open = True
        _device = self.config.device
        _generation += 1
        crypten.reset_communication_stats()
        if self.config.network is not None and self.config.network.mode == "emulate":
            from mpcformer.mpc.network import NetworkEmulator

            self._emulator = NetworkEmulator(self.config.network).__enter__()

    def describe(self) -> dict | None:
        """The protocol path this session runs (:meth:`mpcformer.mpc.runtime.Runtime.describe`)."""
        return None if self.runtime is None else self.runtime.describe()

    def __exit__(self, exc_type, *exc) -> None:
        self.close(failed=exc_type is not None)

    def close(self, failed: bool = False) -> None:
        """Leave the session; on rank 0 this also tells the dealer to exit. ``failed``: leaving after
        an error, so what is still on its way is dropped rather than waited for. Safe to call twice."""
        global _device
        if not self._open:
            return
        self._open = False
        _device = "cpu"
        if not failed:
            for hook in _clean_leave_hooks:
                try:
                    hook()
                except Exception as err:  # the peers may be gone already: leave all the same
                    log.warning("party %d: %r while leaving the session: %s", self.rank, hook, err)
        for hook in _close_hooks:
            try:
                hook()
            except Exception as err:  # dropping caches must not turn teardown into a failure
                log.warning("party %d: session close hook %r failed: %s", self.rank, hook, err)
        if self._emulator is not None:
            self._emulator.__exit__()
            self._emulator = None
        try:
            crypten.uninit()
        except Exception as err:  # a dead peer must not turn teardown into a second failure
            log.warning("party %d: error while leaving the MPC session: %s", self.rank, err)
        finally:
            try:
                _release_ttp_client()
            finally:
                if self.runtime is not None:
                    self.runtime.restore()
                    self.runtime = None


def _release_ttp_client() -> None:
    from crypten.mpc.provider.ttp_provider import TTPClient

    with contextlib.suppress(Exception):
        TTPClient.uninit()


def run_dealer(world_size: int, rendezvous: str, config: MPCConfig | None = None) -> None:
    """Serve Beaver triples as CrypTen's trusted third party until rank 0 says "terminate"."""
    config = config or MPCConfig()
    if config.dealer != "ttp":
        raise SessionError("run_dealer is only for dealer 'ttp'")
    _check_device(config, "the dealer")
    installed = install_runtime(config, world_size)
    try:
        _set_party_env(world_size, world_size, rendezvous, config.backend)
        from mpcformer.mpc.dealer import Dealer

        log.info("dealer (rank %d) joining %s", world_size, rendezvous)
        try:
            Dealer()  # blocks until terminated; returns on a peer's RuntimeError too
        finally:
            with contextlib.suppress(Exception):
                if dist.is_initialized():
                    dist.destroy_process_group()
            runtime.forget_communicator()
    finally:
        installed.restore()
