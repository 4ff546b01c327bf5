"""Party functions for the key tests (module level: spawned party processes and Ray actors import
them). Importing this module in a party process records every value ``secrets.token_bytes``
returns there, before the session opens (spawned processes import it to unpickle the function)."""

from __future__ import annotations

import secrets

import torch

from mpcformer.operations import party_operation

_drawn: list[bytes] = []
_token_bytes = secrets.token_bytes


def _recording_token_bytes(n: int | None = None) -> bytes:
    value = _token_bytes(n)
    _drawn.append(value)
    return value


secrets.token_bytes = _recording_token_bytes

#: torch's default CPU generator seed in a fresh process (what CrypTen's dealer draws its seeds from).
TORCH_DEFAULT_SEED = torch.Generator().initial_seed()


@party_operation
def session_keys_report(rank: int) -> dict:
    """This party's session keys (hex), what this process drew from ``secrets``, the dealer
    generator's torch seed, and a product through the dealer (the keys line up)."""
    from mpcformer.mpc import keys
    from mpcformer.mpc.compat import crypten
    from crypten.mpc.provider.ttp_provider import TTPClient

    found = keys.session_keys()
    x = crypten.cryptensor(torch.tensor([1.5, -2.0]), src=0)
    y = crypten.cryptensor(torch.tensor([4.0, 0.25]), src=1)
    return {
        "keys": {role: None if key is None else key.hex() for role, key in found.items()},
        "drawn": [value.hex() for value in _drawn],
        "dealer_torch_seed": TTPClient.get().get_generator(device="cpu").initial_seed(),
        "product": (x * y).get_plain_text().tolist(),
    }
