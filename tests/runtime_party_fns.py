"""A party process that looks at CrypTen and torch.distributed before, during and after its session
(module level: spawned processes import it)."""

from __future__ import annotations

import importlib
import traceback
from typing import Any

import torch

#: Modules and classes whose attributes the check compares, beyond the manifest's own targets.
WATCHED = (
    "crypten", "crypten.mpc", "crypten.common.rng", "crypten.config.config:CrypTenConfig",
    "crypten.communicator.distributed_communicator", "crypten.communicator.distributed_communicator:DistributedCommunicator",
    "crypten.mpc.primitives.beaver", "crypten.mpc.primitives.arithmetic", "crypten.mpc.primitives.binary",
    "crypten.mpc.primitives.replicated", "crypten.mpc.primitives.arithmetic:ArithmeticSharedTensor",
    "crypten.mpc.primitives.binary:BinarySharedTensor", "crypten.mpc.provider.ttp_provider",
    "crypten.mpc.provider.tfp_provider", "crypten.mpc.provider.ttp_provider:TTPServer",
    "crypten.mpc.provider.ttp_provider:TrustedThirdParty", "crypten.mpc.provider.ttp_provider:TTPClient",
    "crypten.mpc.provider.ttp_provider:TTPClient._TTPClient__TTPClient", "torch.distributed",
)
#: CrypTen's own per-session state (singletons it sets in init and clears in uninit): not patches.
CRYPTEN_STATE = {
    ("crypten.communicator.distributed_communicator:DistributedCommunicator", "instance"),
    ("crypten.mpc.provider.ttp_provider:TTPClient", "_TTPClient__instance"),
}


def _targets() -> list[str]:
    from mpcformer.mpc import runtime

    return sorted(set(WATCHED) | {p.target for p in runtime.MANIFEST})


def snapshot() -> dict[tuple[str, str], Any]:
    """Every attribute of every watched module or class (its own ``__dict__``; dicts item by item)."""
    from mpcformer.mpc import runtime

    found: dict[tuple[str, str], Any] = {}
    for path in _targets():
        target = runtime._resolve(path)
        if isinstance(target, dict):  # CrypTen's provider registry
            found.update({(path, key): value for key, value in target.items()})
            continue
        found.update({(path, name): value for name, value in vars(target).items()})
    return found


def changed(before: dict, now: dict) -> list[tuple[str, str]]:
    keys = set(before) | set(now)
    return sorted(k for k in keys if k not in CRYPTEN_STATE and before.get(k, None) is not now.get(k, None))


def _work(rank: int) -> None:
    """Products, squares, comparisons, a division and a weight-mask product: every patched path."""
    from mpcformer.mpc.compat import crypten
    from mpcformer.mpc.fixed_operand import FixedOperand

    gen = torch.Generator().manual_seed(5)
    a, b = torch.randn(4, 6, generator=gen), torch.randn(6, 3, generator=gen)
    x, w = crypten.cryptensor(a, src=1), crypten.cryptensor(b, src=0)
    y = x.matmul(w)
    (y * y).square()
    (y > 0).get_plain_text()
    (y / 3).get_plain_text()
    owned = FixedOperand(b if rank == 0 else None, tuple(b.shape))
    owned.rmatmul(x).get_plain_text()
    owned.release()


def party_main(rank: int, rendezvous: str, config: Any, results: Any) -> None:
    try:
        for name in ("beaver", "fixed_operand", "truncation", "exchange", "tap", "keys", "prg", "ring_matmul",
                     "host_staging", "fast_config", "dealer", "session", "costs", "network"):
            importlib.import_module(f"mpcformer.mpc.{name}")  # importing mpcformer changes nothing
        importlib.import_module("leak_tap")  # nor does the leak harness (tests/leak_tap.py)
        from mpcformer.mpc.session import MPCSession

        before = snapshot()
        with MPCSession(rank, 2, rendezvous, config) as session:
            opened = snapshot()
            manifest = sorted((p.target, p.attribute) for p in session.runtime.patches)
            _work(rank)
            path = session.describe()
            worked = snapshot()
        after = snapshot()
        results.put((rank, "ok", {
            "changed_during": sorted(set(changed(before, opened)) | set(changed(before, worked))), "manifest": manifest,
            "changed_after": changed(before, after), "protocol_path": path,
        }))
    except BaseException as err:
        results.put((rank, "error", f"{type(err).__name__}: {err}\n{traceback.format_exc()}"))
