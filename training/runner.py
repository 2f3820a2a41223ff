"""The one task runner: every training task is a `TrainingTask` declaring what it reads, builds,
trains with and reports, and `run(task)` drives it:

    splits -> effective configuration (decided, validated, then written) -> run directory
    -> teacher -> baseline -> the task's own preparation -> train -> metrics.json -> summary
"""

from __future__ import annotations

import copy
import json
import logging
import time
from datetime import datetime
from pathlib import Path

import keras

from config import config_to_dict, load_config
from modeling.encoder import BertEncoder
from modeling.model_dir import load_model_dir, save_model_dir
from modeling.pretrained import load_pretrained, rebuild_encoder
from modeling.tokenization import PairTokenizer
from training.inputs import load_splits, tokenize
from training.memory import peak_rss_mb
from training.metrics import classification_metrics
from training.rundir import RunError, differences, finished, start_run
from training.strategy import chief_from_env, in_cluster, is_chief, make_strategy
from training.trainer import Trainer, TrainingError, finish_backup, predict_outputs

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
    def read_splits(self):
        """The run's train/valid/test pairs (may fill `cfg.data`: the generated sample data)."""
        return load_splits(self.cfg)

    def decide(self, splits):
        """Fill the task's settings that depend on the data and check them, before config.yaml is written."""

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
    splits = task.read_splits()
    task.decide(splits)
    metric = task.selection_metric(splits.label_names)
    validate(cfg)
    run_dir = prepare_run_dir(cfg, given)
    settings = task.settings()
    report = {task.section: settings} if settings is not None else {}
    teacher_metrics = task.load_teacher(run_dir)
    if task.teacher is not None:
        report["teacher"] = teacher_report(task.teacher, teacher_metrics, splits, cfg)
    baseline = baseline_scores(task, run_dir, splits)
    if baseline:
        report["baseline"] = baseline
    splits = task.prepare(run_dir, splits)
    metrics = train(task, run_dir, splits, metric, report)
    task.summary(run_dir, metrics)
    return metrics


def validate(cfg):
    """Check the effective configuration as a loaded one is checked (ranges, choices, across keys)."""
    load_config(None, base=config_to_dict(cfg))


def prepare_run_dir(cfg, given=None):
    """`--out DIR` or `runs/<task>/<stamp>`; refuse to overwrite a finished run, else record the run there.

    A multi-worker run's other workers write nothing there: they only read the chief's backup."""
    out = Path(cfg.out) if cfg.out else Path("runs") / cfg.task / datetime.now().strftime("%Y%m%d-%H%M%S")
    if not chief_from_env(cfg.train):
        if not cfg.out:
            raise RunError("train.strategy=multiworker: give every worker the same --out (the chief's run "
                           "directory, where the others find the resume checkpoints)")
        return out
    if finished(out):
        raise RunError(f"{out} already holds a finished run (metrics.json); choose another --out")
    start_run(cfg, out, given)  # a resume must be of a run with this config and data, and keeps its config.yaml
    return out


# ----------------------------------------------------------------------------- building blocks for tasks
def init_encoder(model_cfg, train_texts, run_dir, num_layers=None):
    """The encoder and tokenizer a task starts from: a checkpoint (optionally cut to
    its first k layers) or, with `model.init: null`, random weights and a vocab."""
    num_layers = num_layers if num_layers is not None else model_cfg.num_layers
    if model_cfg.init is not None:
        encoder, tokenizer = load_pretrained(model_cfg.init, num_layers=num_layers,
                                             allow_mismatch=model_cfg.allow_mismatch,
                                             lowercase=model_cfg.lowercase)
        if model_cfg.dropout is not None:
            encoder = _with_dropout(encoder, model_cfg.dropout)
        return encoder, tokenizer
    from data import build_vocab

    vocab = model_cfg.vocab
    built = Path(run_dir) / "vocab.txt"
    if vocab is None and built.is_file():
        vocab = built  # a resumed run must keep its token ids (the WordPiece builder is not deterministic)
        log.info("reusing the run's vocabulary %s", vocab)
    if vocab is None and in_cluster():  # build() runs inside the strategy's scope
        raise RunError("train.strategy=multiworker with model.init=null needs model.vocab: a vocab.txt every "
                       "worker reads (workers that each built one could get different token ids)")
    if vocab is None:
        vocab = build_vocab(train_texts, Path(run_dir) / "vocab.txt", lang=model_cfg.vocab_lang,
                            min_freq=model_cfg.vocab_min_freq)
        log.info("built a %s vocabulary from the training texts: %s", model_cfg.vocab_lang, vocab)
    tokenizer = PairTokenizer(vocab, lowercase=True if model_cfg.lowercase is None else model_cfg.lowercase)
    encoder = BertEncoder(vocab_size=tokenizer.vocab_size, hidden_size=model_cfg.hidden_size,
                          num_layers=num_layers or 4, num_heads=model_cfg.num_heads,
                          intermediate_size=model_cfg.intermediate_size, max_position=model_cfg.max_position,
                          hidden_dropout=model_cfg.dropout, attention_dropout=model_cfg.dropout, name="encoder")
    return encoder, tokenizer


