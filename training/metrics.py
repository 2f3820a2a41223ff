"""Classification metrics from predicted probabilities (numpy in, floats out)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, roc_auc_score


def positive_index(label_names):
    """The class scored by binary F1/AUC: "1" (or "true"/"yes"/"entailment") if present, else the last."""
    lowered = [str(n).lower() for n in label_names]
    for name in ("1", "true", "yes", "positive", "paraphrase", "entailment", "similar"):
        if name in lowered:
            return lowered.index(name)
    return len(label_names) - 1


def classification_metrics(y_true, probs, label_names):
    """accuracy, f1 + auc (binary) or macro_f1 (multi-class), n, and a confusion matrix."""
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    pred = probs.argmax(axis=1)
    out = {"n": int(len(y_true)), "accuracy": float(accuracy_score(y_true, pred))}
    classes = list(range(len(label_names)))
    if len(label_names) == 2:
        pos = positive_index(label_names)
        out["f1"] = float(f1_score(y_true == pos, pred == pos, zero_division=0))
        both = len(np.unique(y_true)) == 2
        out["auc"] = float(roc_auc_score(y_true == pos, probs[:, pos])) if both else float("nan")
    else:
        out["macro_f1"] = float(f1_score(y_true, pred, labels=classes, average="macro", zero_division=0))
    out["confusion_matrix"] = {"labels": [str(n) for n in label_names],
                               "matrix": confusion_matrix(y_true, pred, labels=classes).tolist()}
    out["spread"] = probability_spread(probs)
    return out


def probability_spread(probs):
    """How differently the model scores its pairs: the widest 5th-95th percentile range of any class's
    probability (0: every pair gets the same scores; near 1: confident both ways)."""
    lo, hi = np.percentile(probs, [5, 95], axis=0)
    return float(np.max(hi - lo))


MIN_SPREAD = 0.2  # below it a model barely tells its pairs apart (a quick-start model at 18 steps: 0.13)


def constant_prediction_warnings(metrics, split="valid"):
    """Warnings for predictions that hardly depend on the pair: one predicted class for a split with
    several labels, or class probabilities within a band narrower than `MIN_SPREAD` for 90% of pairs."""
    warnings = []
    matrix = np.asarray(metrics.get("confusion_matrix", {}).get("matrix", []))
    if matrix.size and (matrix.sum(axis=1) > 0).sum() > 1 and (matrix.sum(axis=0) > 0).sum() == 1:
        name = metrics["confusion_matrix"]["labels"][int(matrix.sum(axis=0).argmax())]
        warnings.append(f"every {split} pair is predicted as {name!r}: the model has not learned to tell the "
                        f"classes apart")
    elif metrics.get("spread", 1.0) < MIN_SPREAD:
        warnings.append(f"the {split} predictions are nearly constant (every class probability varies by "
                        f"{metrics['spread']:.2f} between the 5th and 95th percentile of pairs, under "
                        f"{MIN_SPREAD}): the model barely tells its pairs apart")
    return warnings


def better(metric, new, old):
    if old is None:
        return True
    return new < old if metric == "loss" else new > old
