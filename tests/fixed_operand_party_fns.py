"""Party function for the fixed-operand tests (module level: spawned processes import them)."""

from __future__ import annotations

import torch


def _party_bytes(fn):
    """Run ``fn()`` under a cost ledger: (result, party-to-party bytes, dealer bytes)."""
    from mpcformer.mpc.costs import CostLedger

    ledger = CostLedger()
    with ledger.active():
        result = fn()
    return result, ledger.total().bytes, ledger.dealer.bytes


def masked_and_stock_products(rank: int, ints: dict[str, list], floats: dict[str, list]) -> dict:
    """The same products through a masked :class:`FixedOperand`, a plain one and CrypTen's matmul.

    Integers are shared at precision 0 (no truncation): every revealed product is an exact ring
    element. ``w_t`` enters transposed, as the encrypted model's weights do; party 0 holds it.
    """
    from mpcformer.mpc import runtime
    from mpcformer.mpc.compat import crypten
    from mpcformer.mpc.fixed_operand import FixedOperand

    w_plain = torch.tensor(ints["w_t"]).t()  # (k, n), a transposed view
    owned = w_plain if rank == 0 else None  # only the owner holds the weight
    masked, setup_bytes, _ = _party_bytes(lambda: FixedOperand(owned, tuple(w_plain.shape), precision=0))
    xs = [crypten.cryptensor(torch.tensor(x), src=1, precision=0) for x in ints["xs"]]
    out: dict = {"masked": masked.masked, "setup_bytes": setup_bytes, "ints": [], "bytes": [], "dealer_bytes": []}
    for x in xs:  # several products under the one mask
        y, sent, dealer = _party_bytes(lambda: masked.rmatmul(x))
        out["ints"].append(y.get_plain_text().long().tolist())
        out["bytes"].append(sent)
        out["dealer_bytes"].append(dealer)
    w = crypten.cryptensor(w_plain, src=0, precision=0)
    _, out["stock_bytes"], _ = _party_bytes(lambda: xs[0].matmul(w))

    # x @ W and x * v from one message (v: e.g. a LayerNorm's gamma)
    v_plain = torch.tensor(ints["v"])  # (1, k)
    scale = FixedOperand(v_plain if rank == 0 else None, tuple(v_plain.shape), precision=0)
    (y, scaled), sent, dealer = _party_bytes(lambda: masked.rmatmul_and_scale(xs[1], scale))
    out["with_scale"] = {
        "ints": y.get_plain_text().long().tolist(), "scaled": scaled.get_plain_text().long().tolist(),
        "bytes": sent, "dealer_bytes": dealer,
    }

    wf_plain = torch.tensor(floats["w"])
    xf = crypten.cryptensor(torch.tensor(floats["x"]), src=1)
    wf_owned = wf_plain if rank == 0 else None
    out["float_masked"] = FixedOperand(wf_owned, tuple(wf_plain.shape)).rmatmul(xf).get_plain_text().tolist()
    out["float_stock"] = xf.matmul(crypten.cryptensor(wf_plain, src=0)).get_plain_text().tolist()

    with runtime.active().switched(reuse_weight_masks=False):
        plain = FixedOperand(owned, tuple(w_plain.shape), precision=0)
        y, out["plain_bytes"], _ = _party_bytes(lambda: plain.rmatmul(xs[0]))
        out["plain"] = {"masked": plain.masked, "ints": y.get_plain_text().long().tolist()}
        plain_scale = FixedOperand(v_plain if rank == 0 else None, tuple(v_plain.shape), precision=0)
        _, scaled = plain.rmatmul_and_scale(xs[1], plain_scale)
        out["plain"]["scaled"] = scaled.get_plain_text().long().tolist()

    try:
        FixedOperand(w_plain, tuple(w_plain.shape)) if rank == 1 else FixedOperand(None, tuple(w_plain.shape))
        out["wrong_owner"] = "no error"
    except ValueError as err:
        out["wrong_owner"] = str(err)

    masked.release()
    try:
        masked.rmatmul(xs[0])
        out["after_release"] = "no error"
    except RuntimeError as err:
        out["after_release"] = str(err)
    return out
