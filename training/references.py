"""What a student is compared with: its teacher's and baseline's scores on the run's splits (trained
in the run's own directory when asked), and the share of the teacher-baseline gap it closed."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

from modeling.model_dir import load_model_dir
from training.inputs import tokenize
from training.metrics import (PER_PAIR, RESAMPLES, SEED, PairOutputs, describe_test, gap_interval, interval_metrics,
                              paired_test)
from training.rundir import RunError, differences, finished
from training.trainer import evaluator

log = logging.getLogger(__name__)


def run_or_reuse(sub_cfg, train_fn, what):
    """Train a run's sub-model (`what`: teacher, baseline) in `sub_cfg.out`, or reuse it when an
    interrupted parent run is resumed after the sub-run had finished with the same settings."""
    out = Path(sub_cfg.out)
    if finished(out):
        diffs = differences(sub_cfg, out)
        if diffs:
            raise RunError(f"{out} holds a {what} trained with other settings ({'; '.join(diffs)}); "
                           f"start fresh with another --out")
        log.info("the %s in %s is finished: reusing it", what, out)
        return json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    return train_fn(sub_cfg)


def baseline_scores(task, run_dir, splits):
    """Valid/test scores of the task's baseline (`task.baseline_path()`): None skips it, a model directory
    is scored on this run's splits, `auto` trains it in <out>/baseline on a copy of the run's configuration
    that `task.as_baseline` turns into the baseline's (everything else as the student's)."""
    path = task.baseline_path()
    if path is None:
        return None
    if path != "auto":
        return {**score_model_dir(path, splits, task.cfg, f"{task.section}.baseline"), "model_dir": str(path)}
    bcfg = copy.deepcopy(task.cfg)
    bcfg.out = str(Path(run_dir) / "baseline")
    bcfg.transfer = type(bcfg.transfer)()  # the baseline learns from the gold pairs alone: no teacher labels them
    train_fn = task.as_baseline(bcfg)
    log.info("baseline=auto: training the student's baseline first in %s", bcfg.out)
    metrics = run_or_reuse(bcfg, train_fn, "baseline")
    model_dir = Path(bcfg.out) / "model"
    return {**reference_scores(model_dir, metrics, splits, task.cfg), "model_dir": str(model_dir)}


def teacher_report(teacher, teacher_metrics, splits, cfg):
    """The teacher's valid/test scores on this run's splits (from its own run when it was trained
    here) and its model directory, for metrics.json."""
    return {**reference_scores(teacher.path, teacher_metrics, splits, cfg), "model_dir": str(teacher.path)}


def reference_scores(model_dir, run_metrics, splits, cfg):
    """A teacher's or baseline's valid/test scores with their per-pair outputs (for the paired tests):
    from the sub-run that trained it in this run's directory (`run_metrics`, and its
    predictions/<split>.npz), else scored here. A multi-worker run's other workers get no metrics from
    the sub-run: they score the chief's model, so every worker decides from the same numbers
    (virt.interaction_weight)."""
    blocks = {k: {**run_metrics[k], PER_PAIR: load_predictions(Path(model_dir).parent, k)}
              for k in ("valid", "test") if k in (run_metrics or {})}
    if blocks and all(b[PER_PAIR] is not None for b in blocks.values()):
        return blocks
    return score_model_dir(model_dir, splits, cfg)  # also a sub-run written before predictions were saved


def score_model_dir(path, splits, cfg, key="the reference model"):
    """valid/test metrics (with intervals and per-pair outputs) of another model directory (teacher,
    baseline; `key` names the setting that gave it) on this run's splits. It is compared with the
    student pair by pair on class probabilities, in the data's class order: a model without a classifier
    or with other labels is refused."""
    loaded = load_model_dir(path)
    if not loaded.has_classifier:
        raise RunError(f"{key}={path}: a {loaded.kind} model without a classifier (its outputs: "
                       f"{', '.join(loaded.kind_class.predict_outputs(loaded.meta['model']['config']))}); it is "
                       f"compared with the student on class probabilities: give a model directory with a "
                       f"classifier (a cross_encoder, a virt model, or an sbert model trained with "
                       f"sbert.objective=softmax)")
    if [str(n) for n in loaded.labels or []] != [str(n) for n in splits.label_names]:
        raise RunError(f"{key}={path}: its labels {loaded.labels} are not the data's {list(splits.label_names)} "
                       f"(in this order): its class probabilities would be read as other classes")
    evaluate = evaluator(splits.label_names, cfg.train.eval_batch_size, loaded.threshold)
    out = {}
    for name in ("valid", "test"):
        pairs = getattr(splits, name)
        if pairs is not None:
            split = tokenize(loaded.model, loaded.tokenizer, pairs, splits.label_names, cfg.train.max_seq_len, name)
            out[name] = evaluate(loaded.model, split, final=True)
    return out


def predictions_path(run_dir, split):
    return Path(run_dir) / "predictions" / f"{split}.npz"


def load_predictions(run_dir, split):
    """The PairOutputs a run saved for `split`, or None."""
    path = predictions_path(run_dir, split)
    return PairOutputs.load(path) if path.is_file() else None


def save_predictions(run_dir, metrics):
    """Move the per-pair outputs out of `metrics` (before metrics.json is written): the run's own
    splits' go to <run_dir>/predictions/<split>.npz, where a parent run that trained this one as its
    teacher or baseline finds them; its references' are dropped (their own runs hold them)."""
    for split in ("valid", "test"):
        outputs = metrics.get(split, {}).pop(PER_PAIR, None)
        if outputs is not None:
            predictions_path(run_dir, split).parent.mkdir(parents=True, exist_ok=True)
            outputs.save(predictions_path(run_dir, split))
    for ref in ("teacher", "baseline"):
        for split in ("valid", "test"):
            metrics.get(ref, {}).get(split, {}).pop(PER_PAIR, None)


