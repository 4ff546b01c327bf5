"""The approximation registry: plaintext vs encrypted forms under real 2-party MPC (+ TTP dealer,
16 fractional bits), registry errors, combination parsing, the ``approximations`` CLI table."""

from __future__ import annotations

import json

import pytest
import torch

from mpcformer.approx import Approximation, Combo, UnknownApproximation, get, list_approximations, register
from mpcformer.approx.registry import InvalidApproximationParams
from mpcformer.cli import main

# Max |encrypted - plaintext| at 16 fractional bits, plus a relative part for large outputs. The
# exact baselines carry CrypTen's limit-exp error ((1 + x/256)^256 vs e^x); the rest are tight.
TOLERANCE = {
    "gelu": 3e-3, "quad": 5e-4, "relu": 5e-4, "puma-gelu": 5e-4,
    "softmax": 5e-3, "2quad": 5e-4, "2relu": 5e-4, "lim-softmax": 5e-4, "taylor-softmax": 5e-4,
}
DEFAULT_TOLERANCE = 5e-3  # for approximations registered after this test was written
RELATIVE = 1e-4
# non-default parameters checked as well: (name, params, tolerance)
VARIANTS = [("2quad", {"c": 1.0}, 5e-4), ("lim-softmax", {"n": 6.0}, 5e-4), ("taylor-softmax", {"order": 4.0}, 2e-3)]
# (order 4: four products of random-share truncations feed the reciprocal; 5e-4 was exceeded once, 5.1e-4)


def _key(name: str, params: dict[str, float]) -> str:
    return name + "".join(f"[{k}={v:g}]" for k, v in params.items())


def _cases() -> list[tuple[str, dict[str, float], float]]:
    defaults = [(a.name, dict(a.params), TOLERANCE.get(a.name, DEFAULT_TOLERANCE)) for a in list_approximations()]
    return defaults + VARIANTS


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Activations on [-8, 8] plus outliers to +-50; attention scores ~ N(0, 4^2) (B=2, H=3, Tq=5,
    Tk=9) whose second sequence has 3 padded keys; one row with a wide spread (scale 12)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.linspace(-8, 8, 161), torch.tensor([-50.0, -30.0, -19.5, 19.5, 30.0, 50.0])])
    scores = torch.randn(2, 3, 5, 9, generator=gen) * 4
    scores[0, 0, 0] *= 3
    mask = torch.ones(2, 1, 1, 9)
    mask[1, ..., 6:] = 0
    return x, scores, mask


def all_encrypted(rank: int, x: list, scores: list, mask: list) -> dict[str, list]:
    """Party function: every registered approximation's encrypted form on the shared inputs."""
    from mpcformer.mpc.compat import crypten

    x_enc = crypten.cryptensor(torch.tensor(x), src=0)
    scores_enc = crypten.cryptensor(torch.tensor(scores), src=1)
    public_mask = torch.tensor(mask)
    out = {}
    for name, params, _ in _cases():
        approx = get(name)
        if approx.kind == "activation":
            y = approx.encrypted(x_enc, **params)
        else:
            y = approx.encrypted(scores_enc, public_mask, **params)
        out[_key(name, params)] = y.get_plain_text().tolist()
    return out


@pytest.fixture(scope="module")
def encrypted_outputs() -> dict[str, torch.Tensor]:
    from mpcformer.mpc.config import MPCConfig
    from mpcformer.mpc.launcher import run_local

    x, scores, mask = _inputs()
    config = MPCConfig(precision_bits=16, dealer="ttp", timeout_s=120)
    results = run_local(all_encrypted, args=(x.tolist(), scores.tolist(), mask.tolist()), config=config, timeout_s=300)
    return {name: torch.tensor(values) for name, values in results[0].items()}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name, params, tolerance", _cases(), ids=[_key(n, p) for n, p, _ in _cases()])
def test_encrypted_form_matches_plaintext_under_mpc(name, params, tolerance, encrypted_outputs):
    approx = get(name)
    x, scores, mask = _inputs()
    reference = approx.plain(x, **params) if approx.kind == "activation" else approx.plain(scores, mask, **params)
    got = encrypted_outputs[_key(name, params)]
    assert got.shape == reference.shape
    error = (got - reference).abs() - RELATIVE * reference.abs()
    assert error.max().item() <= tolerance, f"{_key(name, params)}: max error {error.max().item():.2e}"
    if approx.kind == "normaliser":  # padded keys get (close to) nothing
        assert got[1, ..., 6:].abs().max().item() < 1e-3


@pytest.mark.parametrize("approx", list_approximations("normaliser"), ids=lambda a: a.name)
def test_plaintext_normalisers_give_masked_keys_exactly_zero(approx):
    _, scores, mask = _inputs()
    probs = approx.plain(scores, mask, **approx.params)
    assert torch.equal(probs[1, ..., 6:], torch.zeros_like(probs[1, ..., 6:]))
    assert (probs >= 0).all()
    sums = probs.sum(-1)
    if approx.name == "2relu":  # ReLU(s)/(sum ReLU + eps n): slightly below 1 by design
        assert (sums <= 1.0).all() and sums.mean() > 0.9
    else:
        assert torch.allclose(sums, torch.ones(2, 3, 5), atol=1e-5)


