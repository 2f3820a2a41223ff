"""What a label set means: which class is "the same meaning" (`positive_index`), whether the labels are
a graded numeric scale, and the cosine target of each class (`class_targets`). Read by training
(metrics, the sbert head), by the TF-free predict and search, and by the data readers (numeric labels
sort as numbers)."""

from __future__ import annotations

import math

import numpy as np

# The names of the positive class, in order of preference, compared in lower case.
POSITIVE_NAMES = ("1", "true", "yes", "positive", "paraphrase", "entailment", "similar")


def is_number(value) -> bool:
    """Whether `value` (a label as read) is a finite number: "2", "-1", "0.5"; not "nan" or "inf"."""
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


def positive_index(label_names):
    """The class scored by binary F1/AUC: "1" (or "true"/"yes"/"entailment"...) if present, else the last."""
    lowered = [str(n).lower() for n in label_names]
    for name in POSITIVE_NAMES:
        if name in lowered:
            return lowered.index(name)
    return len(label_names) - 1


def class_targets(label_names):
    """Cosine targets per class: scaled values for graded numeric labels (more than two classes, all
    numbers), else 1 for the positive class and 0 for the others. Returns `(targets, graded)`."""
    if len(label_names) > 2 and all(is_number(n) for n in label_names):
        vals = np.array([float(n) for n in label_names])
        return list((vals - vals.min()) / max(vals.max() - vals.min(), 1e-9)), True
    pos = positive_index(label_names)
    return [1.0 if i == pos else 0.0 for i in range(len(label_names))], False
