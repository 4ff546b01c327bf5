"""Task data: GLUE-style task metadata, loaders (hub and local files), metrics, a synthetic set."""

from mpcformer.data.loading import (
    DataConfig, TextExamples, collate, encode, load_split, overlong_examples, read_table, reject_empty_examples,
    resolve_task,
)
from mpcformer.data.metrics import compute_metrics
from mpcformer.data.synthetic import synthetic_sentiment, write_synthetic_sentiment
from mpcformer.data.tasks import KNOWN_TASKS, TaskSpec, get_task

__all__ = [
    "DataConfig",
    "TextExamples",
    "TaskSpec",
    "KNOWN_TASKS",
    "get_task",
    "resolve_task",
    "load_split",
    "read_table",
    "encode",
    "collate",
    "reject_empty_examples",
    "overlong_examples",
    "compute_metrics",
    "synthetic_sentiment",
    "write_synthetic_sentiment",
]
