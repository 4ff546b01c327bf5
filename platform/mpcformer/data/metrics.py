"""GLUE metrics in plain numpy: accuracy, F1, Matthews correlation, Pearson and Spearman.

Definitions follow the GLUE benchmark (Wang et al., 2019) and scikit-learn / scipy:

- accuracy = mean(pred == label);
- F1 = 2 TP / (2 TP + FP + FN), positive class 1 (MRPC, QQP); 0 when there is no positive at all;
- Matthews = (TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)), 0 when a margin is empty (CoLA);
- Pearson r = cov(x, y) / (std x std y); Spearman rho = Pearson r of average ranks (STS-B).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mpcformer.data.tasks import TaskSpec

__all__ = ["accuracy", "f1_binary", "matthews_corrcoef", "pearson", "spearman", "compute_metrics", "predictions"]

ArrayLike = Sequence[float] | np.ndarray


def accuracy(preds: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of predictions equal to their label."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    return float((preds == labels).mean())


def _confusion(preds: ArrayLike, labels: ArrayLike) -> tuple[int, int, int, int]:
    preds, labels = np.asarray(preds) == 1, np.asarray(labels) == 1
    tp = int((preds & labels).sum())
    tn = int((~preds & ~labels).sum())
    fp = int((preds & ~labels).sum())
    fn = int((~preds & labels).sum())
    return tp, tn, fp, fn


def f1_binary(preds: ArrayLike, labels: ArrayLike) -> float:
    """F1 of the positive class 1: 2 TP / (2 TP + FP + FN)."""
    tp, _, fp, fn = _confusion(preds, labels)
    denominator = 2 * tp + fp + fn
    return 0.0 if denominator == 0 else 2 * tp / denominator


def matthews_corrcoef(preds: ArrayLike, labels: ArrayLike) -> float:
    """Matthews correlation of two binary labelings (0 when any margin is empty, as scikit-learn)."""
    tp, tn, fp, fn = _confusion(preds, labels)
    denominator = float(tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    return 0.0 if denominator == 0 else float((tp * tn - fp * fn) / np.sqrt(denominator))


def pearson(x: ArrayLike, y: ArrayLike) -> float:
    """Pearson correlation; 0 when either input is constant."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    dx, dy = x - x.mean(), y - y.mean()
    denominator = np.sqrt((dx * dx).sum() * (dy * dy).sum())
    return 0.0 if denominator == 0 else float((dx * dy).sum() / denominator)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given the mean of the ranks they span (scipy's 'average')."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    return ranks


def spearman(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman rank correlation: Pearson of average ranks."""
    return pearson(_average_ranks(np.asarray(x, dtype=np.float64)), _average_ranks(np.asarray(y, dtype=np.float64)))


def predictions(logits: np.ndarray, spec: TaskSpec) -> np.ndarray:
    """Class ids (argmax over ``(N, C)``) or, for regression, the ``(N,)`` scores."""
    logits = np.asarray(logits)
    return logits.reshape(-1) if spec.is_regression else logits.argmax(-1)


def compute_metrics(logits: np.ndarray, labels: ArrayLike, spec: TaskSpec) -> dict[str, float]:
    """GLUE's metrics for ``spec`` from raw logits ``(N, C)`` (``(N, 1)`` for regression)."""
    preds = predictions(logits, spec)
    labels = np.asarray(labels)
    if spec.metric == "pearson_spearman":
        return {"pearson": pearson(preds, labels), "spearman": spearman(preds, labels)}
    metrics = {"accuracy": accuracy(preds, labels)}
    if spec.metric == "f1":
        metrics["f1"] = f1_binary(preds, labels)
    elif spec.metric == "matthews":
        metrics["matthews"] = matthews_corrcoef(preds, labels)
    return metrics
