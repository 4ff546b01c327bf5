"""Party function for the row-factor tests (module level: spawned processes import it)."""

from __future__ import annotations

import torch


def row_factor_products(rank: int, x: list) -> dict:
    """``x * s(mean(x^2))`` with ``x`` opened once and, masks off, by CrypTen's square then product;
    each with the party-to-party bytes and rounds it took."""
    from mpcformer.mpc import runtime
    from mpcformer.mpc.compat import crypten
    from mpcformer.mpc.costs import CostLedger
    from mpcformer.mpc.row_factor import times_row_factor

    def factor_of(mean_square):  # a factor that takes rounds of its own, as LayerNorm's inverse square root
        return mean_square * mean_square * 0.25 + 1.0

    out = {}
    shared = crypten.cryptensor(torch.tensor(x), src=1)
    for name, reuse in (("one_opening", True), ("crypten", False)):
        with runtime.active().switched(reuse_activation_masks=reuse):
            ledger = CostLedger()
            with ledger.active():
                y = times_row_factor(shared, factor_of)
            total = ledger.total()
            out[name] = {"y": y.get_plain_text().tolist(), "bytes": total.bytes, "rounds": total.rounds}
    return out
