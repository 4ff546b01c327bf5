"""Communication rounds of one call of each registered approximation under MPC.

``mpcformer approximations`` shows :data:`RECORDED`, measured with :func:`measure` (a CostLedger
around one call of each encrypted form, default parameters, default :class:`MPCConfig`, rows of
:data:`REFERENCE_KEYS` keys) and written here by ``python -m mpcformer.approx.rounds``;
``tests/test_approx.py`` measures them again and fails when an entry's rounds change or an entry
has none recorded. Rounds do not depend on the values, only on the shapes (a normaliser's max
over ``Tk`` keys takes more rounds for longer rows) and on CrypTen's function settings.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["REFERENCE_KEYS", "RECORDED", "measure", "recorded"]

#: length of the normalised rows the rounds are measured on (a BERT sequence of 128 tokens)
REFERENCE_KEYS = 128

#: name -> rounds per call, from ``python -m mpcformer.approx.rounds``
RECORDED: dict[str, int] = {
    "gelu": 28,
    "quad": 1,
    "relu": 9,
    "puma-gelu": 12,
    "softmax": 116,
    "softmax-coarse-max": 93,
    "2quad": 30,
    "2relu": 38,
    "lim-softmax": 120,
    "taylor-softmax": 30,
    "2quad-fit": 10,
    "2relu-fit": 19,
    "ln:exact": 17,
    "ln:fit": 2,
}


def recorded(name: str) -> int | None:
    """Rounds of one call of ``name`` at its default parameters, if recorded."""
    return RECORDED.get(name)


def _reference_input(kind: str) -> tuple[torch.Tensor, ...]:
    """Plaintext inputs of the reference shapes: activations (1, 128) on [-6, 6]; scores
    (1, 1, 2, 128) ~ N(0, 2^2) with every key real; variances (1, 128, 1) on [0.5, 50]."""
    gen = torch.Generator().manual_seed(0)
    if kind == "activation":
        return (torch.linspace(-6.0, 6.0, REFERENCE_KEYS)[None],)
    if kind == "normaliser":
        return torch.randn(1, 1, 2, REFERENCE_KEYS, generator=gen) * 2.0, torch.ones(1, 1, 1, REFERENCE_KEYS)
    return (torch.logspace(-0.3, 1.7, REFERENCE_KEYS)[None, :, None],)


def measure(rank: int) -> dict[str, int]:
    """Party function (2 parties + dealer): rounds of one call of every registered approximation."""
    from mpcformer.approx import list_approximations
    from mpcformer.approx.functions import as_rows
    from mpcformer.mpc.compat import crypten
    from mpcformer.mpc.costs import CostLedger

    out: dict[str, int] = {}
    for approx in list_approximations():
        inputs: list[Any] = list(_reference_input(approx.kind))
        inputs[0] = crypten.cryptensor(inputs[0], src=0)  # sharing is local: no round
        ledger = CostLedger()
        with ledger.active():
            result = approx.encrypted(*inputs, **approx.params)
            if approx.kind == "normaliser":
                as_rows(result).probs()  # the per-row factor's product, wherever the caller applies it
        out[approx.name] = int(ledger.total().rounds)
    return out


def main() -> None:
    from mpcformer.mpc.config import MPCConfig
    from mpcformer.mpc.launcher import run_local

    rounds = run_local(measure, config=MPCConfig(timeout_s=300), timeout_s=600)[0]
    print("RECORDED: dict[str, int] = {")
    for name, count in rounds.items():
        print(f'    "{name}": {count},')
    print("}")


if __name__ == "__main__":
    main()
