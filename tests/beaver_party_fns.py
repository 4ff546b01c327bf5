"""Party function for the Beaver-step tests (module level: spawned processes import it)."""

from __future__ import annotations

import torch

#: name -> (overlap_dealer, fast_matmul, stream_triples); None: CrypTen's own protocols.
MODES = {
    "crypten": None, "overlap": (True, False, False), "fewer": (False, True, False), "both": (True, True, False),
    "streams": (True, True, True),
}


class _OpOrder:
    """Tap listener: the communicator calls of this party, in order, tagged with the peer kind."""

    def __init__(self) -> None:
        self.ops: list[str] = []

    def before(self, op: str, with_dealer: bool, args: tuple, kwargs: dict) -> None:
        self.ops.append(f"{'dealer' if with_dealer else 'party'}:{op}")

    def after(self, event) -> None:
        pass


def products_in_every_mode(rank: int, ints: dict[str, list], floats: dict[str, list]) -> dict:
    """The same products, squares and comparisons with each Beaver mode (:data:`MODES`).

    Integers are shared at precision 0 (no truncation), so ring products are exact. Returns per
    mode the revealed values, CrypTen's round and byte counts (party-to-party and with the
    dealer) and the order of this party's exchanges during one ``mul``.
    """
    from mpcformer.mpc import runtime, tap
    from mpcformer.mpc.compat import crypten
    from mpcformer.mpc.costs import CostLedger

    out: dict = {}
    for mode, switches in MODES.items():
        overlap, fast_matmul, streams = switches or (False, False, False)
        with runtime.active().switched(overlap_dealer=overlap, fast_matmul=fast_matmul, stream_triples=streams):
            x, y, w = (crypten.cryptensor(torch.tensor(ints[n]), src=s, precision=0) for n, s in (("x", 0), ("y", 1), ("w", 1)))
            f = crypten.cryptensor(torch.tensor(floats["f"]), src=1)
            ledger = CostLedger()
            with ledger.active():
                values = {
                    "mul": (x * y).get_plain_text().long().tolist(),  # y broadcasts over x's rows
                    "matmul": x.matmul(w).get_plain_text().long().tolist(),
                    "square": x.square().get_plain_text().long().tolist(),
                    "positive": (f > 0).get_plain_text().tolist(),  # AND triples and B2A
                    "relu": f.relu().get_plain_text().tolist(),
                    "mul_same_shape": (x * x).get_plain_text().long().tolist(),  # streamed with stream_triples
                }
            order = _OpOrder()
            tap.add_listener(order)
            x * y
            tap.remove_listener(order)
            total = ledger.total()
            order_same_shape = _OpOrder()
            tap.add_listener(order_same_shape)
            x * x
            tap.remove_listener(order_same_shape)
            out[mode] = {
                "values": values, "rounds": total.rounds, "bytes": total.bytes,
                "dealer_bytes": ledger.dealer.bytes, "dealer_requests": ledger.dealer_requests,
                "mul_order": order.ops, "same_shape_mul_order": order_same_shape.ops,
            }
    return out
