"""The one task runner: every training task is a `TrainingTask` declaring what it reads, builds,
trains with and reports, and `run(task)` drives it:

    splits -> effective configuration (decided, validated, then written) -> run directory
    -> teacher -> baseline -> settings decided from their scores -> the task's own preparation
    -> train -> metrics.json -> summary
"""

from __future__ import annotations

import copy
import logging
import time
from datetime import datetime
from pathlib import Path

import keras

from common.cache import cache_dir
from common.cluster import chief_from_env
from common.files import write_json
from config import config_to_dict, load_config
from modeling.model_dir import load_model_dir, save_model_dir
from training.card import write_card
from training.contract import command, data_block
from training.inputs import load_splits, tokenize
from training.memory import peak_rss_mb
from training.metrics import constant_prediction_warnings, describe_test
from training.references import baseline_scores, compare_with_baseline, save_predictions, teacher_report
from training.rundir import RunError, finished, start_run
from training.strategy import is_chief, make_strategy
from training.trainer import Trainer, TrainingError, evaluator, finish_backup, schedule_warnings

log = logging.getLogger(__name__)


class TrainingTask:
    """What a training task declares; `run(task)` does everything else in the same order for all.

    A subclass implements `build` and overrides the hooks where it differs from a plain classifier.
    `self.teacher` is the loaded teacher (a `LoadedModel`) once `load_teacher` found one.
    """

    section = None  # the config section of the task's settings, reported in metrics.json
    student_name = None  # names the student when the run compares it with a teacher and a baseline

    def __init__(self, cfg):
        self.cfg = cfg
        self.teacher = None

    # ----------------------------------------------------------------- what it reads and decides
    min_classes = 2  # distinct labels train must hold

    def read_splits(self):
        """The run's train/valid/test pairs (may fill `cfg.data`: the generated sample data)."""
        return load_splits(self.cfg, self.min_classes)

    def decide(self, splits):
        """Fill the task's settings that depend on the data and check them, before config.yaml is written."""

    def decide_from_references(self, report, metric):
        """Fill the task's settings that depend on its teacher's and baseline's scores (`report`: their
        valid/test metrics), before anything is trained; config.yaml keeps the setting as given."""

    def selection_metric(self, label_names):
        """The validation metric that selects the best epoch: `train.metric`, except that `f1`/`auc`
        only exist for binary labels (macro-F1 otherwise)."""
        m = self.cfg.train.metric
        return "macro_f1" if m in ("f1", "auc") and len(label_names) != 2 else m

    # ----------------------------------------------------------------- what it compares with
    def load_teacher(self, run_dir):
        """Set `self.teacher` and return its own run's metrics (None when given); no teacher: None."""

    def baseline_path(self):
        """A model directory to score as the baseline, `auto` to train one in <out>/baseline, or None."""

    def as_baseline(self, bcfg):
        """Turn `bcfg` (a copy of this run's configuration) into the baseline's; return its train function."""
        raise NotImplementedError

    # ----------------------------------------------------------------- what it trains
    def prepare(self, run_dir, splits):
        """The task's own steps between the references and training; returns the splits to train on."""
        return splits

    def build(self, run_dir, splits):
        """`(model, tokenizer)`, called inside the strategy's scope."""
        raise NotImplementedError

    transfer = None  # what `prepare` added as teacher-labelled transfer pairs (training.transfer), reported

    def train_features(self, split):
        """Per-example arrays added to the training features (e.g. cached teacher logits)."""
        return {}

    def evaluator(self, splits):
        """`evaluate(model, split) -> metrics` for model selection and the final report."""
        return evaluator(splits.label_names, self.cfg.train.eval_batch_size)

    # ----------------------------------------------------------------- what it reports
    def settings(self):
        """The task's settings for metrics.json (under `section`), or None."""

    def model_meta(self):
        """Extra model.json entries of the trained model directory."""
        return {}

    def summary(self, run_dir, metrics):
        print_summary(run_dir, metrics)


