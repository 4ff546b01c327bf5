"""The encrypted BERT-family classifier against its plaintext reference, and its cost accounting.

One ``run_local`` session (2 parties + dealer) runs every job: random tiny BERT and RoBERTa and
the pretrained MiniLM, each with exact, quad+2quad, quad+2relu and relu+softmax, on real SST-2
sentences (padded batches), plus a padding check and a combo mismatch.
"""

from __future__ import annotations

import copy

import pytest
import torch

from mpcformer.approx import Combo
from mpcformer.config import ConfigError, build_config
from mpcformer.errors import UserError
from mpcformer.models.encrypted_bert import (
    INV_SQRT_RANGE,
    EncryptedBertConfig,
    PublicBatch,
    embeddings_input_scale,
    hf_key,
)
from mpcformer.inference.protocol import plaintext_logits
from mpcformer.models.surgery import approximate
from mpcformer.mpc.launcher import run_local

import encrypted_model_fns as fns

pytestmark = pytest.mark.timeout(780)

COMBOS = ("exact", "quad+2quad", "quad+2relu", "relu+softmax")
#: the fitted LayerNorm normaliser and 2quad reciprocal, where the models' values lie in their ranges
#: (undistilled MiniLM with quad leaves them: its LayerNorm variances reach 1.4e3)
FITTED = {"tiny-bert": "quad+2quad-fit+ln:fit", "minilm": "gelu+2quad-fit+ln:fit"}
FITTED_MODELS = tuple(FITTED)
#: max |encrypted - plaintext| logit error allowed (16 fractional bits). Measured: tiny <= ~0.01
#: (logits up to ~3), MiniLM <= 0.004 (its fresh head gives logits ~0.1).
TOLERANCE = {"tiny-bert": 0.05, "tiny-roberta": 0.05, "minilm": 0.01}
#: (model, sentences, max tokens): MiniLM at a short length to keep the test under ~3 minutes.
#: inputs of the inverse square root check: 4 per decade over LayerNorm's working range
INV_SQRT_PROBES = torch.logspace(-2.5, 5, 31)
BATCHES = {"tiny-bert": (3, 16), "tiny-roberta": (3, 16), "minilm": (2, 16)}


def _tokenize(sst2_dir, count: int, max_length: int) -> dict[str, torch.Tensor]:
    from transformers import AutoTokenizer

    from mpcformer.models.presets import minilm_path

    lines = (sst2_dir / "dev.tsv").read_text().splitlines()[1 : count + 1]
    sentences = [line.split("\t")[0] for line in lines]
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    return tokenizer(sentences, padding=True, truncation=True, max_length=max_length, return_tensors="pt")


def _job(model: str, combo: str, batch: dict[str, torch.Tensor], **extra) -> dict:
    return {
        "model": model, "combo": combo, "input_ids": batch["input_ids"].tolist(),
        "attention_mask": batch["attention_mask"].tolist(), **extra,
    }


@pytest.fixture(scope="module")
def session(sst2_dir):
    """Every job in one MPC session; results keyed by (model, combo) plus the extra checks."""
    batches = {model: _tokenize(sst2_dir, *shape) for model, shape in BATCHES.items()}
    jobs = [_job(model, combo, batches[model]) for model in BATCHES for combo in COMBOS]
    first_length = int(batches["tiny-bert"]["attention_mask"][0].sum())
    alone = {key: value[:1, :first_length] for key, value in batches["tiny-bert"].items()}  # unpadded
    jobs.append(_job("tiny-bert", "quad+2quad", alone, tag="alone"))
    jobs.append(_job("tiny-bert", "exact", alone, client_combo="quad+2quad", tag="mismatch"))
    jobs.append(_job("tiny-bert", "quad+2quad", alone, tag="again"))  # the model built for "alone", served again
    jobs.append(_job("tiny-bert", "quad+2quad", alone, tag="changed", shift_classifier_bias=1.0))
    jobs.append({"inv_sqrt": INV_SQRT_PROBES.tolist(), "tag": "inv_sqrt"})
    jobs += [_job(model, FITTED[model], batches[model], tag=f"fitted-{model}") for model in FITTED_MODELS]
    jobs.append(_job("tiny-bert-calibrated", fns.CALIBRATED_COMBO, batches["tiny-bert"], tag="calibrated"))
    owner, client = run_local(fns.private_inference_jobs, args=(jobs,), timeout_s=600)
    runs = {(job["model"], job["combo"]): (job, o, c) for job, o, c in zip(jobs, owner, client) if "tag" not in job}
    tagged = {job["tag"]: (job, o, c) for job, o, c in zip(jobs, owner, client) if "tag" in job}
    return {"batches": batches, "runs": runs, "tagged": tagged}


