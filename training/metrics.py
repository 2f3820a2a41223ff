"""Classification metrics from predicted probabilities (numpy in, floats out), their bootstrap intervals,
and the paired tests that say whether one model beats another on the same pairs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import beta, binomtest, rankdata, spearmanr
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, roc_auc_score

from common.labels import class_targets, positive_index


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


# ------------------------------------------------------------------ a score against a threshold
# A model without a classifier (an sbert bi-encoder trained with sbert.objective cosine or mnrl) labels
# a pair by its cosine against a threshold chosen on the valid split: "same meaning" (the positive class,
# or the upper half of a graded scale) above it.


def best_threshold(cos, positive):
    """The cosine threshold maximising accuracy (ties: the higher F1), searched over midpoints."""
    order = np.sort(np.unique(cos))
    cands = np.concatenate([[order[0] - 1e-6], (order[1:] + order[:-1]) / 2, [order[-1] + 1e-6]])
    best = None
    for t in cands:
        pred = cos > t
        acc = float(np.mean(pred == positive))
        tp = float(np.sum(pred & positive))
        f1 = 2 * tp / max(np.sum(pred) + np.sum(positive), 1)
        if best is None or (acc, f1) > best[:2]:
            best = (acc, f1, float(t))
    return best


def same_meaning(y_true, label_names):
    """Which pairs mean the same: the positive class, or the upper half of a graded scale."""
    targets, graded = class_targets(label_names)
    y_true = np.asarray(y_true)
    return np.asarray(targets)[y_true] >= 0.5 if graded else y_true == positive_index(label_names)


def cosine_classes(cos, label_names, threshold):
    """The class a model without a classifier gives each pair: two classes, the positive one above the
    threshold, else the other; a graded scale, the class whose cosine target is nearest (what the
    cosine objective regresses to); other sets, the positive class or -1 (one of the others)."""
    cos = np.asarray(cos)
    targets, graded = class_targets(label_names)
    if graded:
        return np.abs(cos[:, None] - np.asarray(targets)[None, :]).argmin(axis=1)
    pos = positive_index(label_names)
    other = 1 - pos if len(label_names) == 2 else -1
    return np.where(cos > threshold, pos, other)


def cosine_metrics(y_true, cos, label_names, threshold):
    """cosine_threshold, cosine_accuracy, cosine_f1, cosine_auc of "same meaning" by cosine > threshold;
    spearman on a graded scale; for two classes, the confusion matrix of that rule."""
    cos, y_true = np.asarray(cos), np.asarray(y_true)
    positive = same_meaning(y_true, label_names)
    pred = cos > threshold
    tp = float(np.sum(pred & positive))
    out = {"n": int(len(cos)), "cosine_threshold": float(threshold), "cosine_accuracy": float(np.mean(pred == positive)),
           "cosine_f1": 2 * tp / max(float(np.sum(pred) + np.sum(positive)), 1.0)}
    if 0 < positive.sum() < len(positive):
        out["cosine_auc"] = float(roc_auc_score(positive, cos))
    targets, graded = class_targets(label_names)
    if graded:
        out["spearman"] = float(spearmanr(cos, np.asarray(targets)[y_true]).statistic)
    elif len(label_names) == 2:
        out["confusion_matrix"] = {"labels": [str(n) for n in label_names],
                                   "matrix": confusion_matrix(y_true, cosine_classes(cos, label_names, threshold),
                                                              labels=[0, 1]).tolist()}
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
                        f"{metrics['spread']:.3f} between the 5th and 95th percentile of pairs, under "
                        f"{MIN_SPREAD}): the model barely tells its pairs apart")
    return warnings


def better(metric, new, old):
    if old is None:
        return True
    return new < old if metric == "loss" else new > old


# ------------------------------------------------------------------ uncertainty
# Every interval and paired test below resamples the pairs with these settings (docs/tasks.md,
# "metrics.json"): seeded, so a run's numbers are reproducible, and 1,000 resamples put the 2.5th and
# 97.5th percentiles within about a tenth of a point of where 10,000 would.
RESAMPLES, SEED = 1000, 0
CONFIDENCE = 0.95  # of the intervals (two-sided) and of the paired tests (one-sided: alpha 0.05)


@dataclass(frozen=True)
class PairOutputs:
    """One model's class probabilities on a split's pairs with their true classes: what a paired test
    of two models needs (kept out of metrics.json; a run saves them as predictions/<split>.npz)."""

    labels: np.ndarray
    probs: np.ndarray
    label_names: tuple

    def save(self, path):
        np.savez_compressed(path, labels=self.labels, probs=self.probs.astype(np.float32),
                            label_names=np.array(self.label_names, dtype=str))

    @classmethod
    def load(cls, path):
        with np.load(path) as f:
            return cls(f["labels"], f["probs"], tuple(str(n) for n in f["label_names"]))

    @property
    def correct(self):
        return self.probs.argmax(axis=1) == self.labels


PER_PAIR = "per_pair"  # the key of a split's PairOutputs in a final evaluation (never written to metrics.json)


def with_uncertainty(metrics, labels, probs, label_names):
    """A split's final metrics: `metrics` plus `ci95` (bootstrap_ci) and, under PER_PAIR, the pairs'
    outputs for the paired tests (the run saves and removes them before writing metrics.json)."""
    out = PairOutputs(np.asarray(labels), np.asarray(probs, np.float64), tuple(str(n) for n in label_names))
    return {**metrics, "ci95": bootstrap_ci(out), PER_PAIR: out}


def interval_metrics(label_names):
    """The metrics that get an interval: accuracy plus f1 and auc (binary) or macro_f1."""
    return ("accuracy", "f1", "auc") if len(label_names) == 2 else ("accuracy", "macro_f1")


def resample_indices(n, resamples=RESAMPLES, seed=SEED, max_cells=1 << 22):
    """The bootstrap's resamples of n pairs, in chunks of rows (index arrays [rows, n]) so that a large
    split does not hold resamples x n indices at once. The same seed gives the same resamples, which
    is what makes a bootstrap over several models' outputs paired."""
    rng = np.random.default_rng(seed)
    rows = max(1, max_cells // max(n, 1))
    for start in range(0, resamples, rows):
        yield rng.integers(0, n, size=(min(rows, resamples - start), n))


def _f1(tp, fp, fn):
    den = 2 * tp + fp + fn
    return np.divide(2 * tp, den, out=np.zeros_like(den, dtype=np.float64), where=den > 0)  # sklearn's zero_division=0


def resampled_metric(metric, out, idx):
    """`metric` of `out` (PairOutputs) on each row of resample indices `idx` [rows, n], vectorised; as
    classification_metrics computes it on `out.labels[row]`, `out.probs[row]`. AUC is NaN on a resample
    holding one class only."""
    y, pred = out.labels[idx], out.probs.argmax(axis=1)[idx]
    if metric == "accuracy":
        return (y == pred).mean(axis=1)
    if metric == "macro_f1":
        classes = np.arange(len(out.label_names))[:, None, None]
        tp = ((pred == classes) & (y == classes)).sum(axis=2)
        fp = ((pred == classes) & (y != classes)).sum(axis=2)
        fn = ((pred != classes) & (y == classes)).sum(axis=2)
        return _f1(tp, fp, fn).mean(axis=0)
    pos = positive_index(out.label_names)
    if metric == "f1":
        t, p = y == pos, pred == pos
        return _f1((t & p).sum(axis=1), (~t & p).sum(axis=1), (t & ~p).sum(axis=1))
    if metric == "auc":  # Mann-Whitney: mean rank of the positives, ties at their average rank
        t = y == pos
        ranks = rankdata(out.probs[:, pos][idx], axis=1)
        n_pos = t.sum(axis=1)
        n_neg = t.shape[1] - n_pos
        with np.errstate(invalid="ignore", divide="ignore"):
            auc = ((ranks * t).sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
        return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)
    raise ValueError(f"no resampled form of the metric {metric!r}")


def _resampled(metric, outputs, resamples=RESAMPLES, seed=SEED):
    """[resamples, len(outputs)] values of `metric` for several models' outputs on the same resamples."""
    n = len(outputs[0].labels)
    return np.concatenate([np.stack([resampled_metric(metric, o, idx) for o in outputs], axis=1)
                           for idx in resample_indices(n, resamples, seed)])


def _percentiles(values, confidence=CONFIDENCE):
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    tail = 100 * (1 - confidence) / 2
    return [float(v) for v in np.percentile(values, [tail, 100 - tail])]


def bootstrap_ci(out, metrics=None, resamples=RESAMPLES, seed=SEED, confidence=CONFIDENCE):
    """`{metric: [lo, hi]}`: the percentile bootstrap interval of each metric over the pairs (`out`:
    PairOutputs). AUC resamples that hold one class only are skipped; a metric left with no
    resample (a split of one class) gets none."""
    metrics = metrics or interval_metrics(out.label_names)
    ci = {m: _percentiles(_resampled(m, [out], resamples, seed)[:, 0], confidence) for m in metrics}
    return {m: v for m, v in ci.items() if v is not None}


def mcnemar(a, b, alpha=1 - CONFIDENCE):
    """Exact one-sided McNemar test that model `a` is more accurate than `b` on the same pairs: on
    the pairs exactly one of them gets right, the number `a` gets right is Binomial(discordant, 1/2)
    when both are equally accurate. Returns the record metrics.json keeps."""
    ca, cb = a.correct, b.correct
    a_only, b_only = int(np.sum(ca & ~cb)), int(np.sum(~ca & cb))
    p = binomtest(a_only, a_only + b_only, 0.5, alternative="greater").pvalue if a_only + b_only else 1.0
    return {"test": "exact McNemar, one-sided", "metric": "accuracy", "pairs": int(len(ca)),
            "difference": float(ca.mean() - cb.mean()), "right_only": [a_only, b_only], "p_value": float(p),
            "alpha": alpha, "leads": bool(p < alpha)}


def paired_bootstrap(metric, a, b, resamples=RESAMPLES, seed=SEED, confidence=CONFIDENCE):
    """One-sided paired bootstrap that `a` scores higher than `b` on `metric` over the same pairs:
    `a` leads when the (1 - confidence) percentile of the resampled differences is above 0."""
    both = _resampled(metric, [a, b], resamples, seed)
    diff = both[:, 0] - both[:, 1]
    diff = diff[np.isfinite(diff)]
    lower = float(np.percentile(diff, 100 * (1 - confidence))) if len(diff) else float("nan")
    ca, cb = a.correct, b.correct
    return {"test": "paired bootstrap, one-sided", "metric": metric, "pairs": int(len(ca)),
            "difference": float(point_metric(metric, a) - point_metric(metric, b)),
            "right_only": [int(np.sum(ca & ~cb)), int(np.sum(~ca & cb))], "resamples": int(len(diff)),
            "seed": seed, "lower_bound": lower, "confidence": confidence, "leads": bool(lower > 0)}


def point_metric(metric, out):
    """`metric` on all the pairs (the resample that is the sample itself)."""
    return float(resampled_metric(metric, out, np.arange(len(out.labels))[None])[0])


def paired_test(metric, a, b):
    """Does model `a` lead model `b` on `metric` over the same pairs (`a`, `b`: PairOutputs)? Accuracy:
    the exact McNemar test; F1, macro-F1, AUC: the paired bootstrap. Both one-sided at CONFIDENCE."""
    if len(a.labels) != len(b.labels) or not np.array_equal(a.labels, b.labels):
        raise ValueError(f"a paired test needs two models' outputs on the same pairs: {len(a.labels)} and "
                         f"{len(b.labels)} pairs with {'the same' if len(a.labels) == len(b.labels) else 'other'} labels")
    return mcnemar(a, b) if metric == "accuracy" else paired_bootstrap(metric, a, b)


def describe_test(test, a="the first", b="the second"):
    """One line naming the test and what it found, e.g. for the run's summary and warnings."""
    if test["test"].startswith("exact McNemar"):
        how = f"exact McNemar, one-sided p={test['p_value']:.3g}"
    else:
        how = (f"paired bootstrap, one-sided {test['confidence']:.0%} lower bound "
               f"{test['lower_bound']:+.4f} on the {test['metric']} difference")
    right_a, right_b = test["right_only"]
    return (f"{how}; {test['pairs']} pairs, {right_a} right for {a} only, {right_b} for {b} only")


def gap_interval(metric, teacher, baseline, student, resamples=RESAMPLES, seed=SEED, confidence=CONFIDENCE):
    """The percentile interval of the share of the teacher-baseline gap a student closed,
    (student - baseline) / (teacher - baseline), resampling the pairs jointly for the three models.
    A resample where the teacher does not lead (teacher - baseline <= 0) has no share: it is dropped
    and counted. Returns `(interval_or_None, dropped)`."""
    t, b, s = _resampled(metric, [teacher, baseline, student], resamples, seed).T
    lead = t - b
    keep = np.isfinite(lead) & (lead > 0) & np.isfinite(s)
    share = (s[keep] - b[keep]) / lead[keep]
    return _percentiles(share, confidence), int(resamples - keep.sum())


def drop_lower_bound(a_only, b_only, n, confidence=CONFIDENCE):
    """A one-sided lower confidence bound on how much less accurate model B is than model A over n
    pairs, from the discordant pairs alone (`a_only` right for A only, `b_only` for B only): given the
    d = a_only + b_only discordant pairs, a_only is Binomial(d, pi) and the drop is (d / n)(2 pi - 1);
    pi's exact (Clopper-Pearson) lower bound and the observed discordance rate d / n give the bound.
    Negative when the data cannot tell B from A; 0 without discordant pairs."""
    d = a_only + b_only
    if d == 0:
        return 0.0
    pi_lo = float(beta.ppf(1 - confidence, a_only, b_only + 1)) if a_only else 0.0
    return d / n * (2 * pi_lo - 1)


def pairs_to_decide(a_only, b_only, n, limit, confidence=CONFIDENCE, most=10 ** 8):
    """The fewest pairs at the same discordance rates (a_only / n, b_only / n) whose drop_lower_bound
    exceeds `limit` (a share, not points), or None when the observed drop is within the limit (no
    number of pairs would show it is above) or more than `most` would be needed."""
    if (a_only - b_only) / n <= limit:
        return None

    def decided(m):
        return drop_lower_bound(a_only * m / n, b_only * m / n, m, confidence) > limit

    lo, hi = n, n
    while not decided(hi):  # the bound grows towards the observed drop as the pairs grow
        lo, hi = hi, hi * 2
        if hi > most:
            return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if decided(mid) else (mid, hi)
    return hi
