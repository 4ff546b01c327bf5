"""Every change mpcformer makes to CrypTen and torch.distributed, in one manifest, for one session.

mpcformer's protocol code lives in its modules (:mod:`~mpcformer.mpc.beaver`,
:mod:`~mpcformer.mpc.ring_matmul`, ...); none of them assigns into CrypTen or torch. They hand
their replacement functions to this module, which lists each change as a :class:`Patch`: the
target (a module or class), the attribute, the replacement, the :class:`~mpcformer.mpc.config.MPCConfig`
switch that turns it on and the condition (dealer, parties, device) under which it can act.
:class:`Runtime` installs the patches that apply to a session's config and restores every
original when the session closes, also when it fails, so a runtime lives exactly as long as its
session (:class:`mpcformer.mpc.session.MPCSession`, :func:`mpcformer.mpc.session.run_dealer`).

    runtime = Runtime(config, parties=2).install()
    try:
        ...                     # crypten.init(), the session's work
    finally:
        runtime.restore()

:func:`describe` says which protocol path the open session runs (bench.json's ``protocol_path``).

**Adding a patch.** Write the replacement in its module (a function, or a factory
``f(original, config)`` with ``wraps=True`` when it needs what it replaces), add a :class:`Patch` to
:data:`MANIFEST` (install order; restore runs in reverse), with a switch from :data:`SWITCHES` and a
condition from :data:`CONDITIONS`. ``tests/test_runtime.py`` then checks that the session restores
it, and fails on any assignment into CrypTen or torch outside this module.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal, Mapping

from mpcformer.mpc.config import PROTOCOL_PROFILES, MPCConfig

__all__ = [
    "Patch", "MANIFEST", "SWITCHES", "CONDITIONS", "Runtime", "eligible", "holds", "active", "active_config", "applied",
    "describe", "protocol_label", "crypten_settings", "swapped", "forget_communicator",
]

log = logging.getLogger(__name__)

Condition = Literal["always", "cpu", "cuda", "ttp-cpu", "ttp-2-parties-cpu"]


def _beaver_steps(config: MPCConfig) -> bool:
    return config.overlap_dealer or config.fast_matmul or config.stream_triples


#: The MPCConfig switches a patch can hang on (a field, or what several fields decide together).
SWITCHES: dict[str, Callable[[MPCConfig], bool]] = {
    "always": lambda config: True,
    "fast_matmul": lambda config: config.fast_matmul,
    "beaver_steps": _beaver_steps,  # overlap_dealer, fast_matmul or stream_triples
    "fast_exchange": lambda config: config.fast_exchange,
    "os_randomness": lambda config: config.randomness == "os",
    # the truncation takes its values from the OS-keyed triple streams, in order with beaver's requests
    "exact_truncation": lambda config: config.exact_truncation and config.randomness == "os" and _beaver_steps(config),
    "tls_transport": lambda config: config.transport == "tls",
}


@dataclass(frozen=True)
class SessionShape:
    """What a condition may look at: the dealer, the number of parties (dealer excluded), the device."""

    dealer: str
    parties: int
    device: str


#: Where a patch can act (mpcformer's steps need CrypTen's TTP dealer and CPU tensors).
CONDITIONS: dict[str, Callable[[SessionShape], bool]] = {
    "always": lambda s: True,
    "cpu": lambda s: s.device == "cpu",
    "cuda": lambda s: s.device == "cuda",
    "ttp-cpu": lambda s: s.dealer == "ttp" and s.device == "cpu",
    "ttp-2-parties-cpu": lambda s: s.dealer == "ttp" and s.parties == 2 and s.device == "cpu",
}


def eligible(condition: Condition, config: MPCConfig, parties: int) -> bool:
    """Whether a session of ``config`` with ``parties`` parties meets ``condition`` (the one check of
    "TTP dealer, 2 parties, CPU" and its kin; :func:`holds` asks the same of the open session)."""
    return CONDITIONS[condition](SessionShape(config.dealer, parties, config.device))


def holds(condition: Condition, device: Any) -> bool:
    """Whether the open CrypTen session meets ``condition`` for shares on ``device``: its provider
    (CrypTen's TTP, without active security), its number of parties and the tensors' device."""
    crypten, comm, ttp_class, torch = _live_handles()
    ttp = isinstance(crypten.mpc.get_default_provider(), ttp_class) and not crypten.cfg.mpc.active_security
    shape = SessionShape("ttp" if ttp else "other", comm.get().get_world_size(), torch.device(device).type)
    return CONDITIONS[condition](shape)


@functools.cache
def _live_handles() -> tuple[Any, Any, Any, Any]:
    """CrypTen, its communicator, its TTP provider class and torch (imported once, when first asked:
    :func:`holds` runs on every product)."""
    from mpcformer.mpc.compat import crypten
    from crypten import communicator as comm
    from crypten.mpc.provider.ttp_provider import TrustedThirdParty

    import torch

    return crypten, comm, TrustedThirdParty, torch


def _resolve(path: str) -> Any:
    """``"package.module:Class.attr"`` or ``"package.module"`` -> the object."""
    module_name, _, attributes = path.partition(":")
    if module_name.split(".")[0] == "crypten":
        from mpcformer.mpc.compat import import_crypten

        import_crypten()  # CrypTen imports on current torch only through compat
    obj = importlib.import_module(module_name)
    for name in filter(None, attributes.split(".")):
        obj = getattr(obj, name)
    return obj


#: What :meth:`Patch.read` returns for a dict entry that is not there (restoring it removes the key).
ABSENT: Any = type("Absent", (), {"__repr__": lambda self: "ABSENT"})()


@dataclass(frozen=True)
class Patch:
    """One change to CrypTen or torch: ``target.attribute = replacement`` while a session runs.

    ``target`` and ``replacement`` are ``"module:qualified.name"`` paths (imported at install, so
    the manifest costs nothing to import). ``wraps``: the replacement is a factory called with the
    value it replaces and the session's config. ``item``: the target is a dict and ``attribute`` a
    key (CrypTen's provider registry, torch's backend registry; a key the dict lacks is added, and
    removed at restore). ``before_restore``: called first when the patch is undone.
    """

    name: str
    target: str
    attribute: str
    replacement: str
    switch: str = "always"
    condition: Condition = "always"
    wraps: bool = False
    item: bool = False
    before_restore: str | None = None

    def applies(self, config: MPCConfig, parties: int) -> bool:
        return SWITCHES[self.switch](config) and eligible(self.condition, config, parties)

    def resolve_target(self) -> Any:
        return _resolve(self.target)

    def read(self, target: Any) -> Any:
        return target.get(self.attribute, ABSENT) if self.item else getattr(target, self.attribute)

    def write(self, target: Any, value: Any) -> None:
        if self.item and value is ABSENT:
            target.pop(self.attribute, None)
        elif self.item:
            target[self.attribute] = value
        else:
            setattr(target, self.attribute, value)


_BEAVER = "crypten.mpc.primitives.beaver"
_TTP = "crypten.mpc.provider.ttp_provider"
_TFP = "crypten.mpc.provider.tfp_provider"
_COMMUNICATOR = "crypten.communicator.distributed_communicator:DistributedCommunicator"
_TTP_CLIENT = f"{_TTP}:TTPClient._TTPClient__TTPClient"  # CrypTen's per-process client (name-mangled)
_PRG_DRAWS = (  # CrypTen modules that imported the drawing functions by name, and which
    ("crypten.common.rng", ("generate_random_ring_element", "generate_kbit_random_tensor")),
    ("crypten.mpc.primitives.arithmetic", ("generate_random_ring_element",)),
    ("crypten.mpc.primitives.binary", ("generate_kbit_random_tensor",)),
    (_TTP, ("generate_random_ring_element", "generate_kbit_random_tensor")),
    (_TFP, ("generate_random_ring_element", "generate_kbit_random_tensor")),
)
#: CrypTen modules that multiply shares with ``getattr(torch, op)``.
_MATMUL_MODULES = (
    "crypten.mpc.primitives.arithmetic", _BEAVER, "crypten.mpc.primitives.replicated", _TTP, _TFP,
)
#: CrypTen's communicator methods the tap reports (after the exchange's ``all_reduce`` is in).
_TAPPED_METHODS = (
    "send", "recv", "isend", "irecv", "scatter", "reduce", "all_reduce", "gather",
    "all_gather", "broadcast", "barrier", "send_obj", "recv_obj", "broadcast_obj",
)

#: Every change, in install order (restore runs backwards).
MANIFEST: tuple[Patch, ...] = (
    # CrypTen reads its config on every op: same values, cached (not a protocol change, so always on)
    Patch("fast_config", "crypten.config.config:CrypTenConfig", "__getattribute__",
          "mpcformer.mpc.fast_config:cached_getattribute", wraps=True),
    # every process group CrypTen creates gets the session's deadline instead of gloo's 30 minutes
    Patch("deadline", "torch.distributed", "init_process_group", "mpcformer.mpc.session:with_deadline", wraps=True),
    Patch("deadline", "torch.distributed", "new_group", "mpcformer.mpc.session:with_deadline", wraps=True),
    # every message over mutually authenticated TLS 1.3: torch's backend registry gains mpcformer's TLS
    # process group, and CrypTen's init_process_group uses it (no gloo, no TCP store)
    Patch("secure_transport", "torch.distributed:Backend._plugins", "MPCFORMER_TLS",
          "mpcformer.mpc.secure_transport:backend_plugin", switch="tls_transport", wraps=True, item=True),
    Patch("secure_transport", "torch.distributed", "init_process_group", "mpcformer.mpc.secure_transport:init_over_tls",
          switch="tls_transport", wraps=True, before_restore="mpcformer.mpc.secure_transport:close_mesh"),
    # CUDA parties exchange through host copies (gloo takes CUDA tensors for few ops)
    *(Patch("host_staging", module, "dist", "mpcformer.mpc.host_staging:staged_dist", condition="cuda", wraps=True)
      for module in ("crypten.communicator.distributed_communicator", _TTP)),
    # 128-bit OS keys for every generator, AES-CTR draws under them
    Patch("keys", "crypten", "_setup_prng", "mpcformer.mpc.keys:setup_prng", switch="os_randomness"),
    Patch("keys", _TTP_CLIENT, "_setup_generators", "mpcformer.mpc.keys:client_setup", switch="os_randomness"),
    *(Patch("prg", module, name, f"mpcformer.mpc.prg:{name}", switch="os_randomness")
      for module, names in _PRG_DRAWS for name in names),
    # the ring kernel for encrypted CPU matmuls
    *(Patch("ring_matmul", module, "torch", "mpcformer.mpc.ring_matmul:TORCH_WITH_RING_MATMUL",
            switch="fast_matmul", condition="cpu") for module in _MATMUL_MODULES),
    # mpcformer's Beaver steps: overlap, 2 local matmuls, triple streams
    *(Patch("beaver", _BEAVER, name, f"mpcformer.mpc.beaver:{replacement}", switch="beaver_steps", condition="ttp-cpu")
      for name, replacement in (("__beaver_protocol", "beaver_protocol"), ("square", "square"), ("AND", "and_"),
                                ("B2A_single_bit", "b2a_single_bit"))),
    Patch("beaver", _TTP_CLIENT, "ttp_request", "mpcformer.mpc.beaver:request_after_drain", switch="beaver_steps",
          condition="ttp-cpu", wraps=True, before_restore="mpcformer.mpc.beaver:drain"),
    # CrypTen's extension point for triples: its provider registry, TTP entry
    Patch("beaver", "crypten.mpc:__SUPPORTED_PROVIDERS", "TTP", "mpcformer.mpc.beaver:ttp_provider",
          switch="fast_matmul", condition="ttp-cpu", wraps=True, item=True),
    # exact division of shares by public integers
    Patch("truncation", "crypten.mpc.primitives.arithmetic:ArithmeticSharedTensor", "div_",
          "mpcformer.mpc.truncation:exact_div", switch="exact_truncation", condition="ttp-2-parties-cpu", wraps=True),
    # openings as one all-gather; the tap below then reports it like CrypTen's all_reduce
    Patch("exchange", _COMMUNICATOR, "all_reduce", "mpcformer.mpc.exchange:all_reduce_by_gather",
          switch="fast_exchange", condition="cpu", wraps=True),
    # last: every communicator method reported to the tap's listeners (costs, emulated links, leak test)
    *(Patch("tap", _COMMUNICATOR, name, "mpcformer.mpc.tap:wrap", wraps=True) for name in _TAPPED_METHODS),
)


def crypten_settings(config: MPCConfig) -> dict[str, Any]:
    """CrypTen config values a session sets (through CrypTen's ``cfg.temp_override``, undone at close)."""
    settings: dict[str, Any] = {
        "communicator.verbose": True,  # rounds/bytes are only counted when verbose
        "encoder.precision_bits": config.precision_bits,
        "mpc.provider": "TTP" if config.dealer == "ttp" else "TFP",
    }
    for key, value in config.functions.model_dump().items():
        if value is not None:
            settings[f"functions.{key}"] = value
    return settings


@dataclass
class _Applied:
    patch: Patch
    target: Any
    original: Any


_active: "Runtime | None" = None


class Runtime:
    """The patches of one session (``parties``: the number of parties, the dealer excluded)."""

    def __init__(self, config: MPCConfig, parties: int):
        self.config, self.parties = config, parties
        self._applied: list[_Applied] = []
        self._names: set[str] = set()  # names of the patches in effect (asked on hot paths)
        self._settings: contextlib.ExitStack | None = None

    @property
    def patches(self) -> tuple[Patch, ...]:
        """The patches in effect (install order)."""
        return tuple(a.patch for a in self._applied)

    def applied(self, name: str) -> bool:
        return name in self._names

    def install(self) -> "Runtime":
        """Apply the manifest's patches that apply to this config (all or none: a failure restores)."""
        global _active
        if _active is not None:
            raise RuntimeError("an mpcformer runtime is already installed in this process: one session at a time")
        _active = self
        try:
            self._install()
        except BaseException:
            self.restore()
            raise
        log.debug("runtime: %d patches (%s)", len(self._applied), ", ".join(sorted({p.name for p in self.patches})))
        return self

    def _install(self) -> None:
        from mpcformer.mpc.compat import crypten  # import order: compat first

        self._settings = contextlib.ExitStack()
        self._settings.enter_context(crypten.cfg.temp_override(crypten_settings(self.config)))
        for patch in MANIFEST:
            if not patch.applies(self.config, self.parties):
                continue
            target = patch.resolve_target()
            original = patch.read(target)
            replacement = _resolve(patch.replacement)
            if patch.wraps:
                replacement = replacement(original, self.config)
            patch.write(target, replacement)
            self._applied.append(_Applied(patch, target, original))
            self._names.add(patch.name)

    def restore(self) -> None:
        """Put every original back (reverse order; safe to call twice)."""
        global _active
        self._names.clear()
        try:
            while self._applied:
                applied = self._applied[-1]
                try:
                    if applied.patch.before_restore:
                        _resolve(applied.patch.before_restore)()
                finally:
                    self._applied.pop()
                    applied.patch.write(applied.target, applied.original)
            if self._settings is not None:
                self._settings.close()
                self._settings = None
        finally:
            if _active is self:
                _active = None

    @contextlib.contextmanager
    def switched(self, **changes: Any) -> Iterator[MPCConfig]:
        """Run with other switches for a while (tests and benchmarks compare paths in one session)."""
        before = self.config
        self.restore()
        self.config = before.model_copy(update=changes)
        self.install()
        try:
            yield self.config
        finally:
            self.restore()
            self.config = before
            self.install()

    def describe(self) -> dict[str, Any]:
        """The protocol path this session runs (what bench.json calls ``protocol_path``)."""
        config, ttp_cpu = self.config, eligible("ttp-cpu", self.config, self.parties)
        two_party = eligible("ttp-2-parties-cpu", config, self.parties)
        beaver, os_keys = self.applied("beaver"), self.applied("keys")
        from mpcformer.mpc import ring_matmul

        return {
            "profile": profile_of(config),
            "owner_operands": "reused weight masks" if config.reuse_weight_masks and two_party else "beaver triples",
            "elementwise_triples": "streamed" if beaver and config.stream_triples and two_party and os_keys
            else "dealer requests" if config.dealer == "ttp" else "party 0 (tfp)",
            "dealer_overlap": bool(beaver and config.overlap_dealer and ttp_cpu),
            "beaver_matmul": "2 local matmuls" if beaver and config.fast_matmul else "3 local matmuls",
            "matmul_kernel": ring_matmul.active_kernel() if self.applied("ring_matmul") else "stock",
            "exchange": "all-gather" if self.applied("exchange") and self.parties == 2 else "all-reduce",
            "randomness": "aes-ctr under 128-bit os keys" if os_keys else "crypten seeds (mersenne twister, insecure)",
            "truncation": "exact (dealer streams)" if self.applied("truncation") else "crypten local division",
            "transport": "tls 1.3, mutual (session CA)" if self.applied("secure_transport") else "tcp (cleartext)",
            "dealer": config.dealer,
            "parties": self.parties,
            "device": config.device,
        }


def profile_of(config: MPCConfig) -> str:
    """The named protocol profile ``config`` matches (``mpcformer``, ``crypten``), else ``custom``."""
    for name, settings in PROTOCOL_PROFILES.items():
        if all(getattr(config, key) == value for key, value in settings.items()):
            return name
    return "custom"


def active() -> Runtime | None:
    """The runtime of the session open in this process, if any."""
    return _active


def active_config() -> MPCConfig | None:
    return None if _active is None else _active.config


def applied(name: str) -> bool:
    """Whether the open session's runtime has the patches named ``name`` (``"beaver"``, ...) in effect."""
    return _active is not None and _active.applied(name)


def describe() -> dict[str, Any] | None:
    """:meth:`Runtime.describe` of the open session (``None`` outside a session)."""
    return None if _active is None else _active.describe()


def protocol_label(path: Mapping[str, Any]) -> str:
    """A short label of a :func:`describe` dict for metrics: the profile name, or the custom choices."""
    if path["profile"] != "custom":
        return path["profile"]
    parts = [
        "masks" if path["owner_operands"] == "reused weight masks" else "beaver",
        "streams" if path["elementwise_triples"] == "streamed" else "requests",
        "overlap" if path["dealer_overlap"] else "no-overlap",
        path["matmul_kernel"],
        "allgather" if path["exchange"] == "all-gather" else "allreduce",
        "aes" if path["randomness"].startswith("aes") else "crypten-rng",
        "exact-trunc" if path["truncation"].startswith("exact") else "local-trunc",
    ]
    return "custom:" + ",".join(parts)


def forget_communicator() -> None:
    """Drop CrypTen's communicator singleton (state, not a patch) after the dealer destroyed its
    process groups, so that the next session in this process builds a fresh one."""
    from crypten.communicator import DistributedCommunicator

    DistributedCommunicator.instance = None


@contextlib.contextmanager
def swapped(target: Any, replacements: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Test machinery (the leak harness, staging tests): set attributes of ``target`` for a while
    and put the originals back, also on failure. Yields the originals."""
    originals = {name: getattr(target, name) for name in replacements}
    try:
        for name, value in replacements.items():
            setattr(target, name, value)
        yield originals
    finally:
        for name, value in originals.items():
            setattr(target, name, value)
