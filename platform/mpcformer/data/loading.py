"""Load a task split from the Hugging Face hub or from local files, then tokenise it.

One code path for every source: a reader returns the split as columns (``name -> list``), then
:func:`_to_examples` picks the task's text and label columns, converts labels (ints, digit
strings, label names, floats for regression) and checks them. Local formats, by file suffix:

- ``.tsv``: GLUE release format, tab-separated, no quoting (quote characters are text), a header
  row, except for tasks whose release file has none (CoLA: columns named by position);
- ``.csv``: comma-separated with a header row and standard quoting;
- ``.jsonl`` / ``.json``: one JSON object per line;
- ``.parquet``: any Parquet table.

Where the files are comes from :class:`DataConfig`: ``train_file``/``dev_file``, or a
``data_dir`` holding ``train.<ext>`` and ``dev.<ext>`` (``validation``/``dev_matched`` also
accepted), or neither, in which case the split is downloaded with ``datasets.load_dataset``.
A UTF-8 byte-order mark at the start of a TSV or CSV file (MRPC's header has one) is dropped.

Splits: ``dev`` is the dev file (GLUE's dev set, reported as the test set); ``train`` is the
training file less a held-out ``validation`` split when ``validation_fraction > 0``: a seeded
random ``max(ceil(fraction * N), min_validation_examples)`` of the file's ``N`` examples, drawn
with ``validation_seed`` (not the run's seed, so that every run of a sweep is chosen on the same
examples). Training jobs choose checkpoints on ``validation`` and never on ``dev``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Sequence

import torch

from pydantic import Field

from mpcformer.config import StrictModel
from mpcformer.data.tasks import MetricName, TaskSpec, get_task
from mpcformer.errors import UserError

__all__ = [
    "DataConfig",
    "TextExamples",
    "EncodedDataset",
    "resolve_task",
    "load_split",
    "read_table",
    "encode",
    "collate",
    "overlong_examples",
    "reject_empty_examples",
    "validation_size",
    "SUFFIXES",
]

log = logging.getLogger(__name__)

Split = Literal["train", "validation", "dev"]
SUFFIXES = (".tsv", ".csv", ".jsonl", ".json", ".parquet")
_DEV_STEMS = ("dev", "validation", "dev_matched")


class DataConfig(StrictModel):
    """Where a task's data comes from and how much of it to use.

    ``task`` names a known task (``sst2``, ``glue/rte``, ``imdb``, ...) or any name when
    ``text_fields``, ``label_field``, ``num_labels`` and ``metric`` are all given.
    """

    task: str = "sst2"
    data_dir: str | None = None  # folder with train.<ext> and dev.<ext>; None = hub
    train_file: str | None = None
    dev_file: str | None = None
    text_fields: list[str] | None = None  # override the task's text columns
    label_field: str | None = None  # override the task's label column
    num_labels: int | None = Field(None, ge=1)  # 1 = regression
    metric: MetricName | None = None
    max_train_examples: int | None = Field(None, ge=1)  # seeded random subset, original order kept
    # training examples shorter than this many words (all text fields together) are left out, before
    # the subset is drawn: SST-2's training file is mostly sub-phrases of 1-9 words, its dev set sentences
    min_train_words: int | None = Field(None, ge=1)
    max_dev_examples: int | None = Field(None, ge=1)
    max_length: int = Field(128, ge=2, le=8192)  # tokens per example after truncation
    # share of the training file held out as the validation split (checkpoint selection); 0 = none
    validation_fraction: float = Field(0.0, ge=0, lt=1)
    min_validation_examples: int = Field(200, ge=1)  # the held-out split's size is at least this
    validation_seed: int = 0  # which examples are held out; fixed across the runs of a sweep


@dataclass
class TextExamples:
    """A split as parallel lists: ``texts[i]`` is one tuple of text fields, ``labels[i]`` its label."""

    spec: TaskSpec
    texts: list[tuple[str, ...]]
    labels: list[float] | list[int]
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, limit: int | None) -> "TextExamples":
        """The first ``limit`` examples (all of them when ``limit`` is None)."""
        return TextExamples(self.spec, self.texts[:limit], self.labels[:limit], self.source)


def resolve_task(cfg: DataConfig) -> TaskSpec:
    """The task spec for ``cfg``: a known task with column overrides, or a fully custom one."""
    custom = (cfg.text_fields, cfg.label_field, cfg.num_labels, cfg.metric)
    try:
        spec = get_task(cfg.task)
    except UserError:
        if any(value is None for value in custom):
            raise
        return TaskSpec(cfg.task, tuple(cfg.text_fields), cfg.label_field, cfg.num_labels, cfg.metric)  # type: ignore[arg-type]
    spec = spec.with_columns(tuple(cfg.text_fields) if cfg.text_fields else None, cfg.label_field)
    if cfg.num_labels is not None or cfg.metric is not None:
        spec = replace(spec, num_labels=cfg.num_labels or spec.num_labels, metric=cfg.metric or spec.metric)
    return spec


# ----------------------------------------------------------------------------- readers
def _read_tsv(path: Path, spec: TaskSpec | None = None) -> dict[str, list[Any]]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with path.open(newline="", encoding="utf-8-sig") as fh:  # -sig: drops a byte-order mark
        rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    if spec is not None and spec.headerless_columns and rows and not _is_header(rows[0], spec):
        rows = [list(spec.headerless_columns), *rows]
    return _rows_to_columns(path, rows)


def _is_header(row: list[str], spec: TaskSpec) -> bool:
    """Whether ``row`` names the task's text and label columns (else it is the first example)."""
    names = {spec.column_aliases.get(name, name) for name in row}
    return {*spec.text_fields, spec.label_field} <= names


