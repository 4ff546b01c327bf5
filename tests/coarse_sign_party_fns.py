"""Party functions for the coarse-sign tests (module level: spawned processes import them)."""

from __future__ import annotations

from pathlib import Path

import torch


def signs_and_maxima(rank: int, values: list, rows: list, fraction_bits: int, integer_bits: int) -> dict:
    """``less_than_zero`` on ``values`` (shared by the client) at the defaults and at
    ``fraction_bits``/``integer_bits``, CrypTen's ``< 0`` on the same, their costs; the coarse
    ``maximum`` of ``rows`` along its last dim."""
    from mpcformer.mpc.coarse_sign import applies, less_than_zero, maximum, rounds
    from mpcformer.mpc.compat import crypten
    from mpcformer.mpc.costs import CostLedger

    x = crypten.cryptensor(torch.tensor(values), src=1)
    out: dict = {"applies": applies(x), "expected_rounds": rounds()}
    for name, fn in (("coarse", lambda: less_than_zero(x)), ("crypten", lambda: x < 0)):
        ledger = CostLedger()
        with ledger.active():
            bits = fn()
        out[name] = {"bits": bits.get_plain_text().tolist(), "bytes": ledger.total().bytes,
                     "rounds": ledger.total().rounds, "scale": bits.encoder.scale}
    out["narrow"] = less_than_zero(x, fraction_bits, integer_bits).get_plain_text().tolist()
    out["maximum"] = maximum(crypten.cryptensor(torch.tensor(rows), src=1), -1).get_plain_text().tolist()
    return out


def fallback_signs(rank: int, values: list) -> dict:
    """``less_than_zero`` where the protocol does not apply (a session without OS keys)."""
    from mpcformer.mpc.coarse_sign import applies, less_than_zero
    from mpcformer.mpc.compat import crypten

    x = crypten.cryptensor(torch.tensor(values), src=1)
    return {"applies": applies(x), "bits": less_than_zero(x).get_plain_text().tolist()}


def constant_signs_tapped(rank: int, out_dir: str, n: int) -> dict:
    """What each party holds while ``less_than_zero`` runs on ``n`` equal negative values (phase
    ``honest``), and when the sign's XOR shares are opened as they are (phase ``leaky``, the
    positive control)."""
    from crypten.mpc.primitives import BinarySharedTensor

    from leak_tap import LeakTap
    from mpcformer.mpc import coarse_sign
    from mpcformer.mpc.compat import crypten

    x = crypten.cryptensor(torch.full((n,), -3.0), src=1)
    with LeakTap(rank) as honest:
        bits = coarse_sign.less_than_zero(x)
    honest.save(Path(out_dir) / f"honest-party{rank}.pt")
    with LeakTap(rank) as leaky:
        drop, width = coarse_sign._window(x, coarse_sign.FRACTION_BITS, coarse_sign.INTEGER_BITS)
        kept = (x.share >> drop) & ((1 << width) - 1)
        planes = coarse_sign._bit_planes(kept, width - 1)
        top = coarse_sign._bit_planes(kept >> (width - 1), 1)[0]
        BinarySharedTensor.from_shares(coarse_sign._carry(planes, rank) ^ top).reveal()
    leaky.save(Path(out_dir) / f"leaky-party{rank}.pt")
    return {"bits": bits.get_plain_text().tolist()}
