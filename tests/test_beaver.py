"""mpcformer's Beaver steps (mpcformer.mpc.beaver): CrypTen's values, rounds and bytes in every
mode; the dealer's answer collected after the opening when overlapping; switches that restore."""

from __future__ import annotations

import importlib

import pytest
import torch

from test_ring_matmul import ring_values

PROTOCOLS = ("__beaver_protocol", "square", "AND", "B2A_single_bit")


def test_the_runtime_switches_cryptens_protocols_and_provider_and_restores_them():
    import crypten.mpc as crypten_mpc

    from mpcformer.mpc.config import MPCConfig
    from mpcformer.mpc.runtime import Runtime

    crypten_beaver = importlib.import_module("crypten.mpc.primitives.beaver")
    originals = {name: getattr(crypten_beaver, name) for name in PROTOCOLS}
    providers = vars(crypten_mpc)["__SUPPORTED_PROVIDERS"]
    ttp = providers["TTP"]
    for switches, provider_replaced in (({"fast_matmul": False}, False), ({}, True)):
        runtime = Runtime(MPCConfig(**switches), parties=2).install()
        try:
            assert runtime.applied("beaver")
            assert all(getattr(crypten_beaver, name) is not originals[name] for name in PROTOCOLS)
            assert (providers["TTP"] is not ttp) is provider_replaced  # meta sizing is fast_matmul's
            assert isinstance(providers["TTP"], type(ttp))
        finally:
            runtime.restore()
        assert all(getattr(crypten_beaver, name) is originals[name] for name in PROTOCOLS)
        assert providers["TTP"] is ttp
    off = {"overlap_dealer": False, "fast_matmul": False, "stream_triples": False}
    for config in (MPCConfig(**off), MPCConfig(dealer="tfp", insecure_dealer=True)):  # CrypTen as shipped
        runtime = Runtime(config, parties=2).install()
        try:
            assert not runtime.applied("beaver")
            assert all(getattr(crypten_beaver, n) is originals[n] for n in PROTOCOLS)
        finally:
            runtime.restore()


@pytest.fixture(scope="module")
def runs():
    from mpcformer.mpc.launcher import run_local

    import beaver_party_fns as fns

    ints = {"x": ring_values((3, 5), 21, 0.3), "y": ring_values((5,), 22, 0.3), "w": ring_values((5, 4), 23, 0.3)}
    floats = {"f": [-2.5, -0.01, 0.0, 0.02, 1.5, 3.0]}
    results = run_local(
        fns.products_in_every_mode,
        args=({n: t.tolist() for n, t in ints.items()}, floats),
        timeout_s=240,
    )
    return ints, floats, results


def test_every_mode_gives_the_exact_ring_values(runs):
    ints, floats, results = runs
    x, y, w = ints["x"], ints["y"], ints["w"]
    f = torch.tensor(floats["f"])
    for party in results:
        for mode, got in party.items():
            values = got["values"]
            assert torch.equal(torch.tensor(values["mul"]), x * y), mode
            assert torch.equal(torch.tensor(values["matmul"]), x @ w), mode
            assert torch.equal(torch.tensor(values["square"]), x * x), mode
            assert torch.equal(torch.tensor(values["mul_same_shape"]), x * x), mode
            assert torch.equal(torch.tensor(values["positive"]), (f > 0).float()), mode
            assert torch.allclose(torch.tensor(values["relu"]), f.clamp(min=0), atol=1e-3), mode


def test_every_mode_exchanges_the_same_rounds_and_bytes(runs):
    _, _, results = runs
    owner, client = results
    for party in results:
        reference = party["crypten"]
        assert reference["rounds"] > 0 and reference["bytes"] > 0
        for mode, got in party.items():
            assert (got["rounds"], got["bytes"]) == (reference["rounds"], reference["bytes"]), mode
    # Party 0 sizes the answers it asks for itself, so the dealer sends no size message for them
    # (fewer: only the matmul is ours; overlap and both: every product); the client never talks to it.
    crypten_dealer = owner["crypten"]["dealer_bytes"]
    assert 0 < owner["both"]["dealer_bytes"] == owner["overlap"]["dealer_bytes"] < owner["fewer"]["dealer_bytes"]
    assert owner["fewer"]["dealer_bytes"] < crypten_dealer
    assert all(got["dealer_bytes"] == 0 for got in client.values())
    # Streams: the elementwise triples come in ranges of 65,536 elements, one request per kind used
    # here (mul, square, and, b2a; each asked once and the next range prefetched), instead of one
    # request per product; the matmul and the broadcasting product still ask one each.
    assert owner["streams"]["dealer_requests"] < owner["both"]["dealer_requests"]
    assert owner["streams"]["dealer_requests"] <= 2 * 4 + 2


def test_overlap_collects_the_dealers_answer_after_the_opening(runs):
    _, _, results = runs
    owner, client = results
    asked_first = ["dealer:send_obj", "dealer:recv_obj", "dealer:broadcast", "party:all_reduce"]  # CrypTen's
    opened_first = ["dealer:send_obj", "party:all_reduce", "dealer:broadcast"]  # the answer is sized by party 0
    for mode in ("crypten", "fewer"):
        assert owner[mode]["mul_order"] == asked_first, mode
    for mode in ("overlap", "both"):
        assert owner[mode]["mul_order"] == opened_first, mode
    # x * y broadcasts, so it is not streamed: asked, opened, then the answers in the order asked
    # (first any stream range party 0 had asked for ahead, then this product's).
    streamed = owner["streams"]["mul_order"]
    assert streamed[:2] == opened_first[:2] and set(streamed[2:]) == {"dealer:broadcast"}, streamed
    for mode, got in client.items():  # party 1 never talks to the dealer during a product
        assert got["mul_order"] == ["party:all_reduce"], mode
    # A streamed product is only the opening for party 0 too: its triple came ahead of time.
    assert owner["streams"]["same_shape_mul_order"] == ["party:all_reduce"]
    assert owner["both"]["same_shape_mul_order"] == opened_first