def test_plaintext_softmax_equals_torch_softmax_with_additive_mask():
    _, scores, mask = _inputs()
    expected = torch.softmax(scores + (1 - mask) * torch.finfo(torch.float32).min, dim=-1)
    assert torch.allclose(get("softmax").plain(scores, mask), expected, atol=1e-6)


def test_new_approximations_track_their_targets():
    x = torch.linspace(-10, 10, 2001)
    assert (get("puma-gelu").plain(x) - torch.nn.functional.gelu(x)).abs().max() < 2.1e-2  # PUMA: 2.0e-2 at x -> 3
    _, scores, mask = _inputs()
    softmax = get("softmax").plain(scores, mask)
    coarse, fine = (get("lim-softmax").plain(scores, mask, n=n) for n in (2.0, 6.0))
    assert (fine - softmax).abs().max() < (coarse - softmax).abs().max()
    assert (fine - softmax).abs().max() < 2e-2


def test_unknown_names_list_the_known_ones():
    with pytest.raises(UnknownApproximation, match="known: .*quad.*relu"):
        get("cubic", "activation")
    with pytest.raises(UnknownApproximation, match="unknown normaliser 'quad'"):
        get("quad", "normaliser")  # right name, wrong kind
    with pytest.raises(UnknownApproximation, match="known:.*2quad"):
        Combo.parse("quad+softmin")


def test_register_refuses_duplicates_bad_kinds_and_bad_names():
    quad = get("quad")
    with pytest.raises(ValueError, match="already registered"):
        register(quad)
    with pytest.raises(ValueError, match="kind"):
        register(Approximation("cube", "pooling", "x^3", quad.plain, quad.encrypted))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="without '\\+'"):
        register(Approximation("a+b", "activation", "x", quad.plain, quad.encrypted))


def test_combo_parsing():
    exact = Combo.parse("exact")
    assert (exact.activation, exact.normaliser, exact.name, exact.is_exact) == ("gelu", "softmax", "exact", True)
    assert Combo.parse(" gelu+softmax ") == exact
    combo = Combo.parse("quad+2quad")
    assert (combo.activation, combo.normaliser, combo.name, combo.is_exact) == ("quad", "2quad", "quad+2quad", False)
    for bad in ("quad", "quad+", "+2quad", "quad+2quad+relu", ""):
        with pytest.raises(UnknownApproximation, match="must be '<activation>\\+<normaliser>'"):
            Combo.parse(bad)
    with pytest.raises(UnknownApproximation, match="unknown activation '2quad'"):
        Combo.parse("2quad+quad")  # kinds swapped


def test_combo_params_are_validated_and_applied():
    with pytest.raises(InvalidApproximationParams, match="no parameter.*'d'.*takes \\['c'\\]"):
        Combo.parse("quad+2quad", normaliser_params={"d": 1.0})
    with pytest.raises(InvalidApproximationParams, match="takes none"):
        Combo.parse("quad+2quad", activation_params={"c": 1.0})
    with pytest.raises(InvalidApproximationParams, match="c must be in"):
        Combo.parse("quad+2quad", normaliser_params={"c": -1.0})
    with pytest.raises(InvalidApproximationParams, match="integer in 1..8"):
        Combo.parse("relu+lim-softmax", normaliser_params={"n": 2.5})
    _, scores, mask = _inputs()
    default, shifted = Combo.parse("quad+2quad"), Combo.parse("quad+2quad", normaliser_params={"c": 4.0})
    assert torch.allclose(shifted.normaliser_fn()(scores, mask), get("2quad").plain(scores, mask, c=4.0))
    assert not torch.allclose(default.normaliser_fn()(scores, mask), shifted.normaliser_fn()(scores, mask))


def test_combo_round_trips_through_its_dict_and_hashes():
    combo = Combo.parse("relu+2relu", normaliser_params={"eps": 0.1})
    data = combo.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert Combo.from_dict(data) == combo
    assert hash(Combo.from_dict(data)) == hash(combo)
    assert len({combo, Combo.from_dict(data), Combo.parse("exact")}) == 2
    with pytest.raises(UnknownApproximation, match="unknown field"):
        Combo.from_dict({**data, "temperature": 1.0})


def test_cli_prints_the_registry_as_a_table(capsys):
    assert main(["approximations"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["name", "kind", "formula", "params", "reference"]
    assert len(lines) == 2 + len(list_approximations())
    body = "\n".join(lines[2:])
    for approx in list_approximations():
        assert approx.name in body
    assert "c=5" in body and "PUMA" in body


def test_cli_json_and_kind_filter(capsys):
    assert main(["approximations", "--json", "--kind", "normaliser"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in records] == [a.name for a in list_approximations("normaliser")]
    assert {r["kind"] for r in records} == {"normaliser"}
    assert next(r for r in records if r["name"] == "2quad")["params"] == {"c": 5.0}
