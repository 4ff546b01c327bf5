"""Exact truncation (mpcformer.mpc.truncation): the unsigned division and the dealer's values are
right bit for bit; in a 2-party session 10^5 products of magnitude ~2^20 are all within one unit
of the exact quotient while CrypTen's local division gets the expected few off by ~2^32; division
by any public integer, by a tensor of them and by a public float; the encrypted model still matches
plaintext and the leak harness finds nothing with it on; the bench's flags and its risk field."""

from __future__ import annotations

import math
import random

import pytest
import torch

from mpcformer.mpc import truncation
from mpcformer.mpc.config import MPCConfig
from mpcformer.mpc.launcher import run_local

import truncation_party_fns as fns

SCALE = 1 << 16  # CrypTen's default 16 fractional bits
PRODUCTS = 100_000
DIVISORS = [3, 1000, SCALE, -7]


def _edge_values() -> torch.Tensor:
    edges = [0, 1, -1, 2**62, -(2**62), 2**63 - 1, -(2**63), 2**32, -(2**32) - 1]
    rng = random.Random(1)
    return torch.tensor(edges + [rng.randrange(-(2**63), 2**63) for _ in range(20_000)], dtype=torch.int64)


@pytest.mark.parametrize("y", [2, 3, 7, 1000, SCALE, 2**40 + 1, 2**61])
def test_unsigned_floordiv_reads_int64_as_unsigned(y):
    v = _edge_values()
    got = truncation.unsigned_floordiv(v, y).tolist()
    want = [((x % 2**64) // y) for x in v.tolist()]  # Python ints: exact
    assert [g % 2**64 for g in got] == want


def test_dealer_values_pair_each_mask_with_its_quotient_and_top_bit():
    r = _edge_values()[:2000]
    out = truncation.dealer_values(r, 1000)
    masks = [x % 2**64 for x in r[0::2].tolist()]
    assert out[0::2].tolist() == [m // 1000 for m in masks]
    assert out[1::2].tolist() == [m >> 63 for m in masks]
    with pytest.raises(ValueError, match="even"):
        truncation.dealer_values(r[:3], 1000)


def test_the_runtime_replaces_and_restores_cryptens_division_where_it_applies():
    from crypten.mpc.primitives import ArithmeticSharedTensor

    from mpcformer.mpc.config import MPCConfig
    from mpcformer.mpc.runtime import Runtime

    original = ArithmeticSharedTensor.div_
    runtime = Runtime(MPCConfig(exact_truncation=True), parties=2).install()
    try:
        assert runtime.applied("truncation") and ArithmeticSharedTensor.div_ is not original
    finally:
        runtime.restore()
    assert ArithmeticSharedTensor.div_ is original
    for config, parties in ((MPCConfig(exact_truncation=True), 3), (MPCConfig(exact_truncation=False), 2),
                            (MPCConfig(exact_truncation=True, randomness="crypten-insecure-baseline"), 2)):
        assert not truncation.exact_under(config, parties)
        runtime = Runtime(config, parties).install()
        try:
            assert ArithmeticSharedTensor.div_ is original
        finally:
            runtime.restore()


def _operands(count: int) -> tuple[list[float], list[float]]:
    """Values with 6 fractional bits (exact at 16) of magnitude 2^10 and random signs: products ~2^20,
    2^52 in the ring before truncation."""
    gen = torch.Generator().manual_seed(7)

    def draw() -> torch.Tensor:
        magnitude = 2**10 + torch.randint(0, 2**fns.VALUE_BITS, (count,), generator=gen) / 2**fns.VALUE_BITS
        return magnitude * (torch.randint(0, 2, (count,), generator=gen) * 2 - 1)

    return draw().tolist(), draw().tolist()


@pytest.fixture(scope="module")
def session():
    a, b = _operands(PRODUCTS)
    results = run_local(fns.products_both_ways, args=(a, b, DIVISORS), timeout_s=240)
    for mode in ("crypten", "exact"):  # both parties revealed the same values
        assert {k: v for k, v in results[0][mode].items() if k != "product_rounds"} == \
            {k: v for k, v in results[1][mode].items() if k != "product_rounds"}
    encoded_a = torch.tensor([round(v * SCALE) for v in a], dtype=torch.int64)
    encoded_b = torch.tensor([round(v * SCALE) for v in b], dtype=torch.int64)
    return {"a": encoded_a, "ring": encoded_a * encoded_b, "results": results[1]}  # |a·b| < 2^63


def _off_by(got: list[int], ring: torch.Tensor, y: int) -> torch.Tensor:
    """``got`` minus ``⌊ring / y⌋``."""
    return torch.tensor(got, dtype=torch.int64) - torch.div(ring, y, rounding_mode="floor")


def test_exact_products_are_never_off_and_round_without_bias(session):
    ring = session["ring"]
    off = _off_by(session["results"]["exact"]["product"], ring, SCALE)
    assert set(off.unique().tolist()) <= {0, 1}, f"off by {off.abs().max().item()} units"
    fraction = (ring % SCALE).double() / SCALE  # the +1 comes with probability frac(x / y)
    assert abs(off.double().mean() - fraction.mean()).item() < 0.01


def test_cryptens_division_fails_as_often_as_expected(session):
    ring = session["ring"]
    expected = (ring.abs().double() / 2.0**64).sum().item()  # P(the shares wrap) = |x| / 2^64 each
    assert 20 < expected < 30
    off = _off_by(session["results"]["crypten"]["product"], ring, SCALE)
    failures = off.abs() > 2**40
    assert ((off[failures].abs() - 2**48).abs() <= 2).all()  # 2^64 / 2^16 units: 2^32 in real units
    assert (off[~failures].abs() <= 2).all()
    low, high = expected - 5 * math.sqrt(expected), expected + 5 * math.sqrt(expected)  # Poisson, 5 sigma
    assert low < failures.sum().item() < high


def test_exact_truncation_takes_one_more_round_per_product(session):
    results = session["results"]
    assert results["exact"]["product_rounds"] == results["crypten"]["product_rounds"] + 1


def test_public_floats_and_integer_divisors(session):
    a = session["a"][:1000]
    results = session["results"]["exact"]
    off = _off_by(results["public_float"], a * round(0.75 * SCALE), SCALE)
    assert set(off.unique().tolist()) <= {0, 1}
    for y in DIVISORS:
        quotient = torch.div(a, abs(y), rounding_mode="floor") * (1 if y > 0 else -1)
        off = torch.tensor(results["divided"][str(y)]) - quotient
        allowed = {0, 1} if y > 0 and SCALE % y == 0 else {-1, 0, 1}
        assert set(off.unique().tolist()) <= allowed, f"divided by {y}: off by {off.abs().max().item()}"
    divisors = torch.tensor([1, 3, 16, 1000]).repeat(250)
    off = torch.tensor(results["by_tensor"]) - torch.div(a, divisors, rounding_mode="floor")
    assert set(off.unique().tolist()) <= {-1, 0, 1} and (off[divisors == 1] == 0).all()


def test_encrypted_model_matches_plaintext_with_exact_truncation(sst2_dir):
    from test_encrypted_model import TOLERANCE, _job, _reference, _tokenize

    import encrypted_model_fns

    batch = _tokenize(sst2_dir, 2, 16)
    jobs = [_job("tiny-bert", combo, batch) for combo in ("exact", "quad+2quad")]
    _, client = run_local(
        encrypted_model_fns.private_inference_jobs, args=(jobs,), config=MPCConfig(exact_truncation=True), timeout_s=300
    )
    for job, result in zip(jobs, client):
        error = (torch.tensor(result["logits"]) - _reference("tiny-bert", job["combo"], batch)).abs().max().item()
        assert error < TOLERANCE["tiny-bert"], f"{job['combo']}: max |logit error| {error:.4f}"


def test_bench_flags_set_exact_truncation_and_bench_json_records_it(monkeypatch, tmp_path):
    from mpcformer.bench import runner
    from mpcformer.cli import main

    seen = []

    def fake_run_bench(cfg, **_):
        seen.append(cfg)
        raise SystemExit(0)

    monkeypatch.setattr(runner, "run_bench", fake_run_bench)
    for flags in ([], ["--exact-truncation"], ["--no-exact-truncation"]):
        with pytest.raises(SystemExit):
            main(["bench", *flags, "--out", str(tmp_path)])
    assert [cfg.mpc.exact_truncation for cfg in seen] == [MPCConfig().exact_truncation, True, False]
    assert seen[1].model_dump(mode="json")["mpc"]["exact_truncation"] is True  # bench.json's "settings"


def test_bench_reports_the_expected_share_of_corrupted_sequences():
    from mpcformer.bench.report import render_markdown
    from mpcformer.bench.runner import BenchConfig, _truncation_risk, run_bench

    cfg = BenchConfig(model="tiny", seq_len=16, approx=["quad+2quad"], truncation_risk=True, warmup=False)
    report = run_bench(cfg)
    risk = report["combinations"][0]["truncation"]
    assert risk["exact"] is False and risk["failures_seen"] == 0
    assert 0 < risk["p_sequence_corrupted"] <= risk["expected_corrupted_per_sequence"] < 1e-3  # tiny's magnitudes
    assert risk["elements_truncated_per_sequence"] > 10_000 and "% of sequences with one" in render_markdown(report)
    exact = cfg.model_copy(update={"mpc": MPCConfig(exact_truncation=True)})  # no extra forward: nothing to measure
    report = {**report, "combinations": [{**report["combinations"][0], "truncation": _truncation_risk(exact, None)}]}
    assert "quad+2quad: exact" in render_markdown(report)


def test_a_forward_whose_truncation_failed_is_reported_not_a_crash():
    """A seen failure spreads (every later value is garbage): the recorded P reaches 1.0."""
    from mpcformer.bench.runner import BenchConfig, _truncation_risk

    tallies = {"p_sequence_corrupted": 1.0, "expected_corrupted": 2.5e5, "elements": 4e7, "failures_seen": 2.4e5,
               "expected_by_category": {"attention-matmul": 2e4}}
    for batch_size in (1, 4):
        risk = _truncation_risk(BenchConfig(model="tiny", batch_size=batch_size), tallies)
        assert risk["p_sequence_corrupted"] == 1.0 and risk["failures_seen"] == 2.4e5


def test_exact_under_names_the_configs_that_truncate_exactly():
    assert truncation.exact_under(MPCConfig(exact_truncation=True))
    assert not truncation.exact_under(MPCConfig())
    assert not truncation.exact_under(MPCConfig(exact_truncation=True, device="cuda"))
    assert not truncation.exact_under(MPCConfig(exact_truncation=True, randomness="crypten-insecure-baseline"))
    stock_steps = dict(overlap_dealer=False, fast_matmul=False, stream_triples=False)
    assert not truncation.exact_under(MPCConfig(exact_truncation=True, **stock_steps))


def test_private_inference_with_exact_truncation_leaks_nothing(tmp_path):
    """The leak harness of tests/test_leaks.py on tiny quad+2quad with exact truncation: its openings
    (c = x + K + r) hold no secret, and the client's logits are still right."""
    from mpcformer.inference.protocol import plaintext_logits
    from leak_tap import describe_leaks, find_leaks, load_transfers, pair_exchanges
    from test_leaks import TINY_SEED, _tiny_secrets

    import leak_party_fns

    model, ids, mask = _tiny_leak_inputs()
    results = run_local(
        leak_party_fns.private_inference_tapped,
        args=(str(tmp_path), "tiny", ["quad+2quad"], ids.tolist(), mask.tolist(), TINY_SEED),
        config=MPCConfig(exact_truncation=True), timeout_s=300, threads_per_party=1,
    )
    logits = torch.tensor(results[1]["quad+2quad"]["logits"])
    assert torch.allclose(logits, plaintext_logits(model, "quad+2quad", ids, mask), atol=5e-2)
    transfers = load_transfers(tmp_path / "quad+2quad-party0.pt", tmp_path / "quad+2quad-party1.pt")
    assert len(pair_exchanges(transfers)) > 10
    leaks = find_leaks(transfers, _tiny_secrets(model, "quad+2quad", ids, mask))
    assert leaks == [], describe_leaks(leaks)


def _tiny_leak_inputs():
    """The tiny model and inputs of tests/test_leaks.py (2 sentences of 12 tokens, one padded)."""
    from mpcformer.models.presets import load_preset
    from test_leaks import TINY_SEED

    model, _ = load_preset("tiny", num_labels=2, seed=TINY_SEED)
    vocab = model.config.vocab_size
    ids = torch.randint(min(1000, vocab // 2), vocab, (2, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    return model.eval(), ids, mask


def test_truncation_streams_share_the_dealers_values_of_one_mask():
    """Both parties' ``trunc/<y>`` draws (party 0's from the dealer's ranges) add up to ⌊r/y⌋ and
    msb(r) of the mask r = r_0 + r_1 they hold, across ranges."""
    from mpcformer.mpc import triple_stream as ts

    keys = [bytes(range(16)), bytes(range(16, 32))]  # 128-bit keys, as sessions bind
    ask = lambda kind, start, count: (kind, start, count)  # noqa: E731
    owner = ts.PartyStreams(0, keys[0], "cpu", ask, lambda handle: ts.dealer_chunk(keys, *handle))
    client = ts.PartyStreams(1, keys[1], "cpu", ask, lambda handle: None)
    for n in (5, ts.CHUNK_ELEMENTS, 3):
        mine, theirs = (p.take(truncation.stream_kind(1000), torch.Size([2 * n])) for p in (owner, client))
        r = [(a + b) % 2**64 for a, b in zip(mine["r"][0::2].tolist(), theirs["r"][0::2].tolist())]
        c = (mine["c"] + theirs["c"]).tolist()
        assert [x % 2**64 for x in c[0::2]] == [v // 1000 for v in r] and c[1::2] == [v >> 63 for v in r]
    assert owner.position["trunc/1000"] == client.position["trunc/1000"] == 2 * (ts.CHUNK_ELEMENTS + 8)


def test_padded_tokens_cannot_reach_real_ones_through_attention():
    """Padded tokens' values are unbounded under MPC (their statistics lie outside the fitted ranges).
    Exact truncation rounds a normaliser's masked zero to one unit when it divides by a count of real
    keys that is not a power of two, so ``probs @ V`` would carry 2^-16 of a padded value into every
    real token; the attention zeroes padded pairs on the shares, exactly, under both divisions."""
    from mpcformer.approx.registry import Combo

    gen = torch.Generator().manual_seed(3)
    heads, tokens = 12, 16
    mask = [[1] * 3 + [0] * (tokens - 3), [1] * tokens]  # 3 real keys: divisor 3·32, not a power of two
    real = torch.tensor(mask, dtype=torch.bool)
    scores = torch.randn(2, heads, tokens, tokens, generator=gen)
    values = torch.randn(2, heads, tokens, 4, generator=gen)
    values[0, :, 3:] = 2.0**30  # padded tokens' values, as a diverged padded row leaves them
    scores[0, :, 3:] = 2.0**8  # padded query rows far outside the reciprocal's range
    combo = "quad+2quad-fit"
    results = run_local(fns.padded_attention, args=(scores.tolist(), values.tolist(), mask, combo), timeout_s=240)[1]
    key_mask = torch.tensor(mask, dtype=torch.float32)[:, None, None, :]
    reference = Combo.parse(combo).normaliser_fn()(scores, key_mask) @ values.masked_fill(~real[:, None, :, None], 0.0)
    for mode in ("crypten", "exact"):
        zeroed = results[f"{mode}/zeroed"]
        assert set(zeroed["padded_pairs"]) == {0}, f"{mode}: a padded pair is not exactly zero"
        error = (torch.tensor(zeroed["context"]) - reference).abs()
        for b in range(2):
            assert error[b][:, real[b]].max() < 0.01, f"{mode}: sequence {b}'s real tokens are off"
    # the failure it prevents, on the same values: exact truncation without the zeroing (any of the
    # 12 x 3 x 13 masked zeros of real queries may come out one unit off: 78 did in one run)
    leaked = (torch.tensor(results["exact/as normalised"]["context"]) - reference).abs()[0][:, real[0]].max()
    assert leaked > 1.0, f"without the zeroing no padded value reached a real token ({leaked:.3g})"
