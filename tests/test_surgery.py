"""Plaintext surgery: exact combo reproduces HF, approximated layers match a hand computation,
padding is masked, approximations survive save/reload and pickling, attention scores are recorded."""

from __future__ import annotations

import copy
import json
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification, BertConfig, DistilBertConfig, GPT2Config, RobertaConfig

from mpcformer.approx import Combo, list_approximations
from mpcformer.errors import UserError
from mpcformer.models.surgery import (
    ApproximatedActivation,
    ApproximatedLayerNorm,
    approximate,
    calibrate_layernorms,
    combo_of,
    encoder_family,
    load_approximated,
    record_attention_scores,
)

pytestmark = pytest.mark.timeout(300)

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=120)
CONFIGS = {
    "bert": lambda: BertConfig(**SMALL),
    "roberta": lambda: RobertaConfig(**SMALL, pad_token_id=1),
    "distilbert": lambda: DistilBertConfig(vocab_size=120, dim=32, n_layers=2, n_heads=2, hidden_dim=64),
}
PAD_FROM = 4  # the second sequence of the batch is padded from here


def _model(family: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    config = CONFIGS[family]()
    for key, value in overrides.items():
        setattr(config, key, value)
    return AutoModelForSequenceClassification.from_config(config).eval()


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 120, (2, 7), generator=gen)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, PAD_FROM:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_exact_combo_keeps_the_logits_of_the_untouched_model(family):
    model = _model(family)
    batch = _batch()
    with torch.no_grad():
        expected = model(**batch).logits
        teacher = approximate(copy.deepcopy(model), Combo.parse("exact"))
        got = teacher(**batch).logits
    assert encoder_family(model) == family
    assert combo_of(model) is None and combo_of(teacher) == Combo.parse("exact")
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_approximation_changes_logits_and_ignores_padding(family):
    model = approximate(_model(family), Combo.parse("quad+2quad"))
    batch = _batch()
    repadded = {**batch, "input_ids": batch["input_ids"].clone()}
    repadded["input_ids"][1, PAD_FROM:] = 7  # different tokens under the padding
    with torch.no_grad():
        exact = approximate(copy.deepcopy(model), Combo.parse("exact"))(**batch).logits
        logits, again = model(**batch).logits, model(**repadded).logits
    assert not torch.allclose(logits, exact, atol=1e-4)
    assert torch.allclose(logits, again, atol=1e-6)


@pytest.mark.parametrize("normaliser", [a.name for a in list_approximations("normaliser")])
def test_every_normaliser_gives_padded_keys_zero_probability(normaliser):
    model = approximate(_model("bert"), Combo("relu", normaliser))
    with torch.no_grad():
        probs = model(**_batch(), output_attentions=True).attentions
    assert len(probs) == 2
    for layer in probs:  # (B, H, T, T)
        assert layer.shape == (2, 2, 7, 7)
        assert torch.equal(layer[1, :, :, PAD_FROM:], torch.zeros_like(layer[1, :, :, PAD_FROM:]))
        assert layer[1, :, :, :PAD_FROM].sum() > 0


