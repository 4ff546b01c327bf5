"""Task data: local files of every format, malformed inputs, GLUE metrics, the synthetic set."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mpcformer.data import DataConfig, get_task, load_split, read_table, resolve_task
from mpcformer.data.metrics import accuracy, compute_metrics, f1_binary, matthews_corrcoef, pearson, spearman
from mpcformer.data.synthetic import synthetic_sentiment, write_synthetic_sentiment
from mpcformer.errors import UserError

pytestmark = pytest.mark.timeout(60)

ROWS = [("a fine film", 1), ("a dull film", 0), ("what a joy", 1)]


def _write(path, fmt: str, rows=ROWS, text="sentence", label="label") -> None:
    if fmt == "tsv":
        path.write_text(f"{text}\t{label}\n" + "".join(f"{t}\t{l}\n" for t, l in rows))
    elif fmt == "csv":
        path.write_text(f"{text},{label}\n" + "".join(f'"{t}, really",{l}\n' for t, l in rows))
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps({text: t, label: l}) + "\n" for t, l in rows))
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({text: [t for t, _ in rows], label: [l for _, l in rows]}), path)


@pytest.mark.parametrize("fmt", ["tsv", "csv", "jsonl", "parquet"])
def test_every_local_format_loads_the_same_examples(tmp_path, fmt):
    _write(tmp_path / f"train.{fmt}", fmt)
    _write(tmp_path / f"dev.{fmt}", fmt, rows=ROWS[:2])
    cfg = DataConfig(task="glue/sst2", data_dir=str(tmp_path))
    train, dev = load_split(cfg, "train"), load_split(cfg, "dev")
    assert train.labels == [1, 0, 1] and dev.labels == [1, 0]
    expected = [t if fmt != "csv" else f"{t}, really" for t, _ in ROWS]  # CSV quoting keeps the comma
    assert [t[0] for t in train.texts] == expected


def test_sentence_pairs_string_labels_and_glue_column_aliases(tmp_path):
    (tmp_path / "dev.tsv").write_text(
        "index\tsentence1\tsentence2\tlabel\n0\tA man sleeps.\tA man rests.\tentailment\n"
        "1\tIt rains.\tIt is sunny.\tnot_entailment\n"
    )
    rte = load_split(DataConfig(task="rte", data_dir=str(tmp_path)), "dev")
    assert rte.texts[0] == ("A man sleeps.", "A man rests.") and rte.labels == [0, 1]
    (tmp_path / "train.tsv").write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tx y\tx z\n")
    mrpc = load_split(DataConfig(task="mrpc", data_dir=str(tmp_path)), "train")
    assert mrpc.texts == [("x y", "x z")] and mrpc.labels == [1]


def test_regression_labels_are_floats(tmp_path):
    path = tmp_path / "dev.jsonl"
    path.write_text(json.dumps({"sentence1": "a", "sentence2": "b", "label": 3.2}) + "\n")
    examples = load_split(DataConfig(task="stsb", dev_file=str(path)), "dev")
    assert examples.labels == [3.2] and examples.spec.is_regression


def test_custom_task_and_column_overrides(tmp_path):
    _write(tmp_path / "train.csv", "csv", text="review", label="stars")
    cfg = DataConfig(task="reviews", train_file=str(tmp_path / "train.csv"), text_fields=["review"],
                     label_field="stars", num_labels=2, metric="accuracy")
    assert resolve_task(cfg).name == "reviews"
    assert load_split(cfg, "train").labels == [1, 0, 1]


def test_subset_is_seeded_and_keeps_order(tmp_path):
    rows = [(f"s{i}", i % 2) for i in range(50)]
    _write(tmp_path / "train.tsv", "tsv", rows=rows)
    cfg = DataConfig(task="sst2", train_file=str(tmp_path / "train.tsv"), max_train_examples=10)
    a, b = load_split(cfg, "train", seed=1), load_split(cfg, "train", seed=1)
    c = load_split(cfg, "train", seed=2)
    ids = [int(t[0][1:]) for t in a.texts]
    assert a.texts == b.texts and a.texts != c.texts and len(a) == 10 and ids == sorted(ids)


def test_min_train_words_keeps_longer_training_examples_before_the_subset(tmp_path):
    rows = [(" ".join(["w"] * (1 + i % 6)) + f" s{i}", i % 2) for i in range(60)]  # 2 to 7 words
    _write(tmp_path / "train.tsv", "tsv", rows=rows)
    _write(tmp_path / "dev.tsv", "tsv", rows=rows[:4])
    cfg = DataConfig(task="sst2", data_dir=str(tmp_path), min_train_words=5, max_train_examples=12)
    train = load_split(cfg, "train", seed=0)
    assert len(train) == 12 and all(len(t[0].split()) >= 5 for t in train.texts)
    assert len(load_split(cfg.model_copy(update={"max_train_examples": None}), "train")) == 30
    assert len(load_split(cfg, "dev")) == 4  # the dev split is never filtered
    with pytest.raises(UserError, match="min_train_words"):
        load_split(cfg.model_copy(update={"min_train_words": 50}), "train")


@pytest.mark.parametrize(
    "content, fmt, match",
    [
        ("sentence\tlabel\nok\t7\n", "tsv", "out of range"),
        ("sentence\tlabel\nok\t-1\n", "tsv", "out of range"),
        ("sentence\tlabel\nok\tmaybe\n", "tsv", "not a class id"),
        ("text\ttarget\nok\t1\n", "tsv", "missing column"),
        ("sentence\tlabel\n", "tsv", "empty"),
        ("", "tsv", "empty"),
        ("sentence\tlabel\nok\t1\textra\n", "tsv", "fields"),
        ('{"sentence": "a", "label": 1}\nnot json\n', "jsonl", "not valid JSON"),
        ("garbage", "parquet", "Parquet"),
        ("x", "xlsx", "unsupported file type"),
    ],
)
def test_malformed_files_raise_user_errors(tmp_path, content, fmt, match):
    path = tmp_path / f"train.{fmt}"
    path.write_text(content)
    with pytest.raises(UserError, match=match):
        load_split(DataConfig(task="sst2", train_file=str(path)), "train")


def test_missing_files_and_unknown_tasks(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_table(tmp_path / "nope.tsv")
    with pytest.raises(UserError, match="no dev file"):
        load_split(DataConfig(task="sst2", data_dir=str(tmp_path)), "dev")
    with pytest.raises(UserError, match="data_dir not found"):
        load_split(DataConfig(task="sst2", data_dir=str(tmp_path / "absent")), "dev")
    with pytest.raises(UserError, match="known tasks"):
        get_task("glue/nonsense")


def test_hub_path_reports_offline_failure_as_user_error(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UserError, match="local files"):
        load_split(DataConfig(task="glue/sst2"), "dev")


def test_shared_sst2_loads_through_the_local_path(sst2_dir):
    cfg = DataConfig(task="sst2", data_dir=str(sst2_dir))
    train, dev = load_split(cfg, "train"), load_split(cfg, "dev")
    assert len(train) == 67_349 and len(dev) == 872 and set(dev.labels) == set(train.labels) == {0, 1}
    assert all(len(t) == 1 and t[0].strip() for t in train.texts)


# ----------------------------------------------------------------------------- metrics
def test_binary_metrics_match_hand_computation():
    preds, labels = [1, 1, 0, 0, 1, 0], [1, 0, 0, 1, 1, 0]
    # TP=2 (i0,i4), FP=1 (i1), FN=1 (i3), TN=2 (i2,i5)
    assert accuracy(preds, labels) == pytest.approx(4 / 6)
    assert f1_binary(preds, labels) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert matthews_corrcoef(preds, labels) == pytest.approx((2 * 2 - 1 * 1) / math.sqrt(3 * 3 * 3 * 3))
    assert matthews_corrcoef([1, 1, 1], [1, 0, 1]) == 0.0  # empty margin, as scikit-learn
    assert f1_binary([0, 0], [0, 0]) == 0.0


def test_correlations_match_hand_computation():
    x, y = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 5.0, 4.0]
    # means 2.5 and 3.75; sum dx*dy = 3.5; sum dx^2 = 5; sum dy^2 = 4.75
    assert pearson(x, y) == pytest.approx(3.5 / math.sqrt(5 * 4.75))
    # ranks of y with ties averaged: [1, 2.5, 4, 2.5]
    assert spearman(x, y) == pytest.approx(pearson([1, 2, 3, 4], [1, 2.5, 4, 2.5]))
    assert spearman([3, 1, 2], [30, 10, 20]) == pytest.approx(1.0)


def test_compute_metrics_per_task():
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert compute_metrics(logits, [1, 0, 0], get_task("sst2")) == {"accuracy": pytest.approx(2 / 3)}
    assert set(compute_metrics(logits, [1, 0, 0], get_task("mrpc"))) == {"accuracy", "f1"}
    assert set(compute_metrics(logits, [1, 0, 0], get_task("cola"))) == {"accuracy", "matthews"}
    scores = compute_metrics(np.array([[1.0], [2.0], [3.0]]), [1.5, 2.5, 2.9], get_task("stsb"))
    assert scores["spearman"] == pytest.approx(1.0) and get_task("stsb").primary_metric == "pearson"


# ----------------------------------------------------------------------------- synthetic set
def test_synthetic_set_is_deterministic_and_balanced(tmp_path):
    assert synthetic_sentiment(50, seed=3) == synthetic_sentiment(50, seed=3)
    assert synthetic_sentiment(50, seed=3) != synthetic_sentiment(50, seed=4)
    folder = write_synthetic_sentiment(tmp_path / "syn", num_train=200, num_dev=40, seed=0)
    train = load_split(DataConfig(task="sst2", data_dir=str(folder)), "train")
    dev = load_split(DataConfig(task="sst2", data_dir=str(folder)), "dev")
    assert len(train) == 200 and len(dev) == 40
    assert 0.3 < sum(train.labels) / len(train) < 0.7
    assert not set(train.texts) >= set(dev.texts)  # dev is drawn with another seed


# ----------------------------------------------------------------------------- the GLUE release files
#: (task, folder, train rows, dev rows, pairs, train label counts) from /work/shared/data/glue/README.md
GLUE_FILES = [
    ("cola", "CoLA", 8551, 1043, False, {1: 6023, 0: 2528}),
    ("mrpc", "MRPC", 3668, 408, True, {1: 2474, 0: 1194}),
    ("stsb", "STS-B", 5749, 1500, True, None),
    ("rte", "RTE", 2490, 277, True, {0: 1249, 1: 1241}),  # entailment = 0, not_entailment = 1
    ("wnli", "WNLI", 635, 71, True, {0: 323, 1: 312}),
]


@pytest.mark.parametrize("task, folder, train_rows, dev_rows, pairs, train_counts", GLUE_FILES)
def test_glue_release_files_load_with_their_exact_row_counts(glue_dir, task, folder, train_rows, dev_rows, pairs,
                                                            train_counts):
    from collections import Counter

    cfg = DataConfig(task=task, data_dir=str(glue_dir / folder))
    train, dev = load_split(cfg, "train"), load_split(cfg, "dev")
    assert (len(train), len(dev)) == (train_rows, dev_rows)
    for split in (train, dev):
        assert all(len(t) == (2 if pairs else 1) and all(s.strip() for s in t) for t in split.texts)
    if train_counts is None:  # STS-B: float similarity scores in [0, 5]
        assert train.spec.is_regression and all(isinstance(y, float) and 0 <= y <= 5 for y in train.labels + dev.labels)
        assert len(set(train.labels)) > 100
    else:
        assert dict(Counter(train.labels)) == train_counts and set(dev.labels) == {0, 1}
    # the same folder through the glue/ name and GLUE's folder name
    assert len(load_split(DataConfig(task=f"glue/{task}", data_dir=str(glue_dir / folder)), "dev")) == dev_rows
    assert len(load_split(DataConfig(task=folder, data_dir=str(glue_dir / folder)), "dev")) == dev_rows


def test_glue_quote_characters_are_text_and_the_mrpc_bom_is_dropped(glue_dir):
    mrpc = load_split(DataConfig(task="mrpc", data_dir=str(glue_dir / "MRPC")), "train")
    assert mrpc.texts[0][0].startswith("Amrozi accused his brother , whom he called \" the witness \"")
    cola = load_split(DataConfig(task="cola", data_dir=str(glue_dir / "CoLA")), "dev")
    assert cola.texts[0] == ("The sailors rode the breeze clear of the rocks.",) and cola.labels[0] == 1


def test_headerless_and_bom_files(tmp_path):
    (tmp_path / "train.tsv").write_text('gj04\t1\t\t"Quoted" start.\ngj04\t0\t*\tBad it is.\n')
    cola = load_split(DataConfig(task="cola", train_file=str(tmp_path / "train.tsv")), "train")
    assert cola.texts == [('"Quoted" start.',), ("Bad it is.",)] and cola.labels == [1, 0]
    (tmp_path / "named.tsv").write_text("sentence\tlabel\nfine\t1\n")  # a CoLA file with a header still loads
    assert load_split(DataConfig(task="cola", train_file=str(tmp_path / "named.tsv")), "train").labels == [1]
    (tmp_path / "mrpc.tsv").write_bytes("\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t1\t2\ta\tb\n".encode())
    assert load_split(DataConfig(task="mrpc", train_file=str(tmp_path / "mrpc.tsv")), "train").labels == [0]


# ----------------------------------------------------------------------------- the validation split
def test_validation_split_is_seeded_disjoint_and_sized(tmp_path):
    from mpcformer.data.loading import validation_size

    rows = [(f"s{i}", i % 2) for i in range(3000)]
    _write(tmp_path / "train.tsv", "tsv", rows=rows)
    cfg = DataConfig(task="sst2", train_file=str(tmp_path / "train.tsv"), validation_fraction=0.1)

    def ids(examples):
        return [int(t[0][1:]) for t in examples.texts]

    train, validation = load_split(cfg, "train", seed=5), load_split(cfg, "validation", seed=5)
    assert len(validation) == 300 and len(train) == 2700  # 10%
    assert sorted(ids(train) + ids(validation)) == list(range(3000))  # a partition of the file
    assert ids(validation) == ids(load_split(cfg, "validation", seed=9))  # the run's seed does not move it
    other = cfg.model_copy(update={"validation_seed": 1})
    assert ids(load_split(other, "validation")) != ids(validation)
    subset = load_split(cfg.model_copy(update={"max_train_examples": 100}), "train", seed=5)
    assert len(subset) == 100 and not set(ids(subset)) & set(ids(validation))  # subsets come from the rest
    assert validation_size(500, cfg) == 200 and validation_size(5749, cfg) == 575  # at least 200
    small = tmp_path / "small.tsv"
    _write(small, "tsv", rows=rows[:150])
    with pytest.raises(UserError, match="too few"):
        load_split(cfg.model_copy(update={"train_file": str(small)}), "train")
    with pytest.raises(UserError, match="validation_fraction"):
        load_split(cfg.model_copy(update={"validation_fraction": 0.0}), "validation")
