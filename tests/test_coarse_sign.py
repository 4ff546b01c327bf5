"""The coarse sign (:mod:`mpcformer.mpc.coarse_sign`): right outside its stated blind spot, a
fraction of CrypTen's bytes, CrypTen's comparison where it does not apply, and no party holds the
signs it computes."""

from __future__ import annotations

import pytest
import torch

from leak_tap import load_transfers

pytestmark = pytest.mark.timeout(300)

RESOLUTION, RANGE = 1 / 16, 32768.0  # the defaults: fraction_bits 4, integer_bits 15


def _values() -> torch.Tensor:
    """Spread values, both sides of 0 and of the resolution, and near the range's ends; 1,000
    elements (not a multiple of the 64 packed per word)."""
    gen = torch.Generator().manual_seed(3)
    edges = torch.tensor([0.0, 2**-16, -(2**-16), RESOLUTION, -RESOLUTION, 0.05, -0.05, 32000.0, -32000.0, 1e4, -1e4])
    spread = torch.randn(1000 - edges.numel(), generator=gen) * torch.logspace(-3, 3, 1000 - edges.numel())
    return torch.cat([edges, spread])


def _encoded(x: torch.Tensor) -> torch.Tensor:
    """``x`` as the session holds it: CrypTen's encoder truncates ``x * 2^16`` towards zero."""
    return (x * 2**16).long().double() / 2**16


@pytest.fixture(scope="module")
def signs():
    from mpcformer.mpc.launcher import run_local

    import coarse_sign_party_fns as fns

    gen = torch.Generator().manual_seed(4)
    rows = torch.randn(2, 3, 37, generator=gen) * 5  # an odd length: the tree carries one up
    rows[0, 0] = torch.linspace(0, 1, 37)  # values closer than the resolution
    results = run_local(fns.signs_and_maxima, args=(_values().tolist(), rows.tolist(), 2, 3), timeout_s=240)
    return rows, results


def test_signs_are_exact_outside_the_blind_spot_below_the_resolution(signs):
    x = _encoded(_values())
    for party in signs[1]:
        assert party["applies"]
        got = torch.tensor(party["coarse"]["bits"])
        assert set(got.unique().tolist()) <= {0.0, 1.0} and party["coarse"]["scale"] == 1
        blind = (x >= 0) & (x < RESOLUTION)
        assert torch.equal(got[~blind], (x[~blind] < 0).float())
        assert torch.equal(torch.tensor(party["crypten"]["bits"]), (x < 0).float())


def test_a_narrower_window_moves_the_range_and_the_resolution(signs):
    x = _encoded(_values())  # fraction_bits 2, integer_bits 3: |x| < 8 - 1/4, resolution 1/4
    got = torch.tensor(signs[1][0]["narrow"])
    inside = (x.abs() < 8 - 0.25) & ~((x >= 0) & (x < 0.25))
    assert torch.equal(got[inside], (x[inside] < 0).float())
    outside = x.abs() >= 8  # wrapped: no promise there, and here some do come out wrong
    assert not torch.equal(got[outside], (x[outside] < 0).float())


def test_it_costs_a_fraction_of_cryptens_bytes_in_the_stated_rounds(signs):
    for party in signs[1]:
        coarse, stock = party["coarse"], party["crypten"]
        assert coarse["rounds"] == party["expected_rounds"] == 7
        assert coarse["bytes"] * 10 < stock["bytes"]


def test_the_maximum_is_an_input_within_the_stated_distance_of_the_true_one(signs):
    rows, results = signs
    true = rows.amax(-1, keepdim=True)
    levels = 6  # ceil(log2 37)
    for party in results:
        got = torch.tensor(party["maximum"])
        assert got.shape == true.shape
        assert (got <= true + 1e-4).all() and (got >= true - levels * RESOLUTION - 1e-4).all()
        assert ((rows - got).abs().min(-1).values < 1e-4).all()  # one of the row's own values


def test_without_the_sessions_streams_it_is_cryptens_exact_comparison():
    from mpcformer.mpc.config import MPCConfig
    from mpcformer.mpc.launcher import run_local

    import coarse_sign_party_fns as fns

    x = _encoded(_values())
    config = MPCConfig(randomness="crypten-insecure-baseline")
    for party in run_local(fns.fallback_signs, args=(x.tolist(),), config=config, timeout_s=240):
        assert not party["applies"]
        assert torch.equal(torch.tensor(party["bits"]), (x < 0).float())  # the blind spot too


def test_invalid_windows_raise_one_line_errors():
    from mpcformer.mpc.coarse_sign import _window

    class Scaled:
        class encoder:
            scale = 2**16

    assert _window(Scaled, 4, 15) == (12, 20)
    for fraction_bits, integer_bits in ((-1, 15), (4, 0), (16, 16)):
        with pytest.raises(ValueError, match="integer_bits"):
            _window(Scaled, fraction_bits, integer_bits)

    class Fine:  # 50 fractional bits: 46 dropped, and 20 kept would reach past the ring's 64
        class encoder:
            scale = 2**50

    with pytest.raises(ValueError, match="at most 18 bits"):
        _window(Fine, 4, 15)


CHUNK_WORDS = 64  # 4,096 bits: one bit plane of 4,096 elements


def _unbalanced_chunks(tensors: list[torch.Tensor]) -> list[float]:
    """The share of 1-bits of each run of ``CHUNK_WORDS`` words (a tail of at least 16) that is more
    than 7 standard deviations from a half: a constant bit plane inside an opening shows up."""
    words = torch.cat([t.reshape(-1).long() for t in tensors])
    bad = []
    for chunk in words.split(CHUNK_WORDS):
        if chunk.numel() < 16:
            continue
        bits = ((chunk.unsqueeze(-1) >> torch.arange(64)) & 1).float()
        if abs(bits.mean().item() - 0.5) > 7 * 0.5 / bits.numel() ** 0.5:
            bad.append(bits.mean().item())
    return bad


def test_no_party_holds_the_signs(tmp_path):
    """Every value equal and negative: the sign bits are all 1, and so is the top bit that each
    party's kept share bits add up to. Everything a party holds after each collective (openings,
    the dealer's answers) is balanced bits, run by run; opening the sign's XOR shares as they are
    (the positive control) hands both parties the ones. (Balance cannot show a leak of a party's
    own uniformly random share bits: the leak harness of test_leaks.py looks for values instead.)"""
    from mpcformer.mpc.launcher import run_local

    import coarse_sign_party_fns as fns

    n = 64 * 64 + 37  # not a multiple of 64: the packed words end in padding
    results = run_local(fns.constant_signs_tapped, args=(str(tmp_path), n), timeout_s=240)
    assert results[0]["bits"] == [1.0] * n
    for rank in (0, 1):
        honest = [t for t in load_transfers(tmp_path / f"honest-party{rank}.pt") if t.held]
        assert len(honest) >= 7, "the tap saw fewer collectives than the protocol's rounds"
        for transfer in honest:
            assert _unbalanced_chunks(transfer.held) == [], (transfer.op, transfer.index)
        leaky = [t for t in load_transfers(tmp_path / f"leaky-party{rank}.pt") if t.held]
        assert any(1.0 in _unbalanced_chunks(t.held) for t in leaky)
