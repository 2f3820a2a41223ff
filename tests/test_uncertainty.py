"""Intervals and paired tests (training/metrics.py), each against an independent reference: sklearn's
metrics on the resampled pairs, scipy.stats.bootstrap, binomial sums worked by hand. numpy only: no
model is trained here."""

import math

import numpy as np
import pytest
from scipy import stats

from training.metrics import (PairOutputs, bootstrap_ci, classification_metrics, drop_lower_bound, gap_interval,
                              mcnemar, paired_bootstrap, paired_test, pairs_to_decide, point_metric, resample_indices,
                              resampled_metric)


def _outputs(n, names=("0", "1"), skill=0.3, seed=0, decimals=1):
    """n pairs with true classes and probabilities that favour them by `skill` (rounded: ties in AUC)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(names), n)
    p = rng.random((n, len(names))) + skill * np.eye(len(names))[y] * len(names)
    p = np.round(p / p.sum(1, keepdims=True), decimals)
    return PairOutputs(y, p, tuple(names))


def _with_correct(y, correct, names=("0", "1")):
    """PairOutputs of a model right exactly where `correct` says (binary)."""
    pred = np.where(correct, y, 1 - y)
    return PairOutputs(y, np.eye(2)[pred] * 0.8 + 0.1, names)


@pytest.mark.parametrize("names", [("0", "1"), ("1", "0"), ("a", "b", "c")])
def test_resampled_metrics_are_sklearns_on_each_resample(names):
    """The vectorised metrics equal classification_metrics (sklearn) on the resampled pairs, the
    identity resample included; AUC is NaN on a resample of one class."""
    out = _outputs(40, names)
    idx = np.vstack([np.arange(40), next(resample_indices(40, 6, seed=3)), np.zeros(40, int)])
    for row, i in enumerate(idx):
        want = classification_metrics(out.labels[i], out.probs[i], names)
        for metric in ("accuracy", "f1", "auc", "macro_f1"):
            if metric in want:
                got = resampled_metric(metric, out, idx)[row]
                assert (math.isnan(got) and math.isnan(want[metric])) or got == pytest.approx(want[metric]), metric
    assert point_metric("accuracy", out) == pytest.approx(classification_metrics(out.labels, out.probs, names)["accuracy"])


def test_bootstrap_ci_agrees_with_scipy_and_is_seeded():
    """The percentile intervals match scipy.stats.bootstrap's (its own resamples: within Monte Carlo
    error) for accuracy and F1 on 200 pairs; the same seed gives the same interval, another seed a
    slightly different one."""
    out = _outputs(200, skill=0.15)
    ci = bootstrap_ci(out)
    assert set(ci) == {"accuracy", "f1", "auc"}
    right = (out.probs.argmax(1) == out.labels).astype(float)
    ref = stats.bootstrap((right,), np.mean, method="percentile", n_resamples=2000,
                          rng=np.random.default_rng(1)).confidence_interval
    assert ci["accuracy"] == pytest.approx([ref.low, ref.high], abs=0.015)
    ref = stats.bootstrap((out.labels, out.probs.argmax(1)), lambda y, p: 2 * np.sum(y & p) / (y.sum() + p.sum()),
                          paired=True, vectorized=False, method="percentile", n_resamples=1000,
                          rng=np.random.default_rng(1)).confidence_interval
    assert ci["f1"] == pytest.approx([ref.low, ref.high], abs=0.02)
    assert bootstrap_ci(out) == ci and bootstrap_ci(out, seed=1) != ci
    lo, hi = ci["auc"]
    assert lo < classification_metrics(out.labels, out.probs, out.label_names)["auc"] < hi


def test_bootstrap_ci_skips_one_class_resamples_and_a_one_class_split():
    """4 pairs, one positive: about (3/4)^4 = 32% of the resamples hold no positive and have no AUC;
    a split of one class has no AUC interval at all."""
    out = PairOutputs(np.array([1, 0, 0, 0]), np.array([[0.2, 0.8], [0.6, 0.4], [0.9, 0.1], [0.3, 0.7]]), ("0", "1"))
    values = np.concatenate([resampled_metric("auc", out, i) for i in resample_indices(4)])
    assert np.isnan(values).mean() == pytest.approx((3 / 4) ** 4, abs=0.05)
    assert bootstrap_ci(out)["auc"][1] == 1.0
    one = PairOutputs(np.zeros(4, int), out.probs, ("0", "1"))
    assert set(bootstrap_ci(one)) == {"accuracy", "f1"}


def test_mcnemar_by_hand():
    """One-sided exact McNemar: with b pairs right for A only and c for B only, p = P(X >= b) for
    X ~ Binomial(b + c, 1/2)."""
    y = np.zeros(100, int)
    a_right, b_right = np.ones(100, bool), np.ones(100, bool)
    b_right[:10] = False  # 10 right for A only
    a_right[10] = False  # 1 for B only
    r = mcnemar(_with_correct(y, a_right), _with_correct(y, b_right))
    assert r["p_value"] == pytest.approx((math.comb(11, 10) + math.comb(11, 11)) / 2 ** 11)  # 12/2048 = 0.0059
    assert r["leads"] and r["right_only"] == [10, 1] and r["pairs"] == 100 and r["difference"] == pytest.approx(0.09)
    b_right[5:10] = True  # 5 vs 1: p = 7/64 = 0.11
    r = mcnemar(_with_correct(y, a_right), _with_correct(y, b_right))
    assert r["p_value"] == pytest.approx(7 / 64) and not r["leads"]
    same = mcnemar(_with_correct(y, a_right), _with_correct(y, a_right))
    assert same["p_value"] == 1.0 and not same["leads"] and same["right_only"] == [0, 0]


def test_paired_test_picks_the_test_and_needs_the_same_pairs():
    """Accuracy: McNemar; F1/AUC: the paired bootstrap, which finds a clearly better model leading and
    a model not leading itself; outputs on other pairs are refused."""
    strong, weak = _outputs(300, skill=0.4), _outputs(300, skill=0.05)
    weak = PairOutputs(strong.labels, weak.probs, strong.label_names)  # the same pairs
    assert paired_test("accuracy", strong, weak)["test"].startswith("exact McNemar")
    r = paired_test("f1", strong, weak)
    assert r["test"].startswith("paired bootstrap") and r["leads"] and r["lower_bound"] > 0
    assert r["difference"] == pytest.approx(point_metric("f1", strong) - point_metric("f1", weak))
    assert r["lower_bound"] < r["difference"]
    assert not paired_bootstrap("auc", strong, strong)["leads"]  # a difference of exactly 0 everywhere
    assert not paired_test("auc", weak, strong)["leads"]
    with pytest.raises(ValueError, match="same pairs"):
        paired_test("accuracy", strong, _outputs(299))


def test_gap_interval_is_the_ratio_on_joint_resamples():
    """Each resample's share (s - b) / (t - b), computed pair by pair in a loop over the same resamples;
    resamples where the teacher does not lead are dropped and counted."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    t_right = rng.random(60) < 0.9
    b_right = rng.random(60) < 0.75
    s_right = np.where(rng.random(60) < 0.5, t_right, b_right)
    models = [_with_correct(y, r) for r in (t_right, b_right, s_right)]
    (lo, hi), dropped = gap_interval("accuracy", *models, resamples=300)
    shares, none = [], 0
    for idx in resample_indices(60, 300):
        for i in idx:
            t, b, s = (sum(r[k] for k in i) / 60 for r in (t_right, b_right, s_right))
            if t > b:
                shares.append((s - b) / (t - b))
            else:
                none += 1
    assert dropped == none and [lo, hi] == pytest.approx(list(np.percentile(shares, [2.5, 97.5])))
    point = (s_right.mean() - b_right.mean()) / (t_right.mean() - b_right.mean())
    assert lo < point < hi


