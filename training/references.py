"""What a student is compared with: its teacher's and baseline's scores on the run's splits (trained
in the run's own directory when asked), and the share of the teacher-baseline gap it closed."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

from modeling.model_dir import load_model_dir
from training.inputs import tokenize
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
        return {**score_model_dir(path, splits, task.cfg), "model_dir": str(path)}
    bcfg = copy.deepcopy(task.cfg)
    bcfg.out = str(Path(run_dir) / "baseline")
    train_fn = task.as_baseline(bcfg)
    log.info("baseline=auto: training the student's baseline first in %s", bcfg.out)
    metrics = run_or_reuse(bcfg, train_fn, "baseline")
    model_dir = Path(bcfg.out) / "model"
    # A multi-worker run's other workers get no metrics from the sub-run: they score the chief's model,
    # as they do its teacher, so every worker decides from the same numbers (virt.interaction_weight).
    scores = {k: metrics[k] for k in ("valid", "test") if k in metrics} or score_model_dir(model_dir, splits, task.cfg)
    return {**scores, "model_dir": str(model_dir)}


def teacher_report(teacher, teacher_metrics, splits, cfg):
    """The teacher's valid/test scores on this run's splits (from its own run when it was trained
    here) and its model directory, for metrics.json."""
    scores = ({k: teacher_metrics[k] for k in ("valid", "test") if k in teacher_metrics}
              if teacher_metrics else score_model_dir(teacher.path, splits, cfg))
    return {**scores, "model_dir": str(teacher.path)}


def score_model_dir(path, splits, cfg):
    """valid/test metrics of another model directory (teacher, baseline) on this run's splits."""
    loaded = load_model_dir(path)
    evaluate = evaluator(splits.label_names, cfg.train.eval_batch_size)
    out = {}
    for name in ("valid", "test"):
        pairs = getattr(splits, name)
        if pairs is not None:
            split = tokenize(loaded.model, loaded.tokenizer, pairs, splits.label_names, cfg.train.max_seq_len, name)
            out[name] = evaluate(loaded.model, split)
    return out


# A teacher leads its student's baseline when it scores at least one point (0.01) above it on valid:
# below that, the share of the gap closed divides by noise (0.3 points gave "-400%" on the sample set).
MIN_LEAD = 0.01


def compare_with_baseline(metrics, metric, what):
    """Add `gap_closed` and `warnings` to a student's metrics that hold `teacher` and `baseline` scores.

    gap_closed[split] = (student - baseline) / (teacher - baseline) on the selection metric, where the
    teacher leads the baseline by `MIN_LEAD` or more; a teacher that does not on valid gets a warning
    instead: the student then has little to learn from it (`what` names the student, e.g. "VIRT")."""
    teacher, baseline = metrics.get("teacher", {}), metrics.get("baseline", {})
    gaps, warnings = {}, []
    for split in ("valid", "test"):
        try:
            t, b, s = teacher[split][metric], baseline[split][metric], metrics[split][metric]
        except KeyError:
            continue
        if t - b >= MIN_LEAD:
            gaps[split] = (s - b) / (t - b)
        elif split == "valid":
            warnings.append(f"the teacher's valid {metric} ({t:.4f}) does not lead the baseline's ({b:.4f}) by "
                            f"{MIN_LEAD * 100:g} point: distillation has little to teach; expect {what} to "
                            f"score about like the baseline")
    if gaps:
        metrics["gap_closed"] = gaps
    if warnings:
        metrics.setdefault("warnings", []).extend(warnings)
        for w in warnings:
            log.warning(w)
    return metrics
