"""One party's MPC session: join, configure CrypTen, always tear down.

    with MPCSession(rank=0, world_size=2, rendezvous="tcp://10.0.0.1:29500", config=cfg):
        x = crypten.cryptensor(t, src=0)

The dealer (CrypTen's trusted third party, rank = world size) runs :func:`run_dealer`; it exits
when rank 0 tears down (CrypTen sends it "terminate" from ``crypten.uninit()`` on rank 0).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from typing import Callable, Iterator

from mpcformer.mpc.compat import crypten
from mpcformer.mpc.config import MPCConfig
from mpcformer.mpc import fast_config
from crypten.config import cfg as crypten_cfg
import torch.distributed as dist

__all__ = [
    "MPCSession", "run_dealer", "apply_crypten_config", "session_device", "session_generation", "on_session_close",
    "SessionError",
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


def on_session_close(hook: Callable[[], None]) -> None:
    """Run ``hook()`` whenever a party of this process leaves its session (errors are logged)."""
    if hook not in _close_hooks:
        _close_hooks.append(hook)


def session_generation() -> int:
    """Number of the session open in this process (1, 2, ...); objects tied to a session keep it."""
    return _generation


def session_device() -> str:
    """Where the open session's shares live: ``"cuda"`` or ``"cpu"`` (also outside any session)."""
    return _device


def _prepare_device(config: MPCConfig, who: str) -> None:
    """On CUDA: check the GPU is there and route CrypTen's exchanges through host memory."""
    if config.device != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise SessionError(
            f"{who} is configured with device 'cuda' but torch sees no GPU (torch {torch.__version__}, "
            f"CUDA build: {torch.version.cuda or 'no'}); use device: cpu, or give the party a GPU "
            "(Ray: use_gpu / gpus_per_party)"
        )
    from mpcformer.mpc import host_staging

    host_staging.install()


def apply_crypten_config(config: MPCConfig) -> None:
    """Set CrypTen's global config from ours: stats on, precision, dealer, function settings."""
    fast_config.install()  # same values, read ~20x faster (CrypTen reads its config on every op)
    crypten_cfg.communicator.verbose = True  # rounds/bytes are only counted when verbose
    crypten_cfg.encoder.precision_bits = config.precision_bits
    crypten_cfg.mpc.provider = "TTP" if config.dealer == "ttp" else "TFP"
    for key, value in config.functions.model_dump().items():
        if value is not None:
            setattr(crypten_cfg.functions, key, value)
    if config.dealer == "tfp":
        log.warning("insecure dealer 'tfp': party 0 generates the Beaver triples and can learn the client's inputs")
    from mpcformer.mpc import beaver, exchange, fixed_operand, keys, prg, ring_matmul, truncation

    if config.fast_exchange:
        exchange.install()
    else:
        exchange.uninstall()

    if config.randomness == "os":  # every process of the session applies the same config, so all draw alike
        keys.install()
        prg.install()
    else:
        log.warning("randomness 'crypten-insecure-baseline': CrypTen's seeds carry 32 bits of entropy; a benchmark baseline only")
        keys.uninstall()
        prg.uninstall()

    if config.reuse_weight_masks:  # only ever applies with the TTP dealer (fixed_operand checks the provider)
        fixed_operand.enable()
    else:
        fixed_operand.disable()
    if config.fast_matmul:
        ring_matmul.enable(kernel=config.matmul_kernel)
        ring_matmul.active_kernel()  # "auto" measures now, at set-up, not inside the first timed forward
    else:
        ring_matmul.disable()
    # With every switch above and these off: CrypTen exactly as shipped, the benchmarks' baseline.
    beaver.enable(
        overlap_dealer=config.overlap_dealer, fewer_matmuls=config.fast_matmul, stream_triples=config.stream_triples
    )
    if config.exact_truncation:  # runs where beaver's steps and their streams do (truncation checks)
        truncation.enable()
    else:
        truncation.disable()


@contextlib.contextmanager
def _distributed_deadline(timeout_s: float) -> Iterator[None]:
    """Give every process group CrypTen creates our deadline instead of gloo's 30 minutes."""
    timeout = datetime.timedelta(seconds=timeout_s)
    init_pg, new_group = dist.init_process_group, dist.new_group

    def init_with_deadline(*args, **kwargs):
        kwargs.setdefault("timeout", timeout)
        return init_pg(*args, **kwargs)

    def group_with_deadline(*args, **kwargs):
        kwargs.setdefault("timeout", timeout)
        return new_group(*args, **kwargs)

    dist.init_process_group, dist.new_group = init_with_deadline, group_with_deadline
    try:
        yield
    finally:
        dist.init_process_group, dist.new_group = init_pg, new_group


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

    def __enter__(self) -> "MPCSession":
        global _device, _generation
        _prepare_device(self.config, f"party {self.rank}")
        apply_crypten_config(self.config)
        _set_party_env(self.rank, self.world_size, self.rendezvous, self.config.backend)
        log.info("party %d/%d joining %s", self.rank, self.world_size, self.rendezvous)
        try:
            with _distributed_deadline(self.config.timeout_s):
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
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Leave the session; on rank 0 this also tells the dealer to exit. Safe to call twice."""
        global _device
        if not self._open:
            return
        self._open = False
        _device = "cpu"
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
            _release_ttp_client()


def _release_ttp_client() -> None:
    from crypten.mpc.provider.ttp_provider import TTPClient

    with contextlib.suppress(Exception):
        TTPClient.uninit()


def run_dealer(world_size: int, rendezvous: str, config: MPCConfig | None = None) -> None:
    """Serve Beaver triples as CrypTen's trusted third party until rank 0 says "terminate"."""
    config = config or MPCConfig()
    if config.dealer != "ttp":
        raise SessionError("run_dealer is only for dealer 'ttp'")
    _prepare_device(config, "the dealer")
    apply_crypten_config(config)
    _set_party_env(world_size, world_size, rendezvous, config.backend)
    from mpcformer.mpc.dealer import Dealer

    log.info("dealer (rank %d) joining %s", world_size, rendezvous)
    try:
        with _distributed_deadline(config.timeout_s):
            Dealer()  # blocks until terminated; returns on a peer's RuntimeError too
    finally:
        with contextlib.suppress(Exception):
            if dist.is_initialized():
                dist.destroy_process_group()
        from crypten.communicator import DistributedCommunicator

        DistributedCommunicator.instance = None