def _layer_by_hand(layer, hidden: torch.Tensor, key_mask: torch.Tensor, c: float = 5.0) -> torch.Tensor:
    """One BERT layer with quad and 2quad: hidden (B, T, D), key_mask (B, T) of 0/1."""
    heads = layer.attention.self.num_attention_heads
    batch, tokens, dim = hidden.shape

    def split(x):  # (B, T, D) -> (B, H, T, hd)
        return x.view(batch, tokens, heads, dim // heads).transpose(1, 2)

    q, k, v = (split(lin(hidden)) for lin in (layer.attention.self.query, layer.attention.self.key, layer.attention.self.value))
    scores = q @ k.transpose(-1, -2) / math.sqrt(dim // heads)  # (B, H, T, T)
    numerator = (scores + c) ** 2 * key_mask[:, None, None, :]
    probs = numerator / numerator.sum(-1, keepdim=True)
    context = (probs @ v).transpose(1, 2).reshape(batch, tokens, dim)  # (B, T, D)
    out = layer.attention.output
    attended = out.LayerNorm(out.dense(context) + hidden)
    inner = layer.intermediate.dense(attended)
    activated = 0.125 * inner**2 + 0.25 * inner + 0.5
    return layer.output.LayerNorm(layer.output.dense(activated) + attended)


def test_approximated_layer_equals_a_hand_computation():
    model = approximate(_model("bert", num_hidden_layers=1), Combo.parse("quad+2quad"))
    batch = _batch()
    with torch.no_grad():
        states = model(**batch, output_hidden_states=True).hidden_states  # embeddings, layer 1
        expected = _layer_by_hand(model.bert.encoder.layer[0], states[0], batch["attention_mask"].float())
    assert torch.allclose(states[1], expected, atol=1e-5), (states[1] - expected).abs().max()


def test_normaliser_parameters_reach_the_model():
    batch = _batch()
    with torch.no_grad():
        default = approximate(_model("bert", initializer_range=0.5), Combo.parse("quad+2quad"))(**batch).logits
        shifted = approximate(
            _model("bert", initializer_range=0.5), Combo.parse("quad+2quad", normaliser_params={"c": 1.0})
        )(**batch).logits
    assert not torch.allclose(default, shifted, atol=1e-5)


def test_save_and_reload_keep_the_approximation(tmp_path):
    combo = Combo.parse("relu+2relu", normaliser_params={"eps": 0.05})
    model = approximate(_model("roberta"), combo)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["mpcformer"] == combo.to_dict()
    reloaded = load_approximated(str(tmp_path)).eval()
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    batch = _batch()
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, model(**batch).logits)
        assert not torch.allclose(plain(**batch).logits, model(**batch).logits, atol=1e-4)
    assert combo_of(reloaded) == combo and combo_of(plain) is None
    activations = [m for m in reloaded.modules() if isinstance(m, ApproximatedActivation)]
    assert len(activations) == 2 and activations[0].approximation == "relu"


def test_reapproximation_switches_combo_and_models_pickle():
    model = approximate(approximate(_model("distilbert"), Combo.parse("quad+2quad")), Combo.parse("relu+2relu"))
    assert combo_of(model) == Combo.parse("relu+2relu")
    assert {m.approximation for m in model.modules() if isinstance(m, ApproximatedActivation)} == {"relu"}
    clone = pickle.loads(pickle.dumps(model))  # Ray ships models between processes
    with torch.no_grad():
        assert torch.equal(clone(**_batch()).logits, model(**_batch()).logits)


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_record_attention_scores_gives_one_pre_normaliser_tensor_per_layer(family):
    model = approximate(_model(family), Combo.parse("quad+2quad"))  # eval: no dropout on the probabilities
    batch = _batch()
    with record_attention_scores(model) as scores:
        out = model(**batch, output_attentions=True)
    assert len(scores) == 2
    assert all(s.shape == (2, 2, 7, 7) and s.requires_grad for s in scores)
    torch.stack([s.sum() for s in scores]).sum().backward()  # gradients reach the weights
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "query" in n or "q_lin" in n)
    # the recorded scores are the normaliser's input: 2quad of them gives the returned probabilities
    mask = batch["attention_mask"][:, None, None, :].float()
    expected = (scores[0].detach() + 5.0) ** 2 * mask
    assert torch.allclose(out.attentions[0].detach(), expected / expected.sum(-1, keepdim=True), atol=1e-6)
    with torch.no_grad():
        model(**batch)
    assert len(scores) == 2  # nothing recorded outside the block
    with pytest.raises(UserError, match="approximate"):
        with record_attention_scores(_model(family)):
            pass


def test_unsupported_families_are_refused():
    with pytest.raises(UserError, match="supported: bert, distilbert, roberta"):
        encoder_family(GPT2Config())
    assert encoder_family(BertConfig()) == "bert"


