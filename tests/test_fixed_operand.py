"""Owner operands with reusable masks (:mod:`mpcformer.mpc.fixed_operand`): exact products, the weight sent once."""

from __future__ import annotations

import pytest
import torch

from test_ring_matmul import ring_values

pytestmark = pytest.mark.timeout(300)

K, N = 40, 5
X_SHAPES = [(6, K), (2, 3, K), (1, K)]  # batch dimensions broadcast as in torch.matmul


@pytest.fixture(scope="module")
def products():
    from mpcformer.mpc.launcher import run_local

    import fixed_operand_party_fns as fns

    ints = {
        "w_t": ring_values((N, K), 20, 0.2),  # extremes included: the ring wraps
        "xs": [ring_values(shape, 21 + i, 0.2) for i, shape in enumerate(X_SHAPES)],
        "v": ring_values((1, K), 25, 0.2),  # an elementwise operand beside W
    }
    gen = torch.Generator().manual_seed(22)
    floats = {"x": torch.randn(2, 7, K, generator=gen), "w": torch.randn(K, N, generator=gen) / K**0.5}
    plain = {"w_t": ints["w_t"].tolist(), "xs": [x.tolist() for x in ints["xs"]], "v": ints["v"].tolist()}
    results = run_local(
        fns.masked_and_stock_products, args=(plain, {n: t.tolist() for n, t in floats.items()}), timeout_s=180
    )
    return ints, floats, results


def test_masked_products_are_the_exact_ring_products(products):
    ints, _, results = products
    w = ints["w_t"].t()
    for party in results:
        assert party["masked"]
        for x, got in zip(ints["xs"], party["ints"]):
            assert torch.equal(torch.tensor(got), x @ w)  # torch's int64 matmul wraps modulo 2^64
        assert not party["plain"]["masked"]
        assert torch.equal(torch.tensor(party["plain"]["ints"]), ints["xs"][0] @ w)


def test_masked_fixed_point_product_matches_cryptens(products):
    _, floats, results = products
    reference = floats["x"] @ floats["w"]
    for party in results:
        masked, stock = torch.tensor(party["float_masked"]), torch.tensor(party["float_stock"])
        assert torch.allclose(masked, reference, atol=2e-3)
        assert torch.allclose(masked, stock, atol=2e-4)  # the truncation may differ by an LSB


def test_the_weight_is_sent_once_and_each_product_sends_only_its_input_one_way(products):
    ints, _, results = products
    w_numel, x0_numel = ints["w_t"].numel(), ints["xs"][0].numel()
    for party in results:
        # CrypTen opens x - a and W - b, each both ways; here W - b once and x_1 - a, one way each.
        both_ways = party["stock_bytes"] / (x0_numel + w_numel)
        assert party["setup_bytes"] == pytest.approx(both_ways / 2 * w_numel)
        for x, sent in zip(ints["xs"], party["bytes"]):
            assert sent == pytest.approx(both_ways / 2 * x.numel())
        assert party["plain_bytes"] == party["stock_bytes"]  # masks off: CrypTen's protocol
    owner, client = results
    assert all(b > 0 for b in owner["dealer_bytes"]) and all(b == 0 for b in client["dealer_bytes"])


def test_a_vector_operand_rides_on_the_products_message(products):
    """x @ W and x * v from one message: both exact ring products, no byte more than x @ W alone;
    masks off, CrypTen's product gives the same x * v."""
    ints, _, results = products
    x, w, v = ints["xs"][1], ints["w_t"].t(), ints["v"][0]
    for party in results:
        got = party["with_scale"]
        assert torch.equal(torch.tensor(got["ints"]), x @ w)
        assert torch.equal(torch.tensor(got["scaled"]), x * v)  # int64 products wrap modulo 2^64
        assert got["bytes"] == party["bytes"][1]
        assert torch.equal(torch.tensor(party["plain"]["scaled"]), x * v)
    owner, client = results
    assert owner["with_scale"]["dealer_bytes"] > owner["dealer_bytes"][1] and client["with_scale"]["dealer_bytes"] == 0


def test_a_released_operand_refuses_with_advice(products):
    for party in products[2]:
        assert "released" in party["after_release"] and "build it again" in party["after_release"]


def test_only_the_owner_passes_the_value(products):
    for party in products[2]:
        assert "party 0 (the owner) passes the operand's value" in party["wrong_owner"]
