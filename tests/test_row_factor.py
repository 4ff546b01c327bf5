"""``x * s(mean(x^2))`` with one opening of ``x`` (:mod:`mpcformer.mpc.row_factor`): LayerNorm's
normalisation, the same values as CrypTen's square then product, an activation's worth fewer bytes."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.timeout(300)

SHAPE = (2, 5, 24)  # (B, T, H)


@pytest.fixture(scope="module")
def products():
    from mpcformer.mpc.launcher import run_local

    import row_factor_party_fns as fns

    x = torch.randn(*SHAPE, generator=torch.Generator().manual_seed(31)) * 3
    return x, run_local(fns.row_factor_products, args=(x.tolist(),), timeout_s=180)


def test_one_opening_gives_cryptens_values(products):
    x, results = products
    mean_square = x.square().mean(-1, keepdim=True)
    expected = x * (mean_square * mean_square * 0.25 + 1.0)
    for party in results:
        for name in ("one_opening", "crypten"):
            got = torch.tensor(party[name]["y"])
            assert torch.allclose(got, expected, rtol=2e-3, atol=2e-2), (name, (got - expected).abs().max())


def test_x_is_opened_once_in_the_same_rounds(products):
    x, results = products
    rows = x.numel() // x.shape[-1]
    for party in results:
        ours, stock = party["one_opening"], party["crypten"]
        assert ours["rounds"] == stock["rounds"]
        # CrypTen opens x for its square and again (with the factor) for the product, each both ways
        per_element = (stock["bytes"] - ours["bytes"]) / (2 * x.numel())
        assert per_element == pytest.approx(8), (stock["bytes"], ours["bytes"], rows)