def _with_dropout(encoder, rate):
    """The encoder with the configured dropout rate instead of the checkpoint's."""
    if encoder.hidden_dropout == rate and encoder.attention_dropout == rate:
        return encoder
    return rebuild_encoder(encoder, f"{encoder.name} (dropout {rate})", hidden_dropout=rate, attention_dropout=rate)


def evaluator(label_names, batch_size):
    """Classification metrics of a model's probabilities on a split."""
    def evaluate(model, split):
        return classification_metrics(split.labels, predict_outputs(model, split.features, batch_size), label_names)
    return evaluate


# ----------------------------------------------------------------------------- teachers, baselines
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
    return {**{k: metrics[k] for k in ("valid", "test") if k in metrics}, "model_dir": str(Path(bcfg.out) / "model")}


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


def compare_with_baseline(metrics, metric, what):
    """Add `gap_closed` and `warnings` to a student's metrics that hold `teacher` and `baseline` scores.

    gap_closed[split] = (student - baseline) / (teacher - baseline) on the selection metric, where the
    teacher leads the baseline; a teacher that does not lead on valid gets a warning instead: the
    student then has little to learn from it (`what` names the student, e.g. "VIRT")."""
    teacher, baseline = metrics.get("teacher", {}), metrics.get("baseline", {})
    gaps, warnings = {}, []
    for split in ("valid", "test"):
        try:
            t, b, s = teacher[split][metric], baseline[split][metric], metrics[split][metric]
        except KeyError:
            continue
        if t > b:
            gaps[split] = (s - b) / (t - b)
        elif split == "valid":
            warnings.append(f"the teacher's valid {metric} ({t:.4f}) is not above the baseline's ({b:.4f}): "
                            f"distillation has little to teach; expect {what} to score about like the baseline")
    if gaps:
        metrics["gap_closed"] = gaps
    if warnings:
        metrics.setdefault("warnings", []).extend(warnings)
        for w in warnings:
            log.warning(w)
    return metrics


# ----------------------------------------------------------------------------- train
def train(task, run_dir, splits, metric, report):
    """Fit the task's model under the strategy, keep the best epoch's model directory and write
    metrics.json (the re-loaded best model's scores, the training facts and `report`)."""
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
        train_split = tokenize(model, tokenizer, splits.train, splits.label_names, max_len, "train", cache=chief)
        train_split.features.update(task.train_features(train_split))
        valid = tokenize(model, tokenizer, splits.valid, splits.label_names, max_len, "valid", cache=chief)
        log.info("tokenised %d train / %d valid pairs in %.1fs", len(train_split), len(valid), time.time() - t0)
        evaluate = task.evaluator(splits)
        model_dir = Path(run_dir) / "model"

        def save_best(m, metrics):
            # Training wrappers (teacher + student) save only the part that is deployed.
            save_model_dir(getattr(m, "deployable", m), model_dir, tokenizer, labels=splits.label_names,
                           max_seq_len=max_len, extra={"task": cfg.task, **task.model_meta()})

        trainer = Trainer(cfg.train, strategy, run_dir)
        result = trainer.fit(model, train_split, valid, evaluate, save_best, metric=metric)
        if not trainer.chief:
            return {}
        if result.best_epoch is None:
            raise TrainingError("no epoch was completed")
        # Re-load the kept model so the reported numbers are those of the saved files.
        best = load_model_dir(model_dir)
        metrics = {"valid": evaluate(best.model, valid)}
        if splits.test is not None:
            test = tokenize(best.model, best.tokenizer, splits.test, splits.label_names, max_len, "test")
            metrics["test"] = evaluate(best.model, test)
        metrics["training"] = {"best_epoch": result.best_epoch, "steps": result.steps,
                               "seconds": round(result.seconds, 1), "replicas": strategy.num_replicas_in_sync,
                               "global_batch": trainer.global_batch, "selection_metric": metric,
                               "peak_rss_mb": peak_rss_mb(), "history": result.history}
        metrics.update(report)
        if task.student_name:
            compare_with_baseline(metrics, metric, task.student_name)
        write_json(Path(run_dir) / "metrics.json", metrics)
        finish_backup(run_dir)
        return metrics
    finally:
        keras.mixed_precision.set_global_policy("float32")


# ----------------------------------------------------------------------------- outputs
def print_summary(run_dir, metrics):
    """The run's scores, with its teacher's and baseline's (valid split) when it has them."""
    if not metrics:  # a multi-worker run's non-chief worker
        print(f"not the chief worker: the chief writes {run_dir}")
        return
    for split in ("teacher", "baseline", "valid", "test"):
        block = metrics.get(split, {})
        block = block.get("valid", block) if split in ("teacher", "baseline") else block
        shown = {k: round(v, 4) for k, v in block.items() if isinstance(v, float)}
        if shown:
            print(f"{split}: {shown}")
    for split, share in metrics.get("gap_closed", {}).items():
        print(f"gap closed ({split}): {share:.0%} of the way from the baseline to the teacher")
    for warning in metrics.get("warnings", []):
        print(f"warning: {warning}")
    print(f"model directory: {Path(run_dir) / 'model'}")


def write_json(path, obj):
    """Write `obj` as JSON under a temporary name, then rename: never a half-written file."""
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=float), encoding="utf-8")
    tmp.replace(path)