def run(task):
    """Drive `task` from its data to its summary; returns the metrics written to metrics.json."""
    cfg = task.cfg
    given = copy.deepcopy(cfg)  # what a resumed run is compared with
    cfg.out = str(run_dir_path(cfg))  # first: everything the run writes (sample data, caches) goes under it
    splits = task.read_splits()
    data = data_block(cfg, splits)  # the files as read, before a task's own preparation (swapped pairs)
    task.decide(splits)
    metric = task.selection_metric(splits.label_names)
    validate(cfg)
    run_dir = prepare_run_dir(cfg, given)
    report = {}
    teacher_metrics = task.load_teacher(run_dir)
    if task.teacher is not None:
        report["teacher"] = teacher_report(task.teacher, teacher_metrics, splits, cfg)
    baseline = baseline_scores(task, run_dir, splits)
    if baseline:
        report["baseline"] = baseline
    task.decide_from_references(report, metric)
    settings = task.settings()
    if settings is not None:
        report = {task.section: settings, **report}
    splits = task.prepare(run_dir, splits)
    if task.transfer:
        report["transfer"] = task.transfer
    metrics = train(task, run_dir, splits, metric, report, data)
    task.summary(run_dir, metrics)
    return metrics


def validate(cfg):
    """Check the effective configuration as a loaded one is checked (ranges, choices, across keys)."""
    load_config(None, base=config_to_dict(cfg))


def run_dir_path(cfg):
    """`--out DIR` or `runs/<task>/<stamp>`, refused when it holds a finished run (before any work)."""
    if not chief_from_env(cfg.train.strategy):
        if not cfg.out:
            raise RunError("train.strategy=multiworker: give every worker the same --out (the chief's run "
                           "directory, where the others find the resume checkpoints)")
        return Path(cfg.out)
    out = Path(cfg.out) if cfg.out else Path("runs") / cfg.task / datetime.now().strftime("%Y%m%d-%H%M%S")
    if finished(out):
        raise RunError(f"{out} already holds a finished run (metrics.json); choose another --out")
    return out


def prepare_run_dir(cfg, given=None):
    """Record the run in `cfg.out` (see run_dir_path). A multi-worker run's other workers write nothing
    there: they only read the chief's backup."""
    out = Path(cfg.out)
    if chief_from_env(cfg.train.strategy):
        start_run(cfg, out, given)  # a resume must be of a run with this config and data, and keeps its config.yaml
    return out


