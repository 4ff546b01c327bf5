"""Task metadata for GLUE-style text classification and regression.

A :class:`TaskSpec` says where a task lives on the Hugging Face hub, which columns hold the text
and the label, how many labels there are and how GLUE scores it. The same spec is used for hub
datasets and for local files (TSV, CSV, JSONL, Parquet), so a local copy of SST-2 and
``glue/sst2`` from the hub produce identical examples.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from mpcformer.errors import UserError

__all__ = ["TaskSpec", "KNOWN_TASKS", "get_task", "MetricName"]

#: GLUE's metric per task: accuracy (SST-2, QNLI, RTE, WNLI, MNLI, IMDb), F1 + accuracy (MRPC, QQP),
#: Matthews correlation (CoLA), Pearson + Spearman (STS-B, regression).
MetricName = Literal["accuracy", "f1", "matthews", "pearson_spearman"]


@dataclass(frozen=True)
class TaskSpec:
    """One task: columns, labels, metric and hub location.

    ``num_labels == 1`` means regression (float labels, MSE loss). ``label_names`` maps string
    labels found in some local files (e.g. ``entailment``) to class ids, in order.
    ``column_aliases`` renames columns of the original GLUE TSV release to the hub names.
    ``headerless_columns`` names the columns of a release file that has no header row (CoLA's
    ``source, label, author mark, sentence``), by position.
    """

    name: str
    text_fields: tuple[str, ...]
    label_field: str
    num_labels: int
    metric: MetricName
    hub_path: str = ""
    hub_config: str | None = None
    hub_splits: dict[str, str] = field(default_factory=lambda: {"train": "train", "dev": "validation"})
    label_names: tuple[str, ...] = ()
    column_aliases: dict[str, str] = field(default_factory=dict)
    headerless_columns: tuple[str, ...] = ()

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    @property
    def primary_metric(self) -> str:
        """The single number used to pick the best checkpoint (GLUE's first-listed metric)."""
        return {"accuracy": "accuracy", "f1": "f1", "matthews": "matthews", "pearson_spearman": "pearson"}[self.metric]

    @property
    def official_metrics(self) -> tuple[str, ...]:
        """GLUE's reported metrics: F1 and accuracy (MRPC, QQP), Pearson and Spearman (STS-B), else one."""
        return {"accuracy": ("accuracy",), "f1": ("f1", "accuracy"), "matthews": ("matthews",),
                "pearson_spearman": ("pearson", "spearman")}[self.metric]

    def with_columns(
        self, text_fields: tuple[str, ...] | None = None, label_field: str | None = None
    ) -> "TaskSpec":
        """The same task read from files whose columns are named differently."""
        return replace(
            self,
            text_fields=tuple(text_fields) if text_fields else self.text_fields,
            label_field=label_field or self.label_field,
        )


def _glue(name: str, text_fields: tuple[str, ...], num_labels: int, metric: MetricName, **kw) -> TaskSpec:
    return TaskSpec(name, text_fields, "label", num_labels, metric, hub_path="nyu-mll/glue", hub_config=name, **kw)


_NLI = ("entailment", "not_entailment")

KNOWN_TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        _glue("sst2", ("sentence",), 2, "accuracy"),
        _glue("cola", ("sentence",), 2, "matthews", headerless_columns=("source", "label", "author_mark", "sentence")),
        _glue(
            "mrpc", ("sentence1", "sentence2"), 2, "f1",
            column_aliases={"#1 String": "sentence1", "#2 String": "sentence2", "Quality": "label"},
        ),
        _glue("qqp", ("question1", "question2"), 2, "f1", column_aliases={"is_duplicate": "label"}),
        _glue("stsb", ("sentence1", "sentence2"), 1, "pearson_spearman", column_aliases={"score": "label"}),
        _glue(
            "mnli", ("premise", "hypothesis"), 3, "accuracy",
            hub_splits={"train": "train", "dev": "validation_matched"},
            label_names=("entailment", "neutral", "contradiction"),
            column_aliases={"sentence1": "premise", "sentence2": "hypothesis", "gold_label": "label"},
        ),
        _glue("qnli", ("question", "sentence"), 2, "accuracy", label_names=_NLI),
        _glue("rte", ("sentence1", "sentence2"), 2, "accuracy", label_names=_NLI),
        _glue("wnli", ("sentence1", "sentence2"), 2, "accuracy"),
        TaskSpec(
            "imdb", ("text",), "label", 2, "accuracy", hub_path="stanfordnlp/imdb",
            hub_splits={"train": "train", "dev": "test"},
        ),
    )
}


def get_task(name: str) -> TaskSpec:
    """Look up a task by ``sst2``, ``glue/sst2``, GLUE's folder name (``STS-B``, ``CoLA``) or ``imdb``;
    unknown names list the known ones."""
    key = name.strip().lower()
    if key.startswith("glue/"):
        key = key[len("glue/"):]
    key = key.replace("-", "")  # GLUE's folder name STS-B
    spec = KNOWN_TASKS.get(key)
    if spec is None:
        raise UserError(
            f"unknown task '{name}'; known tasks: {', '.join(sorted(KNOWN_TASKS))} "
            "(for another dataset, give its text_fields, label_field, num_labels and metric in the data config)"
        )
    return spec