def _read_csv(path: Path, spec: TaskSpec | None = None) -> dict[str, list[Any]]:
    with path.open(newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.reader(fh))
    return _rows_to_columns(path, rows)


def _rows_to_columns(path: Path, rows: list[list[str]]) -> dict[str, list[Any]]:
    if not rows:
        raise UserError(f"{path}: the file is empty (expected a header row, then one example per row)")
    header, body = rows[0], [row for row in rows[1:] if row]
    columns: dict[str, list[Any]] = {name: [] for name in header}
    for line, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise UserError(
                f"{path}:{line}: {len(row)} fields but the header has {len(header)} "
                f"({', '.join(header)}); fix the row or the separator"
            )
        for name, value in zip(header, row):
            columns[name].append(value)
    return columns


def _read_jsonl(path: Path, spec: TaskSpec | None = None) -> dict[str, list[Any]]:
    columns: dict[str, list[Any]] = {}
    count = 0
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{line_no}: not valid JSON ({err.msg}); expected one object per line") from None
            if not isinstance(record, dict):
                raise UserError(f"{path}:{line_no}: expected a JSON object per line, got {type(record).__name__}")
            for name in set(columns) | set(record):
                columns.setdefault(name, [None] * count).append(record.get(name))
            count += 1
    return columns


def _read_parquet(path: Path, spec: TaskSpec | None = None) -> dict[str, list[Any]]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pydict()
    except Exception as err:  # pyarrow raises several types for corrupt files
        raise UserError(f"{path}: not a readable Parquet file ({err})") from None


_READERS = {".tsv": _read_tsv, ".csv": _read_csv, ".jsonl": _read_jsonl, ".json": _read_jsonl, ".parquet": _read_parquet}


