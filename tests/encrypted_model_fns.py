"""Models and party functions for the encrypted-model tests (module level: spawned parties import them).

Models are rebuilt from a small spec on each side (party 0 and the test process) instead of being
pickled across processes: ``tiny-bert`` / ``tiny-roberta`` are random 2-layer encoders with
``initializer_range=0.2`` (RoBERTa's pad id 0 is the MiniLM tokenizer's, so its positions
start at 1; at BERT's 0.02 the logits hardly depend on the input, which would make
any comparison vacuous); ``minilm`` is the pretrained preset with a seeded classification head.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import torch

TINY_SHAPE = dict(
    vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
    num_labels=2, initializer_range=0.2,
)


@functools.lru_cache(maxsize=4)
def build_model(name: str, seed: int = 0) -> torch.nn.Module:
    """``tiny-bert``, ``tiny-roberta`` or ``minilm``, in eval mode, the same on every process."""
    from transformers import BertConfig, BertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(seed)
    if name == "tiny-bert":
        model = BertForSequenceClassification(BertConfig(**TINY_SHAPE))
    elif name == "tiny-roberta":
        model = RobertaForSequenceClassification(RobertaConfig(pad_token_id=0, max_position_embeddings=66, **TINY_SHAPE))
    elif name == "tiny-bert-calibrated":
        return calibrated(build_model("tiny-bert", seed))
    elif name == "minilm":
        from mpcformer.models.presets import load_preset

        model, _ = load_preset("minilm", num_labels=2, seed=seed)
    else:
        raise ValueError(f"unknown test model '{name}'")
    return model.eval()


#: a calibration set apart from the test sentences (SST-2 dev): ``ln:fit`` is fitted to these
CALIBRATION_SENTENCES = [
    "a gripping, beautifully acted story that stays with you long after the credits roll .",
    "the plot is thin and the jokes fall flat .",
    "it 's a charming , funny and often moving film about growing up .",
    "an overlong mess that never decides what it wants to be .",
    "the performances are fine , but the script lets them down at every turn .",
    "one of the year 's most surprising and satisfying movies .",
]
CALIBRATED_COMBO = "quad+2quad-fit+ln:fit"


def calibrated(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` with ``ln:fit`` calibrated per LayerNorm on :data:`CALIBRATION_SENTENCES`."""
    import copy

    from transformers import AutoTokenizer

    from mpcformer.approx import Combo
    from mpcformer.models.presets import minilm_path
    from mpcformer.models.surgery import calibrate_layernorms

    batch = AutoTokenizer.from_pretrained(minilm_path())(CALIBRATION_SENTENCES, padding=True, return_tensors="pt")
    model = copy.deepcopy(model)
    calibrate_layernorms(model, Combo.parse(CALIBRATED_COMBO), [dict(batch)], margin=2.0)
    return model.eval()


def private_inference_jobs(rank: int, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run each job ``{"model", "combo", "input_ids", "attention_mask"}`` as owner (0) or client (1).

    Beside the inference result, returns CrypTen's own communication counters and the wall time
    around the call, so the test can check that the cost ledger accounts for all of them. A job
    with ``"client_combo"`` makes the client ask for another combo: the ``UserError`` both parties
    raise is returned as ``{"error": message}``; ``"shift_classifier_bias": v`` adds v to the owner's
    classifier bias in place for that job only. A job ``{"inv_sqrt": values}`` runs
    :func:`inv_sqrt_values` instead (one session for every encrypted check).
    """
    from mpcformer.errors import UserError
    from mpcformer.inference.protocol import run_private_inference
    from mpcformer.mpc.compat import crypten

    results = []
    for job in jobs:
        if "inv_sqrt" in job:
            results.append(inv_sqrt_values(job["inv_sqrt"]))
            continue
        model = build_model(job["model"]) if rank == 0 else None
        shift = job.get("shift_classifier_bias")
        if shift and model is not None:
            with torch.no_grad():
                model.classifier.bias += shift  # in place: the same model object, changed weights
        before = dict(crypten.communicator.get().get_communication_stats())
        tic = time.perf_counter()
        try:
            if rank == 0:
                result = run_private_inference(0, model=model, combo=job["combo"])
            else:
                result = run_private_inference(
                    1, input_ids=job["input_ids"], attention_mask=job["attention_mask"],
                    combo=job.get("client_combo", job["combo"]),
                )
        except UserError as err:
            results.append({"error": str(err)})
            continue
        finally:
            if shift and model is not None:
                with torch.no_grad():
                    model.classifier.bias -= shift
        result["wall_s"] = time.perf_counter() - tic
        after = crypten.communicator.get().get_communication_stats()
        result["crypten_counters"] = {key: float(after[key] - before[key]) for key in ("rounds", "bytes")}
        results.append(result)
    return results


def inv_sqrt_values(values: list[float]) -> dict[str, list[float]]:
    """Our wide-range inverse square root and CrypTen's, on the same encrypted values, revealed."""
    from mpcformer.models.encrypted_bert import encrypted_inv_sqrt
    from mpcformer.mpc.compat import crypten

    x = crypten.cryptensor(torch.tensor(values), src=0)
    return {"ours": encrypted_inv_sqrt(x).get_plain_text().tolist(), "crypten": x.inv_sqrt().get_plain_text().tolist()}


def where_shares_live(rank: int) -> dict[str, str]:
    """The open session's device and the device of a fresh share (CUDA tests)."""
    from mpcformer.mpc.compat import crypten
    from mpcformer.mpc.session import session_device

    share = crypten.cryptensor(torch.ones(2, device=session_device()), src=0)
    return {"session": session_device(), "share": str(share.device), "product": str((share * share).device)}


def broadcast_fingerprints(rank: int, model_name: str, times: int) -> dict[str, Any]:
    """The weights key the owner broadcasts, ``times`` times in this session (the client receives
    it), and the unkeyed hash of the weights the owner keeps to itself."""
    from mpcformer.approx import Combo
    from mpcformer.inference.protocol import _exchange_architecture, weights_fingerprint
    from mpcformer.mpc.session import session_device

    model = build_model(model_name) if rank == 0 else None
    keys = [_exchange_architecture(rank, model, Combo.parse("quad+2quad"), session_device())[1]["key"] for _ in range(times)]
    return {"keys": keys, "unkeyed": weights_fingerprint(model) if model is not None else None}