def test_minilm_real_weights_surgery():
    from mpcformer.models.presets import load_preset

    model, tokenizer = load_preset("minilm", num_labels=2, seed=0)
    model.eval()
    batch = tokenizer(["a gripping, beautifully made film", "dull"], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch).logits
        exact = approximate(copy.deepcopy(model), Combo.parse("exact"))(**batch).logits
        student = approximate(model, Combo.parse("quad+2quad"))
        with record_attention_scores(student) as scores:
            approximated = student(**batch).logits
    assert torch.allclose(exact, expected, atol=1e-5)
    assert torch.isfinite(approximated).all() and not torch.allclose(approximated, expected, atol=1e-3)
    assert len(scores) == 6 and scores[0].shape == (2, 12, batch["input_ids"].shape[1], batch["input_ids"].shape[1])


def test_gelu_activation_module_matches_hf():
    x = torch.linspace(-6, 6, 101)
    assert torch.allclose(ApproximatedActivation("gelu")(x), F.gelu(x))
    assert "quad" in repr(ApproximatedActivation("quad"))


# ----------------------------------------------------------------------------- LayerNorm normaliser
def _layer_norms(model: torch.nn.Module) -> dict[str, torch.nn.LayerNorm]:
    return {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)}


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_a_layernorm_normaliser_swaps_every_layer_norm_and_keeps_the_weights(family):
    model = _model(family)
    keys = set(model.state_dict())
    approximated = approximate(copy.deepcopy(model), Combo.parse("quad+2quad+ln:fit"))
    norms = _layer_norms(approximated)
    assert len(norms) == 1 + 2 * 2  # embeddings + two per layer
    assert all(isinstance(m, ApproximatedLayerNorm) and m.approximation == "ln:fit" for m in norms.values())
    assert set(approximated.state_dict()) == keys  # checkpoints load either way
    scales = {name: m.input_scale for name, m in norms.items()}
    embeddings = next(name for name in scales if "embeddings" in name)
    if family == "distilbert":  # no encrypted model: no input scale
        assert set(scales.values()) == {1}
    else:
        from mpcformer.models.encrypted_bert import EncryptedBertConfig

        assert scales[embeddings] == EncryptedBertConfig.from_hf(model).embeddings_ln_input_scale > 1
        assert {s for name, s in scales.items() if name != embeddings} == {1}
    with torch.no_grad():
        fitted = approximated(**_batch()).logits
        quad = approximate(copy.deepcopy(model), Combo.parse("quad+2quad"))(**_batch()).logits
    assert not torch.equal(fitted, quad)


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_calibrated_layernorms_fit_each_layer_norm_and_travel_with_the_checkpoint(family, tmp_path):
    from mpcformer.models.encrypted_bert import EncryptedBertConfig

    model, batch, combo = _model(family), _batch(), Combo.parse("quad+2quad+ln:fit")
    with torch.no_grad():
        exact_layernorm = approximate(copy.deepcopy(model), Combo.parse("quad+2quad"))(**batch).logits
        one_range = approximate(copy.deepcopy(model), combo)(**batch).logits
    record = calibrate_layernorms(model, combo, [batch], margin=1.5)
    norms = _layer_norms(model)
    assert set(record["params"]) == set(norms) and record["examples"] == 2  # every LayerNorm, by its checkpoint name
    for name, params in record["params"].items():
        assert isinstance(norms[name], ApproximatedLayerNorm)
        assert {k: norms[name].params[k] for k in params} == params  # the module runs with its own ranges
        assert 0 < params["low"] < params["high"] and 0 < params["first_low"] < params["first_high"]
    assert combo_of(model) == combo
    with torch.no_grad():
        calibrated = model(**batch).logits
    # on the sentences it was fitted to, the calibrated normaliser is much closer to exact LayerNorm
    assert (calibrated - exact_layernorm).abs().max() < 0.5 * (one_range - exact_layernorm).abs().max()

    model.save_pretrained(tmp_path)
    loaded = load_approximated(str(tmp_path))
    assert {name: m.params for name, m in _layer_norms(loaded).items()} == {name: m.params for name, m in norms.items()}
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, calibrated)
    assert EncryptedBertConfig.from_hf(loaded).layernorm_calibration == record  # public: sent to the client
    # another LayerNorm normaliser ignores the ranges
    assert all(not isinstance(m, ApproximatedLayerNorm) for m in _layer_norms(approximate(loaded, Combo.parse("quad+2quad"))).values())


