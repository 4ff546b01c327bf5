"""Party function for the truncation tests (module level: spawned processes import them)."""

from __future__ import annotations

import torch

#: Fractional bits of the tests' values: they are encoded exactly at CrypTen's 16 bits.
VALUE_BITS = 6


def _encoded(share) -> torch.Tensor:
    """The ring values of an ``MPCTensor`` (no decoding: exact integers)."""
    return share._tensor.reveal()


def products_both_ways(rank: int, a: list[float], b: list[float], divisors: list[int]) -> dict:
    """Encrypted ``a * b`` (owner's ``a``, client's ``b``) with exact truncation off, then on; also
    ``a * 0.75`` (a public float) and ``a / y`` for each public integer ``y`` and by a tensor of them, both ways.

    Returns per mode the revealed ring values and the rounds each product took.
    """
    from crypten import communicator as comm

    from mpcformer.mpc import runtime
    from mpcformer.mpc.compat import crypten

    x = crypten.cryptensor(torch.tensor(a, dtype=torch.float64), src=0)
    y = crypten.cryptensor(torch.tensor(b, dtype=torch.float64), src=1)
    small = x[:1000]
    out: dict = {}
    for mode in ("crypten", "exact"):
        with runtime.active().switched(exact_truncation=mode == "exact"):
            before = comm.get().get_communication_stats()["rounds"]
            product = x * y
            rounds = comm.get().get_communication_stats()["rounds"] - before
            out[mode] = {
                "product": _encoded(product).tolist(),
                "product_rounds": rounds,
                "public_float": _encoded(small * 0.75).tolist(),
                "divided": {str(d): _encoded(small / d).tolist() for d in divisors},
                "by_tensor": _encoded(small / torch.tensor([1.0, 3.0, 16.0, 1000.0]).repeat(250)).tolist(),
            }
    return out


def padded_attention(rank: int, scores: list, values: list, mask: list, combo: str) -> dict:
    """``normaliser(scores) @ values`` for the client's scores and values (B, nh, T, T) and (B, nh, T, hs)
    whose padded tokens hold huge values, as padded tokens can under MPC; with CrypTen's division and
    exact truncation, without and with the attention's zeroing of padded pairs.

    Returns per mode the decoded context and the ring values at padded pairs of what multiplies V.
    """
    from mpcformer.approx.registry import Combo
    from mpcformer.models.encrypted_bert import _real_pairs_only
    from mpcformer.mpc import runtime
    from mpcformer.mpc.compat import crypten

    rows_of = Combo.parse(combo).normaliser_rows_fn()
    s = crypten.cryptensor(torch.tensor(scores, dtype=torch.float64), src=1)
    v = crypten.cryptensor(torch.tensor(values, dtype=torch.float64), src=1)
    key_mask = torch.tensor(mask, dtype=torch.float32)[:, None, None, :]  # (B, 1, 1, T)
    padded = (key_mask * key_mask.transpose(-1, -2)) == 0  # (B, 1, T, T)
    out: dict = {}
    for mode in ("crypten", "exact"):
        with runtime.active().switched(exact_truncation=mode == "exact"):
            rows = rows_of(s, key_mask)
            probs = rows.probs()  # as a normaliser returns them: probs @ V
            out[f"{mode}/as normalised"] = {
                "context": probs.matmul(v).get_plain_text().tolist(),
                "padded_pairs": _encoded(probs)[padded.expand(probs.size())].tolist(),
            }
            numerator = _real_pairs_only(rows.numerator, key_mask.transpose(-1, -2), key_mask)  # as the attention
            out[f"{mode}/zeroed"] = {
                "context": rows.scale(numerator.matmul(v)).get_plain_text().tolist(),
                "padded_pairs": _encoded(numerator)[padded.expand(numerator.size())].tolist(),
            }
    return out