def read_table(path: str | Path, spec: TaskSpec | None = None) -> dict[str, list[Any]]:
    """Read a local data file into columns; the suffix picks the format (see module docstring).

    ``spec`` names the columns of a TSV without a header row (its ``headerless_columns``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file not found: {path} (check the path, or set data_dir to the folder holding it)")
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise UserError(f"{path}: unsupported file type '{path.suffix}'; use one of {', '.join(SUFFIXES)}")
    try:
        return reader(path, spec)
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (it holds the byte {err.object[err.start]:#04x}); save it as UTF-8") from None


def _find_split_file(data_dir: Path, split: Split) -> Path:
    stems = _DEV_STEMS if split == "dev" else ("train",)
    for stem in stems:
        for suffix in SUFFIXES:
            candidate = data_dir / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
    wanted = ", ".join(f"{stem}.<ext>" for stem in stems)
    raise UserError(f"no {split} file in {data_dir}: expected one of {wanted} with <ext> in {', '.join(SUFFIXES)}")


def _read_hub(spec: TaskSpec, split: Split) -> dict[str, list[Any]]:
    """Download ``split`` with ``datasets.load_dataset`` (needs network or a warm HF cache)."""
    if not spec.hub_path:
        raise UserError(f"task '{spec.name}' has no hub dataset; give data_dir or train_file/dev_file")
    import datasets

    hub_split = spec.hub_splits["dev" if split == "dev" else "train"]
    try:
        dataset = datasets.load_dataset(spec.hub_path, spec.hub_config, split=hub_split)
    except Exception as err:  # offline, unknown name, ...: the user must fix the source
        raise UserError(
            f"could not load {spec.hub_path}/{spec.hub_config or ''} split '{hub_split}' from the hub ({err}); "
            "without network access, point data_dir (or train_file/dev_file) at local files"
        ) from None
    return {name: dataset[name] for name in dataset.column_names}


# ----------------------------------------------------------------------------- columns -> examples
def _apply_aliases(columns: dict[str, list[Any]], spec: TaskSpec) -> dict[str, list[Any]]:
    renamed = dict(columns)
    for original, hub_name in spec.column_aliases.items():
        if original in renamed and hub_name not in renamed:
            renamed[hub_name] = renamed.pop(original)
    return renamed


def _convert_label(value: Any, spec: TaskSpec, where: str) -> float | int:
    if spec.is_regression:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise UserError(f"{where}: label {value!r} is not a number (task '{spec.name}' is a regression)") from None
    if isinstance(value, str):
        text = value.strip()
        if text in spec.label_names:
            return spec.label_names.index(text)
        value = text
    try:
        label = int(value)
        if isinstance(value, float) and value != label:
            raise ValueError
    except (TypeError, ValueError):
        names = f" or one of {', '.join(spec.label_names)}" if spec.label_names else ""
        raise UserError(f"{where}: label {value!r} is not a class id{names}") from None
    if not 0 <= label < spec.num_labels:
        raise UserError(
            f"{where}: label {label} is out of range for task '{spec.name}' (expected 0..{spec.num_labels - 1}); "
            "unlabelled test splits (label -1) cannot be used for training or evaluation"
        )
    return label


def _to_examples(columns: dict[str, list[Any]], spec: TaskSpec, source: str) -> TextExamples:
    columns = _apply_aliases(columns, spec)
    missing = [name for name in (*spec.text_fields, spec.label_field) if name not in columns]
    if missing:
        raise UserError(
            f"{source}: missing column(s) {', '.join(missing)} for task '{spec.name}'; "
            f"the file has {', '.join(columns) or 'no columns'} (set text_fields / label_field to match)"
        )
    raw_labels = columns[spec.label_field]
    if not raw_labels:
        raise UserError(f"{source}: the split is empty (no examples after the header)")
    labels = [_convert_label(value, spec, f"{source} example {i}") for i, value in enumerate(raw_labels)]
    text_columns = [columns[name] for name in spec.text_fields]
    texts = [tuple("" if v is None else str(v) for v in row) for row in zip(*text_columns)]
    return TextExamples(spec, texts, labels, source)


def _subset(examples: TextExamples, limit: int | None, seed: int) -> TextExamples:
    """A seeded random subset of ``limit`` examples in their original order."""
    if limit is None or limit >= len(examples):
        return examples
    if limit <= 0:
        raise UserError(f"max examples must be positive, got {limit}")
    return _pick(examples, sorted(random.Random(seed).sample(range(len(examples)), limit)))


def validation_size(total: int, cfg: DataConfig) -> int:
    """Examples held out of a training file of ``total``: ``max(ceil(fraction * total), minimum)``, 0 when off."""
    if cfg.validation_fraction == 0:
        return 0
    return max(math.ceil(cfg.validation_fraction * total), cfg.min_validation_examples)


def _held_out_ids(examples: TextExamples, cfg: DataConfig) -> list[int]:
    """Indices of the training file's examples that form the validation split (seeded, sorted)."""
    size = validation_size(len(examples), cfg)
    if size >= len(examples):
        raise UserError(
            f"{examples.source}: {len(examples)} training examples are too few to hold out a validation split of "
            f"{size} (data.validation_fraction = {cfg.validation_fraction}, at least "
            f"data.min_validation_examples = {cfg.min_validation_examples}) and train on the rest; give more "
            "data, lower data.min_validation_examples, or set data.validation_fraction=0 (the last checkpoint is kept)"
        )
    return sorted(random.Random(cfg.validation_seed).sample(range(len(examples)), size))


def _pick(examples: TextExamples, ids: Sequence[int]) -> TextExamples:
    return TextExamples(examples.spec, [examples.texts[i] for i in ids], [examples.labels[i] for i in ids], examples.source)


def _carve(examples: TextExamples, cfg: DataConfig, split: Split) -> TextExamples:
    """The ``train`` part (the file less the held-out examples) or the ``validation`` part of a training file."""
    if split == "validation" and cfg.validation_fraction == 0:
        raise UserError("no validation split: set data.validation_fraction (e.g. 0.1) to hold one out of the training file")
    held = set(_held_out_ids(examples, cfg)) if cfg.validation_fraction else set()
    wanted = (lambda i: i in held) if split == "validation" else (lambda i: i not in held)
    return _pick(examples, [i for i in range(len(examples)) if wanted(i)])