def test_calibration_needs_a_normaliser_that_takes_ranges():
    with pytest.raises(UserError, match="takes no calibrated range"):
        calibrate_layernorms(_model("bert"), Combo.parse("quad+2quad+ln:exact"), [_batch()])


def test_approximated_layer_norm_is_layer_norm_with_the_normaliser_swapped():
    torch.manual_seed(0)
    layer_norm = torch.nn.LayerNorm(32, eps=1e-12)
    torch.nn.init.normal_(layer_norm.weight)
    torch.nn.init.normal_(layer_norm.bias)
    x = torch.randn(3, 5, 32) * torch.logspace(-0.5, 1, 5)[None, :, None]  # variances 0.1 .. 100
    exact = ApproximatedLayerNorm(layer_norm, "ln:exact", input_scale=4)
    fit = ApproximatedLayerNorm(layer_norm, "ln:fit", input_scale=1)
    with torch.no_grad():
        assert torch.allclose(exact(x), layer_norm(x), atol=1e-5)
        centred = x - x.mean(-1, keepdim=True)
        by_hand = centred * fit._fn(centred.square().mean(-1, keepdim=True), **fit.params) * layer_norm.weight
        assert torch.allclose(fit(x), by_hand + layer_norm.bias, atol=1e-6)
        assert not torch.allclose(fit(x), layer_norm(x), atol=1e-4)
    fit(x).sum().backward()  # distillation trains gamma and beta through the twin
    assert layer_norm.weight.grad is not None and fit.weight is layer_norm.weight


def test_layernorm_normaliser_survives_save_reload_and_goes_back_to_exact(tmp_path):
    combo = Combo.parse("quad+2quad-fit+ln:fit")
    model = approximate(_model("bert"), combo)
    model.save_pretrained(tmp_path)
    reloaded = load_approximated(str(tmp_path)).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**_batch()).logits, model(**_batch()).logits)
    assert combo_of(reloaded) == combo
    back = approximate(reloaded, Combo.parse("quad+2quad"))
    assert not any(isinstance(m, ApproximatedLayerNorm) for m in back.modules())
    with torch.no_grad():
        fresh = approximate(_model("bert"), Combo.parse("quad+2quad"))(**_batch()).logits
        assert torch.allclose(back(**_batch()).logits, fresh, atol=1e-6)
    clone = pickle.loads(pickle.dumps(model))
    with torch.no_grad():
        assert torch.equal(clone(**_batch()).logits, model(**_batch()).logits)


def test_running_another_combination_than_trained_is_said_once_per_party_process(caplog):
    from mpcformer.inference import party_ops

    party_ops._mismatches_said.clear()
    teacher = approximate(_model("bert", num_hidden_layers=1), Combo.parse("exact"))
    student = approximate(_model("bert", num_hidden_layers=1), Combo.parse("quad+2quad"))
    with caplog.at_level("WARNING", logger=party_ops.log.name):
        for _ in range(3):  # one call per batch
            party_ops._warn_on_combo_mismatch(teacher, "puma-gelu+softmax")
            party_ops._warn_on_combo_mismatch(student, "quad+2relu")
            party_ops._warn_on_combo_mismatch(student, "quad+2quad")
    said = [record.getMessage() for record in caplog.records]
    assert len(said) == 2
    assert "drop-in" in said[0] and "puma-gelu+softmax" in said[0]
    assert "quad+2quad" in said[1] and "quad+2relu" in said[1]