def _reference(model_name: str, combo: str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return plaintext_logits(fns.build_model(model_name), combo, batch["input_ids"], batch["attention_mask"])


@pytest.mark.parametrize("model_name", list(BATCHES))
def test_encrypted_logits_match_plaintext_approximation(session, model_name):
    batch = session["batches"][model_name]
    assert (batch["attention_mask"] == 0).any(), "the batch should contain padding"
    tolerance = TOLERANCE[model_name]
    references = {combo: _reference(model_name, combo, batch) for combo in COMBOS}
    for combo in COMBOS:
        _, _, client = session["runs"][(model_name, combo)]
        logits = torch.tensor(client["logits"])
        error = (logits - references[combo]).abs().max().item()
        assert error < tolerance, f"{model_name} {combo}: max |logit error| {error:.4f} >= {tolerance}"
        margin = (references[combo][:, 0] - references[combo][:, 1]).abs()
        confident = margin > 2 * tolerance
        assert torch.equal(torch.tensor(client["predictions"])[confident], references[combo].argmax(-1)[confident])
    # the tolerance tells the approximations apart: it is no looser than their effect on logits
    effect = (references["exact"] - references["quad+2quad"]).abs().max().item()
    assert effect > 3 * tolerance, f"{model_name}: quad+2quad moves logits by only {effect:.4f}"


@pytest.mark.parametrize("model_name", FITTED_MODELS)
def test_fitted_combo_matches_its_plaintext_twin_in_a_fraction_of_the_rounds(session, model_name):
    """The encrypted LayerNorms and 2quad use the fitted normalisers exactly as the plaintext twin
    does (input scales included), in at most a quarter (LayerNorm) and a third (softmax) of
    quad+2quad's rounds."""
    batch = session["batches"][model_name]
    _, owner, client = session["tagged"][f"fitted-{model_name}"]
    reference = _reference(model_name, FITTED[model_name], batch)
    error = (torch.tensor(client["logits"]) - reference).abs().max().item()
    assert error < TOLERANCE[model_name], f"{model_name} {FITTED[model_name]}: max |logit error| {error:.4f}"
    assert owner["combo"] == client["combo"] == FITTED[model_name]
    fitted = client["costs"]["by_category"]
    quad = session["runs"][(model_name, "quad+2quad")][2]["costs"]["by_category"]
    assert 4 * fitted["layernorm"]["rounds"] <= quad["layernorm"]["rounds"]
    assert 3 * fitted["softmax"]["rounds"] <= quad["softmax"]["rounds"]
    assert fitted["layernorm"]["bytes"] < quad["layernorm"]["bytes"]  # no comparisons left


def test_calibrated_layernorms_match_their_plaintext_twin_in_the_same_rounds(session):
    """Each LayerNorm's own ranges ([CLS] apart) reach the client with the architecture, and the
    encrypted model uses them as the plaintext twin does, without a round more."""
    batch = session["batches"]["tiny-bert"]
    _, owner, client = session["tagged"]["calibrated"]
    reference = _reference("tiny-bert-calibrated", fns.CALIBRATED_COMBO, batch)
    error = (torch.tensor(client["logits"]) - reference).abs().max().item()
    assert error < TOLERANCE["tiny-bert"], f"calibrated ln:fit: max |logit error| {error:.4f}"
    one_range = _reference("tiny-bert", fns.CALIBRATED_COMBO, batch)
    assert (reference - one_range).abs().max().item() > 3 * TOLERANCE["tiny-bert"]  # the ranges matter
    fitted = session["tagged"]["fitted-tiny-bert"][2]["costs"]["by_category"]["layernorm"]
    assert client["costs"]["by_category"]["layernorm"]["rounds"] == fitted["rounds"]


def test_padding_does_not_change_a_sentence(session):
    job, _, alone = session["tagged"]["alone"]
    _, _, batched = session["runs"][("tiny-bert", "quad+2quad")]
    assert len(job["input_ids"][0]) < len(session["batches"]["tiny-bert"]["input_ids"][0])
    difference = (torch.tensor(alone["logits"][0]) - torch.tensor(batched["logits"][0])).abs().max().item()
    assert difference < TOLERANCE["tiny-bert"]


def test_only_the_client_learns_the_logits(session):
    for job, owner, client in session["runs"].values():
        assert "logits" not in owner and "predictions" not in owner
        assert len(client["logits"]) == len(job["input_ids"]) and len(client["predictions"]) == len(job["input_ids"])
        assert owner["combo"] == client["combo"] == Combo.parse(job["combo"]).name


def test_disagreeing_combos_fail_on_both_parties(session):
    _, owner, client = session["tagged"]["mismatch"]
    assert "disagree" in owner["error"] and "disagree" in client["error"]


def test_inv_sqrt_is_accurate_where_cryptens_is_not(session):
    _, values, _ = session["tagged"]["inv_sqrt"]
    exact = 1 / INV_SQRT_PROBES.sqrt()
    ours = (torch.tensor(values["ours"]) / exact - 1).abs()
    theirs = (torch.tensor(values["crypten"]) / exact - 1).abs()
    assert ours.max().item() < 5e-3, f"relative error {ours.max().item():.2e}"
    assert theirs[INV_SQRT_PROBES > 500].min().item() > 0.5  # CrypTen's inv_sqrt diverges there


def test_costs_add_up_to_the_total_and_to_cryptens_counters(session):
    for (model_name, combo), (_, owner, client) in session["runs"].items():
        layers = fns.build_model(model_name).config.num_hidden_layers
        for party in (owner, client):
            costs = party["costs"]
            total = costs["total"]
            for key in ("time_s", "rounds", "bytes"):
                summed = sum(cost[key] for cost in costs["by_category"].values())
                assert summed == pytest.approx(total[key], rel=1e-9, abs=1e-9)
                assert sum(cost[key] for cost in costs["by_layer"].values()) <= total[key] + 1e-9
            setup = party["setup"]
            for key in ("rounds", "bytes"):  # nothing escaped the ledgers of the forward and the model's set-up
                accounted = total[key] + costs["dealer"][key] + setup[key] + setup[f"dealer_{key}"]
                assert accounted == pytest.approx(party["crypten_counters"][key])
            assert sorted(costs["by_layer"]) == [str(i) for i in range(layers)]
            assert all(costs["by_layer"][str(i)]["rounds"] > 0 for i in range(layers))
            for category in ("embedding", "linear", "attention-matmul", "softmax", "activation", "layernorm", "pooler"):
                assert costs["by_category"][category]["rounds"] > 0, f"{model_name} {combo}: no {category} cost"
            unaccounted = party["wall_s"] - total["time_s"] - party["setup_s"]
            assert -1e-3 < unaccounted < 0.1 * party["wall_s"] + 0.5


@pytest.mark.parametrize("category", ["softmax", "activation"])
def test_mpc_friendly_combo_costs_far_less(session, category):
    exact = session["runs"][("minilm", "exact")][2]["costs"]["by_category"][category]
    friendly = session["runs"][("minilm", "quad+2quad")][2]["costs"]["by_category"][category]
    assert friendly["rounds"] < 0.5 * exact["rounds"]
    assert friendly["bytes"] < 0.5 * exact["bytes"]


# ----------------------------------------------------------------------------- plaintext checks
def test_layernorm_variances_stay_in_inv_sqrt_range(sst2_dir):
    """MiniLM's LayerNorm inputs, times the public input scale squared, on real sentences, with
    the exact model and with quad+2quad before distillation (its variances reach ~1.4e3)."""
    batch = _tokenize(sst2_dir, 32, 32)
    model = fns.build_model("minilm")
    config = EncryptedBertConfig.from_hf(model)
    real = batch["attention_mask"].bool()
    for combo in ("exact", "quad+2quad"):
        variances: dict[str, torch.Tensor] = {}
        approximated = approximate(copy.deepcopy(model), Combo.parse(combo))
        for name, module in approximated.named_modules():
            if name.endswith("LayerNorm"):
                module.register_forward_hook(
                    lambda mod, inputs, out, name=name: variances.__setitem__(
                        name, inputs[0].var(-1, unbiased=False)[real]
                    )
                )
        with torch.no_grad():
            approximated(**batch)
        for name, variance in variances.items():
            scale = config.embeddings_ln_input_scale if "embeddings" in name else config.encoder_ln_input_scale
            low, high = (variance * scale**2).min().item(), (variance * scale**2).max().item()
            assert INV_SQRT_RANGE[0] * 8 < low and high < INV_SQRT_RANGE[1] / 8, f"{combo} {name}: {low:.3g}..{high:.3g}"


def test_public_config_and_weight_names():
    bert, roberta = fns.build_model("tiny-bert"), fns.build_model("tiny-roberta")
    config = EncryptedBertConfig.from_hf(bert)
    assert (config.family, config.hidden_size, config.num_hidden_layers, config.head_size) == ("bert", 64, 2, 32)
    assert config.embeddings_ln_input_scale in (2, 4, 8)  # random init 0.2: variance ~3 * 0.04
    assert EncryptedBertConfig.from_hf(roberta).family == "roberta"
    assert hf_key("bert", "encoder.layer.0.output.dense.weight") == "bert.encoder.layer.0.output.dense.weight"
    assert hf_key("bert", "classifier.weight") == "classifier.weight"
    assert hf_key("roberta", "pooler.dense.bias") == "classifier.dense.bias"
    assert hf_key("roberta", "classifier.weight") == "classifier.out_proj.weight"
    names = set(roberta.state_dict())
    assert {hf_key("roberta", "pooler.dense.weight"), hf_key("roberta", "embeddings.word_embeddings.weight")} <= names
    with pytest.raises(ConfigError, match="powers of 2"):
        build_config(EncryptedBertConfig, {**config.model_dump(), "encoder_ln_input_scale": 3})


def test_embeddings_input_scale_brings_variance_near_one():
    torch.manual_seed(0)
    for std in (0.02, 0.05, 0.3):
        word, position, types = torch.randn(1000, 16) * std, torch.randn(64, 16) * std, torch.randn(2, 16) * std
        k = embeddings_input_scale(word, position, types)
        rows = word + position[torch.arange(1000) % 64] + types[0]
        scaled = k**2 * rows.var(-1, unbiased=False).median().item()
        assert k & (k - 1) == 0 and 0.5 <= scaled <= 2.0, (std, k, scaled)
    assert embeddings_input_scale(word * 10, position * 10, types * 10) == 1  # never below 1


def test_public_batch_positions():
    roberta = EncryptedBertConfig.from_hf(fns.build_model("tiny-roberta"))
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    batch = PublicBatch.build(roberta, mask)
    assert batch.position_ids.tolist() == [[1, 2, 3, 0], [1, 2, 3, 4]]  # pad id 0, real tokens from 1
    assert batch.key_mask().shape == (2, 1, 1, 4)
    bert = EncryptedBertConfig.from_hf(fns.build_model("tiny-bert"))
    assert PublicBatch.build(bert, mask).position_ids.tolist() == [[0, 1, 2, 3]] * 2
    with pytest.raises(UserError, match="exceed"):
        PublicBatch.build(bert, torch.ones(1, bert.max_position_embeddings + 1))


def test_the_encrypted_model_is_built_once_per_session_and_weights(session):
    """Each model is built by its first job and served to the next ones of the session; a weight
    changed in place, or another model in between, makes the parties build it again."""
    jobs = [session["runs"][(model, combo)] for model in BATCHES for combo in COMBOS]
    for index, (job, owner, client) in enumerate(jobs):
        built_now = index % len(COMBOS) == 0  # the first combo of each model
        for party in (owner, client):
            assert party["setup"]["reused"] is not built_now, (job["model"], job["combo"])
            if built_now:  # sharing the small weights and sending each matrix under its mask: one round per matrix
                assert party["setup"]["rounds"] > 0 and party["setup"]["bytes"] > 0
            else:
                assert party["setup"]["bytes"] == party["setup"]["time_s"] == 0
    _, _, alone = session["tagged"]["alone"]
    _, again_owner, again = session["tagged"]["again"]
    assert not alone["setup"]["reused"]  # minilm ran in between
    assert again["setup"]["reused"] and again_owner["setup"]["reused"]
    assert again["costs"]["total"]["rounds"] == alone["costs"]["total"]["rounds"]
    assert again["costs"]["total"]["bytes"] == alone["costs"]["total"]["bytes"]
    logits_alone, logits_again = torch.tensor(alone["logits"]), torch.tensor(again["logits"])
    assert (logits_again - logits_alone).abs().max().item() < TOLERANCE["tiny-bert"]
    _, changed_owner, changed = session["tagged"]["changed"]
    assert not changed["setup"]["reused"] and not changed_owner["setup"]["reused"]
    shift = (torch.tensor(changed["logits"]) - logits_alone - 1.0).abs().max().item()
    assert shift < TOLERANCE["tiny-bert"], "the rebuilt model must carry the changed classifier bias"


def test_two_sessions_with_identical_weights_broadcast_different_fingerprints():
    """The weights key the client receives is keyed with a secret the owner draws per session: the
    same within a session (so the encrypted model is reused), unrelated across sessions, and never
    the unkeyed hash a client could compute from a guessed public checkpoint."""
    sessions = [run_local(fns.broadcast_fingerprints, args=("tiny-bert", 2), timeout_s=180) for _ in range(2)]
    for owner, client in sessions:
        assert owner["keys"] == client["keys"] and len(set(client["keys"])) == 1
        assert owner["unkeyed"] not in client["keys"]
    (first_owner, first), (second_owner, second) = sessions
    assert first_owner["unkeyed"] == second_owner["unkeyed"]  # identical weights
    assert first["keys"][0] != second["keys"][0]


def test_minilm_layernorm_variances_lie_in_the_fitted_range(sst2_dir):
    """``ln:fit``'s default range is the one the pretrained MiniLM shows on real sentences: every
    LayerNorm input variance (times the public input scale squared) lies in it, and spans most of
    it (the [CLS] token's near 128, the smallest near 0.13)."""
    from mpcformer.approx import get

    low, high = (get("ln:fit").params[key] for key in ("low", "high"))
    batch = _tokenize(sst2_dir, 64, 64)
    model = fns.build_model("minilm")
    config = EncryptedBertConfig.from_hf(model)
    real = batch["attention_mask"].bool()
    seen: list[torch.Tensor] = []
    hooks = [
        module.register_forward_hook(
            lambda mod, inputs, out, name=name: seen.append(
                inputs[0].var(-1, unbiased=False)[real]
                * (config.embeddings_ln_input_scale if "embeddings" in name else config.encoder_ln_input_scale) ** 2
            )
        )
        for name, module in model.named_modules() if name.endswith("LayerNorm")
    ]
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        for hook in hooks:
            hook.remove()
    variances = torch.cat(seen)
    assert low <= variances.min().item() and variances.max().item() <= high * 1.05, (variances.min(), variances.max())
    assert variances.min().item() < 2 * low and variances.max().item() > high / 2