def train(task, run_dir, splits, metric, report, data=None):
    """Fit the task's model under the strategy, keep the best epoch's model directory (its model.json
    with the `data` contract, the starting checkpoint and the command) and write metrics.json (the
    re-loaded best model's scores, the training facts and `report`), then the model card."""
    cfg = task.cfg
    strategy = make_strategy(cfg.train)
    keras.utils.set_random_seed(cfg.train.seed)
    if cfg.train.mixed_precision:
        keras.mixed_precision.set_global_policy(cfg.train.mixed_precision)
    try:
        with strategy.scope():
            model, tokenizer = task.build(run_dir, splits)
            model(model.dummy_inputs())
        max_len = cfg.train.max_seq_len
        encoder = getattr(getattr(model, "deployable", model), "encoder", None)
        if encoder is not None and max_len > encoder.max_position:  # a checkpoint's size is known only now
            raise TrainingError(f"train.max_seq_len={max_len}: longer than the {encoder.max_position} position "
                                f"embeddings of model.init={cfg.model.init}")
        t0 = time.time()
        chief = is_chief(strategy)  # the other workers of a multi-worker run write nothing, not even the cache
        tokens = cache_dir(cfg.train.cache_dir, run_dir, "tokens")
        train_split = tokenize(model, tokenizer, splits.train, splits.label_names, max_len, "train", tokens, chief)
        train_split.features.update(task.train_features(train_split))
        valid = tokenize(model, tokenizer, splits.valid, splits.label_names, max_len, "valid", tokens, chief)
        log.info("tokenised %d train / %d valid pairs in %.1fs", len(train_split), len(valid), time.time() - t0)
        evaluate = task.evaluator(splits)
        model_dir = Path(run_dir) / "model"

        def save_best(m, metrics):
            # Training wrappers (teacher + student) save only the part that is deployed.
            save_model_dir(getattr(m, "deployable", m), model_dir, tokenizer, labels=splits.label_names,
                           max_seq_len=max_len, extra={"task": cfg.task, "init": cfg.model.init, "data": data,
                                                       "command": command(), **task.model_meta(),
                                                       **({"transfer": task.transfer} if task.transfer else {})})

        trainer = Trainer(cfg.train, strategy, run_dir)
        result = trainer.fit(model, train_split, valid, evaluate, save_best, metric=metric)
        if not trainer.chief:
            return {}
        if result.best_epoch is None:
            raise TrainingError("no epoch was completed")
        # Re-load the kept model so the reported numbers are those of the saved files.
        best = load_model_dir(model_dir)
        metrics = {"valid": evaluate(best.model, valid, final=True)}
        if splits.test is not None:
            test = tokenize(best.model, best.tokenizer, splits.test, splits.label_names, max_len, "test")
            metrics["test"] = evaluate(best.model, test, final=True)
        metrics["training"] = {"best_epoch": result.best_epoch, "steps": result.steps,
                               "planned_steps": result.planned_steps,
                               "seconds": round(result.seconds, 1), "replicas": strategy.num_replicas_in_sync,
                               "global_batch": trainer.global_batch, "selection_metric": metric,
                               "peak_rss_mb": peak_rss_mb(), "history": result.history}
        metrics.update(report)
        if task.student_name:
            compare_with_baseline(metrics, metric, task.student_name)
        undertrained = schedule_warnings(result, cfg.train) + constant_prediction_warnings(metrics["valid"])
        for w in undertrained:
            log.warning(w)
        if undertrained:
            metrics.setdefault("warnings", []).extend(undertrained)
        save_predictions(run_dir, metrics)
        write_json(Path(run_dir) / "metrics.json", metrics)
        finish_backup(run_dir)
        write_card(model_dir, run_dir=run_dir)
        return metrics
    finally:
        keras.mixed_precision.set_global_policy("float32")


def print_summary(run_dir, metrics):
    """The run's scores with their 95% intervals and numbers of pairs, its teacher's and baseline's
    (valid split) when it has them, and the paired tests behind every "leads" it states."""
    if not metrics:  # a multi-worker run's non-chief worker
        print(f"not the chief worker: the chief writes {run_dir}")
        return
    for name in ("teacher", "baseline", "valid", "test"):
        block = metrics.get(name, {})
        block = block.get("valid", {}) if name in ("teacher", "baseline") else block
        line = format_scores(block)
        if line:
            print(f"{name} ({'valid, ' if name in ('teacher', 'baseline') else ''}n={block.get('n', '?')}): {line}")
    for split, share in metrics.get("gap_closed", {}).items():
        ci = metrics.get("gap_closed_ci95", {}).get(split)
        interval = f" [{ci[0]:.0%}, {ci[1]:.0%}]" if ci else ""
        print(f"gap closed ({split}): {share:.0%}{interval} of the way from the baseline to the teacher")
    for key, who in (("teacher_vs_baseline", "the teacher"), ("student_vs_baseline", "the student")):
        for split, test in metrics.get(key, {}).items():
            verdict = "leads" if test["leads"] else "does not lead"
            print(f"{who} {verdict} the baseline on {split} {test['metric']} "
                  f"({describe_test(test, who, 'the baseline')})")
    transfer = metrics.get("transfer")
    if transfer:
        cost = f", teacher logits {transfer['teacher_seconds']}s" if "teacher_seconds" in transfer else ""
        print(f"transfer pairs (teacher-labelled): {transfer['pairs']}, built in {transfer['build_seconds']}s{cost}")
    for warning in metrics.get("warnings", []):
        print(f"warning: {warning}")
    print(f"model directory: {Path(run_dir) / 'model'}")


def format_scores(block):
    """`accuracy 0.9400 [0.9133, 0.9633], f1 ...`: a split's float metrics, with their intervals."""
    ci = block.get("ci95", {})
    return ", ".join(f"{k} {v:.4f}" + (f" [{ci[k][0]:.4f}, {ci[k][1]:.4f}]" if k in ci else "")
                     for k, v in block.items() if isinstance(v, float))
