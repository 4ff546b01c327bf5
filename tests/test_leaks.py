"""Leak tests: nothing a party sends or reconstructs is the other party's secret in a trivial form.

Three layers:
- the detector alone, on synthetic traffic: every trivial form of a weight, of token ids and of
  one-hot rows is flagged; random ring elements and public structure (masks, sizes) are not;
- a real 2-party + dealer run of a toy encrypted model (one-hot lookup, quad, linear): honest
  traffic holds no secret, while a deliberately leaky phase (positive control) is flagged;
- private inference of the ``tiny`` preset under ``exact``, ``quad+2quad``, the few-rounds
  ``quad+2quad-fit+ln:fit`` (its ranges calibrated per LayerNorm, [CLS] apart) and the drop-in
  ``puma-gelu+softmax-coarse-max`` (comparisons by the coarse sign): no weight, token id, one-hot
  row, embedding or hidden state leaks, and the client's logits are still right.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from mpcformer.mpc.launcher import run_local

from leak_tap import (
    DEALER,
    Secret,
    Transfer,
    checkable,
    describe_leaks,
    find_leaks,
    load_transfers,
    pair_exchanges,
)

import leak_party_fns as fns

pytestmark = pytest.mark.timeout(600)  # a loaded 2-core machine can be 3x slower

SCALE = 2**16
OWNER, CLIENT = 0, 1


def _ring(*shape: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(-(2**63), 2**63 - 1, shape, dtype=torch.int64, generator=gen)


def _encode(x: torch.Tensor) -> torch.Tensor:
    return (x * SCALE).round().long()


def _sent(party: int, *tensors: torch.Tensor, to: int | None = None, index: int = 0) -> Transfer:
    to = 1 - party if to is None else to
    return Transfer(party, index, "broadcast", False, frozenset({to}), sent=list(tensors))


# ----------------------------------------------------------------------------- synthetic traffic
@pytest.fixture(scope="module")
def synthetic():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(32, 16, generator=gen) * 0.02  # a realistic weight scale: |w| ~ 0.02
    ids = torch.randint(1000, 30522, (2, 12), generator=gen)
    vocab = 30522
    secrets = [
        Secret.real("owner weight", weight, {OWNER}),
        Secret.token_ids("client ids", ids, {CLIENT}, vocab_size=vocab),
    ]
    return weight, ids, vocab, secrets


WEIGHT_FORMS = {
    "plaintext": lambda w: w,
    "transposed": lambda w: w.t().contiguous(),
    "fixed-point negated": lambda w: -_encode(w),
    "fixed-point slice": lambda w: _encode(w)[2:4].flatten(),
    "scaled float": lambda w: (w * SCALE).round(),
    "inside random": lambda w: torch.cat([_ring(500, seed=3), _encode(w.t()).flatten(), _ring(500, seed=4)]),
}


@pytest.mark.parametrize("form", sorted(WEIGHT_FORMS))
def test_detector_flags_trivial_forms_of_a_weight(synthetic, form):
    weight, _, _, secrets = synthetic
    transfers = [_sent(OWNER, _ring(4096), WEIGHT_FORMS[form](weight))]
    leaks = find_leaks(transfers, secrets)
    assert [leak.secret for leak in leaks] == ["owner weight"], describe_leaks(leaks)
    assert leaks[0].where == "sent" and leaks[0].to == frozenset({CLIENT})


def _one_hot(ids: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(ids, vocab)  # (B, T, V)


IDS_FORMS = {
    "ids": lambda ids, v: ids,
    "ids as floats": lambda ids, v: ids.float(),
    "fixed-point ids": lambda ids, v: ids * SCALE,
    "negated fixed-point ids": lambda ids, v: -ids * SCALE,
    "transposed ids": lambda ids, v: ids.t().contiguous(),
    "slice of a row": lambda ids, v: ids[1, 3:9],
    "one-hot": lambda ids, v: _one_hot(ids, v).float(),
    "fixed-point one-hot": lambda ids, v: _one_hot(ids, v) * SCALE,
    "one-hot transposed": lambda ids, v: _one_hot(ids, v).reshape(-1, v).t().contiguous(),
    "negated fixed-point one-hot rows": lambda ids, v: -_one_hot(ids[:, 2:8], v) * SCALE,
}


@pytest.mark.parametrize("form", sorted(IDS_FORMS))
def test_detector_flags_trivial_forms_of_token_ids(synthetic, form):
    _, ids, vocab, secrets = synthetic
    transfers = [_sent(CLIENT, _ring(4096), IDS_FORMS[form](ids, vocab))]
    leaks = find_leaks(transfers, secrets)
    assert [leak.secret for leak in leaks] == ["client ids"], describe_leaks(leaks)
    assert leaks[0].party == CLIENT and leaks[0].to == frozenset({OWNER})


def test_detector_ignores_random_shares_and_public_structure(synthetic):
    weight, ids, vocab, secrets = synthetic
    public = [
        torch.ones(2, 12), torch.zeros(4096, dtype=torch.int64), torch.arange(64),  # masks, padding, positions
        torch.tensor([2.0, 12.0, 16.0, 32.0] * 4),  # shapes
    ]
    transfers = [_sent(p, _ring(250_000, seed=10 + p), *public, index=p) for p in (OWNER, CLIENT)]
    assert find_leaks(transfers, secrets) == []


def test_detector_respects_who_may_know(synthetic):
    weight, ids, _, secrets = synthetic
    # the owner sending its weights to itself (a reduce onto party 0) is no leak; nor is the dealer's
    # answer to the client holding the client's ids
    own = Transfer(OWNER, 0, "reduce", False, frozenset(), sent=[_encode(weight)])
    back = Transfer(CLIENT, 1, "broadcast", True, frozenset(), received=[ids * SCALE])
    assert find_leaks([own, back], secrets) == []
    to_dealer = Transfer(OWNER, 2, "send_obj", True, frozenset({DEALER}), sent=[weight])
    leaks = find_leaks([to_dealer], secrets)
    assert len(leaks) == 1 and leaks[0].to == frozenset({DEALER}) and "dealer" in str(leaks[0])


def _reduction(party: int, share: torch.Tensor, op: str = "all_reduce", dst: int | None = None, how: str = "sum") -> Transfer:
    receivers = frozenset({1 - party}) if dst is None else frozenset({dst}) - {party}
    return Transfer(party, 0, op, False, receivers, sent=[share], reduce_op=how)


def test_reveals_are_found_from_paired_shares(synthetic):
    """No plaintext on the wire, but the shares of a reveal add up to the secret."""
    weight, _, _, secrets = synthetic
    mask = _ring(*weight.shape, seed=7)
    shares = (_encode(weight) - mask, mask)  # additive shares in Z_2^64
    revealed_to_all = [_reduction(p, shares[p]) for p in (OWNER, CLIENT)]
    assert find_leaks([_sent(OWNER, shares[0])], secrets) == []  # one share alone: uniform noise
    leaks = find_leaks(revealed_to_all, secrets)
    assert [(l.secret, l.where, l.to) for l in leaks] == [("owner weight", "learned", frozenset({OWNER, CLIENT}))]
    revealed_to_owner = [_reduction(p, shares[p], "reduce", dst=OWNER) for p in (OWNER, CLIENT)]
    assert find_leaks(revealed_to_owner, secrets) == []
    xor_shares = (_encode(weight) ^ mask, mask)  # binary shares reveal by XOR
    leaks = find_leaks([_reduction(p, xor_shares[p], how="xor") for p in (OWNER, CLIENT)], secrets)
    assert [l.secret for l in leaks] == ["owner weight"]


def test_a_legitimate_reveal_is_not_held_against_look_alike_secrets():
    """The client's logits may fall inside the range a dense weight table covers value by value;
    being a secret the client may know, the reveal is not compared with the weights."""
    gen = torch.Generator().manual_seed(4)
    weight = torch.randn(128, 64, generator=gen) * 0.02  # dense: a value every fixed-point step
    logits = torch.randn(16, 2, generator=gen) * 0.02  # 32 values in the same range
    secrets = [Secret.real("owner weight", weight, {OWNER}), Secret.real("logits", logits, {CLIENT}, tolerance=1e-3)]
    mask = _ring(*logits.shape, seed=8)
    shares = (_encode(logits) - mask, mask)
    to_client = [_reduction(p, shares[p], "reduce", dst=CLIENT) for p in (OWNER, CLIENT)]
    assert find_leaks(to_client, secrets) == []
    to_both = [_reduction(p, shares[p]) for p in (OWNER, CLIENT)]
    assert {l.secret for l in find_leaks(to_both, secrets)} >= {"logits"}  # the owner must not learn them


def test_unpaired_reductions_are_an_error():
    with pytest.raises(ValueError, match="different numbers of reductions"):
        pair_exchanges([_reduction(OWNER, _ring(4)), _reduction(OWNER, _ring(4)), _reduction(CLIENT, _ring(4))])


def test_low_entropy_secrets_are_not_checked():
    assert not checkable(Secret.real("LayerNorm weight", torch.ones(64), {OWNER}))
    assert checkable(Secret.real("weight", torch.randn(64), {OWNER}))
    assert not checkable(Secret.token_ids("ids", torch.tensor([[5, 6]]), {CLIENT}, vocab_size=10))


# ----------------------------------------------------------------------------- a real MPC run
V, H, O, B, T = 50, 16, 4, 2, 8


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(2, V, (B, T), generator=gen)
    table, weight, bias = torch.randn(V, H, generator=gen) * 0.5, torch.randn(O, H, generator=gen) * 0.3, torch.randn(O, generator=gen) * 0.1
    out = tmp_path_factory.mktemp("leaks")
    results = run_local(
        fns.linear_honest_then_leaky,
        args=(str(out), ids.tolist(), table.tolist(), weight.tolist(), bias.tolist(), V),
        timeout_s=450,
        threads_per_party=1,
    )
    emb = table[ids]  # (B, T, H)
    hidden = 0.125 * emb**2 + 0.25 * emb + 0.5
    logits = hidden @ weight.t() + bias  # (B, T, O)
    secrets = [
        Secret.real("owner table", table, {OWNER}),
        Secret.real("owner weight", weight, {OWNER}),
        Secret.token_ids("client ids", ids, {CLIENT}, vocab_size=V),
        Secret.real("client embeddings", emb, set()),
        Secret.real("hidden", hidden, set(), tolerance=0.002),
        Secret.real("logits", logits, {CLIENT}, tolerance=0.002),
    ]
    return out, results, logits, secrets


def _phase(out: Path, name: str) -> list[Transfer]:
    return load_transfers(out / f"{name}-party0.pt", out / f"{name}-party1.pt")


def test_toy_model_traffic_holds_no_secret_and_result_is_right(toy_run):
    out, results, logits, secrets = toy_run
    assert torch.allclose(torch.tensor(results[CLIENT]["logits"]), logits, atol=1e-3)
    assert results[OWNER]["logits"] is None
    transfers = _phase(out, "honest")
    assert any(t.with_dealer and t.received for t in transfers)  # the dealer's answers were seen
    assert sum(x.numel() for t in transfers for x in t.sent) > 3000  # Beaver openings, reveal shares
    assert sum(x.numel() for t in transfers for x in t.held) > 3000  # and what each party kept
    assert len(pair_exchanges(transfers)) == 3  # three openings; the reveal is point to point
    leaks = find_leaks(transfers, secrets)
    assert leaks == [], describe_leaks(leaks)


def test_cryptens_one_sided_reveal_leaves_the_logits_with_the_owner(toy_run):
    """Positive control of the 'held' path: CrypTen's get_plain_text(dst=client) is a gloo reduce,
    and party 0's buffer holds summed chunks of the client's logits after it."""
    out, _, logits, _ = toy_run
    client_only = Secret.real("logits", logits, {CLIENT}, tolerance=0.002)
    leaks = find_leaks(_phase(out, "stock"), [client_only])
    assert {(l.where, l.party) for l in leaks} == {("held", OWNER)}, describe_leaks(leaks)
    assert find_leaks(_phase(out, "honest"), [client_only]) == []


def test_deliberately_leaky_party_is_flagged(toy_run):
    """Positive control: plaintext sends and a decrypted intermediate must all be caught."""
    out, _, _, secrets = toy_run
    leaks = find_leaks(_phase(out, "leaky"), secrets)
    found = {(l.secret, l.where, l.party) for l in leaks}
    assert found == {
        ("owner weight", "sent", OWNER),  # transposed, fixed point, negated
        ("owner table", "sent", OWNER),  # one row, a plain list in an object
        ("client ids", "sent", CLIENT),  # one-hot transposed, and a fixed-point slice
        ("owner weight", "held", CLIENT),  # ... and what the receivers then hold
        ("owner table", "held", CLIENT),
        ("client ids", "held", OWNER),
        ("hidden", "learned", None),  # get_plain_text() to both parties
    }, describe_leaks(leaks)
    forms = " | ".join(l.form for l in leaks if l.secret == "client ids")
    assert "one-hot" in forms and "token ids" in forms


# ----------------------------------------------------------------------------- private inference
TINY_COMBOS = ("exact", "quad+2quad", "quad+2quad-fit+ln:fit", "puma-gelu+softmax-coarse-max")
TINY_SEED = 0


@pytest.fixture(scope="module")
def tiny_inputs():
    from mpcformer.approx import Combo
    from mpcformer.models.presets import load_preset
    from mpcformer.models.surgery import CALIBRATION_KEY, calibrate_layernorms

    model, _ = load_preset("tiny", num_labels=2, seed=TINY_SEED)
    model.eval()
    gen = torch.Generator().manual_seed(2)
    vocab = model.config.vocab_size
    ids = torch.randint(min(1000, vocab // 2), vocab, (2, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # one padded sentence
    # the owner's ln:fit ranges, per LayerNorm (public; the other combinations ignore them)
    record = calibrate_layernorms(copy.deepcopy(model), Combo.parse("quad+2quad-fit+ln:fit"),
                                  [{"input_ids": ids, "attention_mask": mask}])
    setattr(model.config, CALIBRATION_KEY, record)
    return model, ids, mask


@pytest.fixture(scope="module")
def tiny_run(tiny_inputs, tmp_path_factory):
    from mpcformer.models.surgery import CALIBRATION_KEY

    model, ids, mask = tiny_inputs
    out = tmp_path_factory.mktemp("tiny-leaks")
    results = run_local(
        fns.private_inference_tapped,
        args=(str(out), "tiny", list(TINY_COMBOS), ids.tolist(), mask.tolist(), TINY_SEED,
              getattr(model.config, CALIBRATION_KEY)),
        timeout_s=450,
        threads_per_party=1,
    )
    return model, ids, mask, out, results


def _tiny_secrets(model: torch.nn.Module, combo: str, ids: torch.Tensor, mask: torch.Tensor) -> list[Secret]:
    from mpcformer.approx import Combo
    from mpcformer.models.surgery import approximate

    weights = [Secret.real(f"owner {name}", value, {OWNER}) for name, value in model.state_dict().items() if value.is_floating_point()]
    approximated = approximate(copy.deepcopy(model), Combo.parse(combo)).eval()
    with torch.no_grad():
        out = approximated(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    word_embeddings = model.get_input_embeddings().weight.detach()
    real_tokens = mask.bool()
    hidden = torch.stack(out.hidden_states)[:, real_tokens]  # (layers + 1, real tokens, H)
    return weights + [
        Secret.token_ids("client ids", ids, {CLIENT}, vocab_size=model.config.vocab_size),
        Secret.real("client token embeddings", word_embeddings[ids][real_tokens], set()),
        Secret.real("hidden states", hidden, set(), tolerance=0.02),
        Secret.real("logits", out.logits, {CLIENT}, tolerance=0.02, min_matches=4, min_distinct=4),
    ]


def test_tiny_secrets_would_be_found(tiny_inputs):
    """Control for the settings below: with the same secrets, a decrypted hidden state (off by the
    encrypted forward's error) and a transposed fixed-point weight in random traffic are flagged."""
    model, ids, mask = tiny_inputs
    secrets = _tiny_secrets(model, "quad+2quad", ids, mask)
    hidden = next(s for s in secrets if s.name == "hidden states").values
    noisy = hidden[1] + (torch.rand(hidden[1].shape, generator=torch.Generator().manual_seed(3)) - 0.5) * 0.02
    mask_ring = _ring(*noisy.shape, seed=5)
    revealed = [_reduction(p, share) for p, share in enumerate((_encode(noisy) - mask_ring, mask_ring))]
    weight = model.state_dict()["bert.encoder.layer.0.attention.self.query.weight"]
    sent = _sent(OWNER, _ring(10_000), _encode(weight.t()))
    honest = [_sent(p, _ring(200_000, seed=p), index=p) for p in (OWNER, CLIENT)]
    found = {(l.secret, l.where) for l in find_leaks(revealed + [sent] + honest, secrets)}
    # random-init weights all look alike (N(0, 0.02)): a leaked one also matches its siblings' values
    assert {("hidden states", "learned"), ("owner bert.encoder.layer.0.attention.self.query.weight", "sent")} <= found
    assert find_leaks(honest, secrets) == []


@pytest.mark.parametrize("combo", TINY_COMBOS)
def test_private_inference_on_tiny_leaks_nothing(tiny_run, combo):
    from mpcformer.inference.protocol import plaintext_logits

    model, ids, mask, out, results = tiny_run
    expected = plaintext_logits(model, combo, ids, mask)
    client = results[CLIENT][combo]
    assert torch.allclose(torch.tensor(client["logits"]), expected, atol=5e-2), (client["logits"], expected)
    assert results[OWNER][combo]["logits"] is None
    secrets = _tiny_secrets(model, combo, ids, mask)
    assert sum(checkable(s) for s in secrets) >= 10  # weights, ids, embeddings, hidden states
    transfers = load_transfers(out / f"{combo}-party0.pt", out / f"{combo}-party1.pt")
    assert len(pair_exchanges(transfers)) > 10
    leaks = find_leaks(transfers, secrets)
    assert leaks == [], describe_leaks(leaks)


# ----------------------------------------------------------------------------- a spy on the logits
SPY_BATCHES = (1, 4)
SPY_COMBOS = ("exact", "quad+2quad")


def _spy_inputs(vocab: int) -> list[tuple[list, list]]:
    gen = torch.Generator().manual_seed(6)
    batches = []
    for size in SPY_BATCHES:
        ids = torch.randint(1000, vocab, (size, 8), generator=gen)
        mask = torch.ones_like(ids)
        mask[-1, 6:] = 0  # the last sentence is padded
        batches.append((ids.tolist(), mask.tolist()))
    return batches


def _spy_run(tmp_path_factory, preset: str, combos, stock: bool = False):
    from mpcformer.models.presets import load_preset

    model, _ = load_preset(preset, num_labels=2, seed=TINY_SEED)
    out = tmp_path_factory.mktemp(f"spy-{preset}-{'stock' if stock else 'ours'}")
    results = run_local(
        fns.private_inference_batches_tapped,
        args=(str(out), preset, list(combos), _spy_inputs(model.config.vocab_size), TINY_SEED, stock),
        timeout_s=540,
        threads_per_party=1,
    )
    return out, results


def _logits_held_by_the_owner(out: Path, results, combo: str, index: int):
    logits = torch.tensor(results[CLIENT][combo][index])  # what the client decrypted
    assert results[OWNER][combo][index] is None
    # Exact values (one fixed-point step): a summed chunk of the reveal holds them as they are.
    secret = Secret.real("logits", logits, {CLIENT}, min_matches=min(2, logits.numel()), min_distinct=2)
    transfers = load_transfers(out / f"{combo}-{index}-party0.pt", out / f"{combo}-{index}-party1.pt")
    assert sum(t.op.startswith("dist.") for t in transfers if t.party == OWNER) > 10  # the spy saw the collectives
    return find_leaks(transfers, [secret])


@pytest.mark.parametrize("preset", ["tiny", "minilm"])
def test_a_spy_on_the_owners_buffers_finds_no_logit(tmp_path_factory, preset):
    """Party 0 keeps a copy of every buffer of every collective and receive: for batches of 1 and 4,
    exact and quad+2quad, none holds the client's logits."""
    out, results = _spy_run(tmp_path_factory, preset, SPY_COMBOS)
    for combo in SPY_COMBOS:
        for index in range(len(SPY_BATCHES)):
            leaks = _logits_held_by_the_owner(out, results, combo, index)
            assert leaks == [], describe_leaks(leaks)


def test_the_same_spy_flags_cryptens_one_sided_reveal(tmp_path_factory):
    """Positive control: with CrypTen's get_plain_text(dst=client) for the logits, party 0 holds them."""
    out, results = _spy_run(tmp_path_factory, "tiny", ["quad+2quad"], stock=True)
    for index in range(len(SPY_BATCHES)):
        leaks = _logits_held_by_the_owner(out, results, "quad+2quad", index)
        assert leaks and {(l.where, l.party) for l in leaks} == {("held", OWNER)}, describe_leaks(leaks)
