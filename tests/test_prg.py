"""AES-CTR draws (mpcformer.mpc.prg): the same stream for generators keyed alike, full-range ring
elements, k-bit values in range, no draw without a key, CrypTen's modules switched and restored,
and a session using it."""

from __future__ import annotations

import contextlib
import importlib

import pytest
import torch

from mpcformer.mpc import prg
from mpcformer.mpc.config import MPCConfig
from mpcformer.mpc.runtime import Runtime

IMPORTERS = ("crypten.common.rng", "crypten.mpc.primitives.arithmetic", "crypten.mpc.provider.ttp_provider")


@contextlib.contextmanager
def _runtime(randomness: str = "os"):
    """The patches of a session with this randomness, in this process (no session opened)."""
    runtime = Runtime(MPCConfig(randomness=randomness), parties=2).install()
    try:
        yield runtime
    finally:
        runtime.restore()


def _seeded(seed: int) -> torch.Generator:
    """A generator keyed by a test key made from ``seed`` (sessions bind OS keys)."""
    generator = torch.Generator()
    prg.bind_key(generator, seed.to_bytes(prg.KEY_BYTES, "little"))
    return generator


def test_generators_keyed_alike_draw_the_same_stream_call_for_call():
    a, b, other = _seeded(11), _seeded(11), _seeded(12)
    for size in [(3, 4), (1,), (128, 7), (0,)]:
        assert torch.equal(prg.random_ring_elements(size, a), prg.random_ring_elements(size, b))
    assert not torch.equal(prg.random_ring_elements((64,), a), prg.random_ring_elements((64,), other))


def test_rebinding_starts_the_new_keys_stream():
    g = _seeded(5)
    prg.random_ring_elements((16,), g)
    prg.bind_key(g, (6).to_bytes(prg.KEY_BYTES, "little"))
    assert torch.equal(prg.random_ring_elements((16,), g), prg.random_ring_elements((16,), _seeded(6)))


def test_a_generator_without_a_key_never_falls_back_to_torch():
    with pytest.raises(RuntimeError, match="without an OS key"):
        prg.random_ring_elements((4,), torch.Generator().manual_seed(1))
    with pytest.raises(ValueError):
        prg.bind_key(torch.Generator(), b"short")


def test_ring_elements_cover_the_whole_int64_range_uniformly():
    draws = prg.random_ring_elements((200_000,), _seeded(1))
    assert draws.dtype == torch.int64 and draws.shape == (200_000,)
    assert draws.min() < -(2**62) and draws.max() > 2**62  # both halves of the ring
    top_bits = (draws >> 60) & 0xF  # 16 buckets of the top 4 bits, 12,500 expected in each
    counts = torch.bincount(top_bits, minlength=16)
    assert counts.min() > 11_500 and counts.max() < 13_500


def test_kbit_tensors_stay_in_range():
    with _runtime():
        rng = importlib.import_module("crypten.common.rng")
        for bits in (1, 20, 63):
            values = rng.generate_kbit_random_tensor((50_000,), bitlength=bits, generator=_seeded(bits))
            assert values.min().item() >= 0 and values.max().item() < 2**bits
            assert values.max().item() >= 2 ** (bits - 1)  # the top bit is drawn
        full = rng.generate_kbit_random_tensor((1000,), generator=_seeded(3))
        assert full.min() < 0  # 64 bits: signed ring elements


def test_the_runtime_switches_cryptens_draws_and_restores_them():
    originals = {m: importlib.import_module(m).generate_random_ring_element for m in IMPORTERS}
    with _runtime() as runtime:
        assert runtime.applied("prg")
        for module in IMPORTERS:
            assert importlib.import_module(module).generate_random_ring_element is prg.generate_random_ring_element
    for module in IMPORTERS:
        assert importlib.import_module(module).generate_random_ring_element is originals[module]
    with _runtime("crypten-insecure-baseline") as runtime:  # CrypTen's own draws
        assert not runtime.applied("prg")
        for module in IMPORTERS:
            assert importlib.import_module(module).generate_random_ring_element is originals[module]


def test_other_ring_sizes_keep_torch_randint():
    with _runtime():
        rng = importlib.import_module("crypten.common.rng")
        small = rng.generate_random_ring_element((1000,), ring_size=2**16, generator=_seeded(2))
        assert small.min() >= -(2**15) and small.max() < 2**15


@pytest.mark.parametrize("randomness", ["os", "crypten-insecure-baseline"])
def test_a_session_draws_with_its_configured_prg_and_products_stay_exact(randomness):
    from mpcformer.mpc.config import MPCConfig
    from mpcformer.mpc.launcher import run_local

    import mpc_party_fns as fns

    results = run_local(fns.prg_product, args=(), config=MPCConfig(randomness=randomness), timeout_s=180)
    for party in results:
        assert party["aes_draws"] is (randomness == "os")
        assert party["product"] == pytest.approx(party["expected"], abs=2e-3)