def teacher_leads(report, split, metric):
    """The teacher-leads rule: the teacher leads its student's baseline on `split` when a one-sided
    paired test on the same pairs says it scores higher on `metric` at 95% confidence (accuracy: exact
    McNemar on the pairs one model gets right; F1, macro-F1, AUC: paired bootstrap of the difference;
    `training.metrics.paired_test`). It decides whether a run reports the share of the gap closed
    (below) and VIRT's interaction weight (virt/task.py). Replaces a fixed one-point lead, which a
    60-pair split could not judge (one pair is 1.7 points) and a 20,000-pair one judged too coarsely.

    Returns the test's record for metrics.json, or None when `report` lacks either model's per-pair
    outputs on `split`, or `metric` has no paired form (the loss)."""
    try:
        t, b = report["teacher"][split][PER_PAIR], report["baseline"][split][PER_PAIR]
    except KeyError:
        return None
    if metric not in interval_metrics(t.label_names):
        return None
    return paired_test(metric, t, b)


def compare_with_baseline(metrics, metric, what):
    """Add the paired comparisons, `gap_closed` and `warnings` to a student's metrics that hold
    `teacher` and `baseline` scores with per-pair outputs (`what` names the student, e.g. "VIRT").

    Per split: `teacher_vs_baseline` (the teacher-leads rule's test) and `student_vs_baseline` (the same
    test for the student). Where the teacher leads, gap_closed[split] = (student - baseline) /
    (teacher - baseline) on the selection metric, and gap_closed_ci95[split] its paired bootstrap
    interval (`training.metrics.gap_interval`; gap_closed_bootstrap says how many resamples had no
    gap to share and were dropped). A teacher that does not lead on valid gets a warning instead: the
    student then has little to learn from it."""
    gaps, warnings = {}, []
    for split in ("valid", "test"):
        lead = teacher_leads(metrics, split, metric)
        if lead is None or PER_PAIR not in metrics.get(split, {}):
            continue
        t, b = metrics["teacher"][split], metrics["baseline"][split]
        student = metrics[split][PER_PAIR]
        metrics.setdefault("teacher_vs_baseline", {})[split] = lead
        metrics.setdefault("student_vs_baseline", {})[split] = paired_test(metric, student, b[PER_PAIR])
        if lead["leads"] and t[metric] > b[metric]:
            gaps[split] = (metrics[split][metric] - b[metric]) / (t[metric] - b[metric])
            ci, dropped = gap_interval(metric, t[PER_PAIR], b[PER_PAIR], student)
            metrics.setdefault("gap_closed_ci95", {})[split] = ci
            metrics.setdefault("gap_closed_bootstrap", {})[split] = {"resamples": RESAMPLES, "seed": SEED,
                                                                     "dropped": dropped}
        elif split == "valid":
            warnings.append(f"the teacher's valid {metric} ({t[metric]:.4f}) does not lead the baseline's "
                            f"({b[metric]:.4f}) by a paired test ({describe_test(lead, 'the teacher', 'the baseline')}): "
                            f"distillation has little to teach; expect {what} to score about like the baseline")
    if gaps:
        metrics["gap_closed"] = gaps
    if warnings:
        metrics.setdefault("warnings", []).extend(warnings)
        for w in warnings:
            log.warning(w)
    return metrics