def test_drop_lower_bound_by_hand():
    """With every discordant pair on fp32's side (a of a), pi's one-sided Clopper-Pearson bound is
    0.05 ** (1 / a); the drop bound is (a / n)(2 pi - 1)."""
    # the user's file: 60 pairs, int8 wrong on 2 that fp32 gets right: -3.33 points, but cannot be told
    assert drop_lower_bound(2, 0, 60) == pytest.approx(2 / 60 * (2 * 0.05 ** 0.5 - 1))  # -1.84 points
    # 1000 pairs, 20 vs 0: at least 1.44 points: above a 1-point limit
    assert drop_lower_bound(20, 0, 1000) == pytest.approx(0.02 * (2 * 0.05 ** (1 / 20) - 1))
    assert 100 * drop_lower_bound(20, 0, 1000) == pytest.approx(1.4436, abs=1e-4)
    # 30 vs 2: the bound on pi is where P(X >= 30 | Binomial(32, pi)) falls to 5%
    bound = drop_lower_bound(30, 2, 1000)
    pi = (bound * 1000 / 32 + 1) / 2
    assert stats.binom.sf(29, 32, pi) == pytest.approx(0.05)
    assert 100 * bound == pytest.approx(2.02, abs=0.01)
    assert drop_lower_bound(0, 0, 50) == 0.0 and drop_lower_bound(0, 3, 50) == -3 / 50


def test_pairs_to_decide_is_where_the_bound_crosses_the_limit():
    m = pairs_to_decide(2, 0, 60, 0.01)  # the user's rates: 1 pair in 30 right for fp32 only
    assert drop_lower_bound(2 * m / 60, 0, m) > 0.01 >= drop_lower_bound(2 * (m - 1) / 60, 0, m - 1)
    assert 150 < m < 300
    assert pairs_to_decide(10, 9, 100, 0.01) is None  # a 1-point drop is within a 1-point limit
    assert pairs_to_decide(30, 2, 1000, 0.01) == 1000  # already decided
