"""GLUE metrics as fractions (accuracy, f1, mcc in [0, 1] / [-1, 1]; pearson, spearman in [-1, 1])."""

from __future__ import annotations

import math

import numpy as np

from designspace.errors import DesignSpaceError, invalid
from designspace.tasks import TaskSpec, get_task


def accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    """Fraction of exact matches."""
    return float(np.mean(pred == gold))


def f1_binary(pred: np.ndarray, gold: np.ndarray) -> float:
    """F1 of the positive class 1; 0.0 when neither predictions nor labels contain it."""
    tp = int(np.sum((pred == 1) & (gold == 1)))
    wrong = int(np.sum(pred != gold))  # fp + fn
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + wrong)


def mcc(pred: np.ndarray, gold: np.ndarray) -> float:
    """Matthews correlation (multi-class form); 0.0 when predictions or labels are constant."""
    classes, inv = np.unique(np.concatenate([gold, pred]), return_inverse=True)
    k, n = len(classes), len(gold)
    conf = np.zeros((k, k), dtype=np.float64)
    np.add.at(conf, (inv[:n], inv[n:]), 1)
    t, p = conf.sum(axis=1), conf.sum(axis=0)  # true and predicted counts per class
    c, s = np.trace(conf), float(n)
    den = math.sqrt(s * s - p @ p) * math.sqrt(s * s - t @ t)
    return 0.0 if den == 0 else float((c * s - t @ p) / den)


def _correlation(kind: str, pred: np.ndarray, gold: np.ndarray) -> float:
    # Constant or non-finite input makes scipy warn and return nan; a flat or diverged model scores 0.
    if len(pred) < 2 or not np.all(np.isfinite(pred)) or np.ptp(pred) == 0 or np.ptp(gold) == 0:
        return 0.0
    from scipy import stats

    r = stats.pearsonr(pred, gold)[0] if kind == "pearson" else stats.spearmanr(pred, gold)[0]
    return 0.0 if not np.isfinite(r) else float(r)


_METRICS = {
    "accuracy": accuracy,
    "f1": f1_binary,
    "mcc": mcc,
    "pearson": lambda p, g: _correlation("pearson", p, g),
    "spearman": lambda p, g: _correlation("spearman", p, g),
}


def _as_predictions(spec: TaskSpec, predictions) -> np.ndarray:
    pred = np.asarray(predictions)
    if spec.is_regression:
        # A (n, 1) regression head output is common; squeeze it.
        if pred.ndim == 2 and pred.shape[1] == 1:
            pred = pred[:, 0]
        if pred.ndim != 1:
            raise invalid("predictions.shape", pred.shape, "(n,) or (n, 1) scores", spec.name)
        return pred.astype(np.float64)
    if pred.ndim == 2:  # logits or probabilities
        if pred.shape[1] != spec.num_labels:
            raise invalid("predictions.shape", pred.shape, f"(n,) class ids or (n, {spec.num_labels}) logits",
                          spec.name)
        return pred.argmax(axis=1)
    if pred.ndim != 1:
        raise invalid("predictions.shape", pred.shape, "(n,) class ids or (n, num_labels) logits", spec.name)
    if pred.dtype.kind == "f" and not np.all(pred == np.round(pred)):
        raise invalid("predictions", "non-integer floats", "class indices or 2-D logits", spec.name)
    return pred.astype(np.int64)


def compute_metrics(task: str | TaskSpec, predictions, labels) -> dict[str, float]:
    """The task's metrics (``TaskSpec.metric_names``) for class ids / logits (or scores for STS-B)."""
    spec = get_task(task)
    pred = _as_predictions(spec, predictions)
    gold = np.asarray(labels, dtype=np.float64 if spec.is_regression else np.int64).reshape(-1)
    if len(pred) != len(gold):
        raise DesignSpaceError(f"{spec.name}: {len(pred)} predictions for {len(gold)} labels; they must match")
    if len(gold) == 0:
        raise DesignSpaceError(f"{spec.name}: no examples to score; pass at least one prediction")
    return {m: _METRICS[m](pred, gold) for m in spec.metric_names}


def main_score(task: str | TaskSpec, metrics: dict[str, float]) -> float:
    """The task's headline number (sst2 accuracy, cola mcc, mrpc f1, rte accuracy, stsb pearson...)."""
    spec = get_task(task)
    if spec.main_metric not in metrics:
        raise invalid("metrics", sorted(metrics), f"a dict holding {spec.main_metric!r}", spec.name)
    return float(metrics[spec.main_metric])
