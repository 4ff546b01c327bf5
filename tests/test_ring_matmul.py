"""The exact ring (mod 2^64) matmul: bit-exact against torch's int64 matmul for every shape rule and
extreme value, and the CrypTen hook (on/off, protocol savings) in a real 2-party + dealer run."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpcformer.mpc import ring_matmul as rm
from mpcformer.mpc.compat import crypten  # noqa: F401  (imports CrypTen the supported way)
from mpcformer.mpc.config import MPCConfig
from mpcformer.mpc.ring_matmul import MAX_EXACT_CHUNK, ring_linear, ring_matmul
from mpcformer.mpc.runtime import MANIFEST, Runtime

pytestmark = pytest.mark.timeout(240)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: The value whose three balanced limbs all sit at their negative bound (-2^21, -2^20, -2^20):
#: the largest limb products, so the tightest case for float64 exactness.


def wrap(value: int) -> int:
    """``value`` modulo 2^64 as a signed int64."""
    value %= 2**64
    return value - 2**64 if value >= 2**63 else value


WORST_LIMBS = wrap(-(2**21) - (2**20 << 22) - (2**20 << 43))
EXTREMES = torch.tensor([INT64_MIN, INT64_MAX, 0, -1, 1, WORST_LIMBS, wrap(-WORST_LIMBS)])


def ring_values(shape: tuple[int, ...], seed: int, extreme_share: float) -> torch.Tensor:
    """Uniform int64 values with a share of them replaced by the extremes above."""
    gen = torch.Generator().manual_seed(seed)
    values = torch.randint(INT64_MIN, INT64_MAX, shape, dtype=torch.int64, generator=gen)
    pick = torch.rand(shape, generator=gen) < extreme_share
    extremes = EXTREMES[torch.randint(0, len(EXTREMES), shape, generator=gen)]
    return torch.where(pick, extremes, values)


dims = st.integers(min_value=1, max_value=9)
batch_shapes = st.lists(st.integers(min_value=1, max_value=3), max_size=2)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    m=dims, n=dims, k=st.one_of(st.integers(1, 64), st.integers(1000, 4200)),
    batch=batch_shapes, seed=st.integers(0, 2**31), extreme_share=st.sampled_from([0.0, 0.3, 1.0]),
)
def test_bit_exact_on_matrices_and_batches(m, n, k, batch, seed, extreme_share):
    a = ring_values((*batch, m, k), seed, extreme_share)
    b = ring_values((*batch, k, n), seed + 1, extreme_share)
    assert torch.equal(ring_matmul(a, b), torch.matmul(a, b))


@settings(max_examples=40, deadline=None)
@given(
    a_shape=st.sampled_from([(5,), (3, 5), (2, 3, 5), (2, 1, 3, 5), (1, 3, 5)]),
    b_shape=st.sampled_from([(5,), (5, 4), (2, 5, 4), (3, 1, 5, 4), (4, 5, 4)]),
    seed=st.integers(0, 2**31),
)
def test_broadcasting_and_vectors_follow_torch_matmul(a_shape, b_shape, seed):
    a, b = ring_values(a_shape, seed, 0.2), ring_values(b_shape, seed + 1, 0.2)
    try:
        expected = torch.matmul(a, b)
    except RuntimeError:  # shapes torch refuses to broadcast: ring_matmul must refuse too
        with pytest.raises((RuntimeError, ValueError)):
            ring_matmul(a, b)
        return
    got = ring_matmul(a, b)
    assert got.shape == expected.shape and got.dtype == torch.int64
    assert torch.equal(got, expected)


@pytest.mark.parametrize("k", [MAX_EXACT_CHUNK, MAX_EXACT_CHUNK + 1, 2 * MAX_EXACT_CHUNK + 3])
@pytest.mark.parametrize("value", [INT64_MIN, INT64_MAX, WORST_LIMBS])
def test_longest_exact_sums_at_chunk_edges(k, value):
    a, b = torch.full((2, k), value), torch.full((k, 3), value)
    assert torch.equal(ring_matmul(a, b), a @ b)


def test_bert_base_shape_and_attention_are_exact():
    a, b = ring_values((128, 768), 1, 0.01), ring_values((768, 3072), 2, 0.01)
    assert torch.equal(ring_matmul(a, b), a @ b)
    q, kt = ring_values((1, 12, 128, 64), 3, 0.01), ring_values((1, 12, 64, 128), 4, 0.01)
    assert torch.equal(ring_matmul(q, kt), q @ kt)


def test_empty_and_linear():
    assert torch.equal(ring_matmul(torch.zeros(3, 0, dtype=torch.long), torch.zeros(0, 4, dtype=torch.long)),
                       torch.zeros(3, 4, dtype=torch.long))
    assert ring_matmul(torch.zeros(0, 5, dtype=torch.long), ring_values((5, 2), 0, 0.5)).shape == (0, 2)
    x, weight, bias = ring_values((2, 4, 6), 5, 0.3), ring_values((3, 6), 6, 0.3), ring_values((3,), 7, 0.3)
    assert torch.equal(ring_linear(x, weight, bias), x @ weight.t() + bias)
    assert torch.equal(ring_linear(x, weight), x @ weight.t())


def test_refuses_non_ring_inputs_with_advice():
    with pytest.raises(TypeError, match="int64 CPU tensors.*torch.matmul"):
        ring_matmul(torch.ones(2, 2), torch.ones(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="inner dimensions"):
        ring_matmul(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 2, dtype=torch.long))
    with pytest.raises(ValueError):
        MPCConfig(matmul_kernel="fast")


def test_the_runtime_hook_routes_ring_products_and_leaves_other_tensors_alone():
    targets = [p.resolve_target() for p in MANIFEST if p.name == "ring_matmul"]
    runtime = Runtime(MPCConfig(matmul_kernel="limbs"), parties=2).install()
    try:
        assert runtime.applied("ring_matmul") and rm.active_kernel() == "limbs"
        stand_in = targets[0].torch
        assert stand_in is rm.TORCH_WITH_RING_MATMUL and all(module.torch is stand_in for module in targets)
        a, b = ring_values((64, 300), 8, 0.2), ring_values((300, 256), 9, 0.2)  # ≥ MIN_LIMB_MACS
        assert torch.equal(stand_in.matmul(a, b), a @ b)
        floats = torch.randn(3, 4), torch.randn(4, 2)
        assert torch.equal(stand_in.matmul(*floats), torch.matmul(*floats))  # floats: torch's own
        assert stand_in.Tensor is torch.Tensor and stand_in.long is torch.long
    finally:
        runtime.restore()
    assert rm.active_kernel() == "stock"
    assert all(module.torch is torch for module in targets)


def test_auto_kernel_measures_once_and_picks_a_kernel(monkeypatch):
    measured, measure = [], rm.measure_kernels
    monkeypatch.setattr(rm, "measure_kernels", lambda: measured.append(1) or {"stock": 1.0, "limbs": 0.5})
    monkeypatch.setattr(rm, "_measured", {})
    runtime = Runtime(MPCConfig(matmul_kernel="auto"), parties=2).install()
    try:
        assert rm.active_kernel() == "limbs" and rm.active_kernel() == "limbs"
        assert measured == [1]
    finally:
        runtime.restore()
    times = measure(m=8, k=64, n=32, repeats=1)
    assert set(times) == {"stock", "limbs"} and all(t > 0 for t in times.values())


@pytest.fixture(scope="module")
def two_party_products():
    from mpcformer.mpc.launcher import run_local

    import ring_matmul_party_fns as fns

    ints = {
        "x": ring_values((6, 40), 10, 0.1), "w": ring_values((40, 5), 11, 0.1),
        "q": ring_values((1, 2, 7, 8), 12, 0.1), "k": ring_values((1, 2, 7, 8), 13, 0.1),
    }
    gen = torch.Generator().manual_seed(14)
    floats = {"x": torch.randn(6, 40, generator=gen), "w": torch.randn(40, 5, generator=gen) / 40**0.5}
    results = run_local(
        fns.products_stock_then_fast,
        args=({n: t.tolist() for n, t in ints.items()}, {n: t.tolist() for n, t in floats.items()}),
        timeout_s=180,
    )
    return ints, floats, results


def test_encrypted_products_identical_with_fast_matmul_on_and_off(two_party_products):
    ints, floats, results = two_party_products
    expected = {
        "private": ints["x"] @ ints["w"],
        "attention": ints["q"] @ ints["k"].transpose(-2, -1),
        "public": ints["x"] @ ints["w"],
    }
    for party in results:
        for mode in ("stock", "fast"):
            for name, value in expected.items():
                assert torch.equal(torch.tensor(party[mode][name]), value), (mode, name)
        float_fast, float_stock = torch.tensor(party["fast"]["float"]), torch.tensor(party["stock"]["float"])
        reference = floats["x"] @ floats["w"]
        assert torch.allclose(float_fast, reference, atol=2e-3)
        assert torch.allclose(float_fast, float_stock, atol=2e-4)  # truncation may differ by an LSB


def test_fast_path_carries_every_product_with_two_matmuls_per_beaver(two_party_products):
    _, _, results = two_party_products
    for party in results:
        assert party["stock"]["ring_calls"] == 0
        # private and attention: 2 local matmuls each (3 in CrypTen); public: 1
        assert party["fast"]["ring_calls"] == 2 + 2 + 1


@settings(max_examples=40, deadline=None)
@given(
    m=dims, n=dims, k=st.one_of(st.integers(1, 64), st.integers(1000, 3100)),
    seed=st.integers(0, 2**31), extreme_share=st.sampled_from([0.0, 0.3, 1.0]),
)
def test_int8_digit_probe_is_bit_exact(m, n, k, seed, extreme_share):
    from int8_probe import int8_ring_matmul  # benchmarks/int8_probe.py, an experiment outside the package

    a, b = ring_values((m, k), seed, extreme_share), ring_values((k, n), seed + 1, extreme_share)
    assert torch.equal(int8_ring_matmul(a, b), a @ b)