def split_file(cfg: DataConfig, split: Split) -> Path | None:
    """The local file of ``split`` (None: the hub serves it); UserError when the folder has none.

    ``train`` and ``validation`` both come from the training file."""
    explicit = cfg.dev_file if split == "dev" else cfg.train_file
    if explicit:
        return Path(explicit)
    if cfg.data_dir:
        if not Path(cfg.data_dir).is_dir():
            raise UserError(f"data_dir not found: {cfg.data_dir} (give an existing folder)")
        return _find_split_file(Path(cfg.data_dir), split)
    return None


def load_split(cfg: DataConfig, split: Split, seed: int = 0) -> TextExamples:
    """Load ``split`` (``train``, ``validation`` or ``dev``) of ``cfg.task`` from local files or the hub.

    ``seed`` draws the ``max_train_examples`` / ``max_dev_examples`` subsets; the validation split
    is held out (with ``cfg.validation_seed``) before the training subset is drawn, and is used whole.
    """
    spec = resolve_task(cfg)
    path = split_file(cfg, split)
    if path is None:
        columns, source = _read_hub(spec, split), f"{spec.hub_path}/{spec.hub_config or ''}:{split}"
    else:
        columns, source = read_table(path, spec), str(path)
    examples = _to_examples(columns, spec, source)
    if split != "dev":
        examples = _carve(examples, cfg, split)
    if split == "train" and cfg.min_train_words:
        examples = _with_min_words(examples, cfg.min_train_words)
    limit = {"train": cfg.max_train_examples, "dev": cfg.max_dev_examples}.get(split)
    examples = _subset(examples, limit, seed)
    log.info("loaded %d %s examples of %s from %s", len(examples), split, spec.name, source)
    return examples


def _with_min_words(examples: TextExamples, min_words: int) -> TextExamples:
    keep = [i for i, fields in enumerate(examples.texts) if sum(len(f.split()) for f in fields) >= min_words]
    if not keep:
        raise UserError(f"no training example has {min_words} words or more (min_train_words); lower it")
    return _pick(examples, keep)


# ----------------------------------------------------------------------------- tokenisation
class EncodedDataset(torch.utils.data.Dataset):
    """Tokenised examples (unpadded token id lists) plus labels; batch them with :func:`collate`."""

    def __init__(self, features: list[dict[str, list[int]]], labels: Sequence[float | int], regression: bool):
        self.features = features
        self.labels = list(labels)
        self.regression = regression

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.features[index], "labels": self.labels[index]}


def encode(examples: TextExamples, tokenizer, max_length: int) -> EncodedDataset:
    """Tokenise every example (pairs as ``[CLS] a [SEP] b [SEP]``), truncated to ``max_length``."""
    fields = list(zip(*examples.texts))  # one list per text field
    encoded = tokenizer(*[list(f) for f in fields], truncation=True, max_length=max_length, padding=False)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
    features = [{k: encoded[k][i] for k in keys} for i in range(len(examples))]
    return EncodedDataset(features, examples.labels, examples.spec.is_regression)


def overlong_examples(examples: TextExamples, tokenizer, max_length: int) -> list[int]:
    """Indices of the examples that :func:`encode` cuts: longer than ``max_length`` tokens whole."""
    fields = list(zip(*examples.texts))
    whole = tokenizer(*[list(f) for f in fields], truncation=False, padding=False, verbose=False)["input_ids"]
    return [i for i, ids in enumerate(whole) if len(ids) > max_length]


def reject_empty_examples(examples: TextExamples, split: str) -> None:
    """UserError naming the examples whose every text field is blank (nothing to classify)."""
    empty = [i for i, texts in enumerate(examples.texts) if not any(str(t or "").strip() for t in texts)]
    if empty:
        shown = ", ".join(map(str, empty[:5])) + (", ..." if len(empty) > 5 else "")
        raise UserError(f"{len(empty)} {split} examples have no text (ids {shown}): remove them from {examples.source}")


def collate(batch: list[dict[str, Any]], pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad a list of examples to the longest one: ``input_ids`` etc. ``(B, T)``, ``labels`` ``(B,)``."""
    longest = max(len(item["input_ids"]) for item in batch)
    out: dict[str, torch.Tensor] = {}
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        if key not in batch[0]:
            continue
        pad = pad_token_id if key == "input_ids" else 0
        out[key] = torch.tensor([item[key] + [pad] * (longest - len(item[key])) for item in batch], dtype=torch.long)
    labels = [item["labels"] for item in batch]
    out["labels"] = torch.tensor(labels, dtype=torch.float32 if isinstance(labels[0], float) else torch.long)
    return out
