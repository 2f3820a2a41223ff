"""What every training task shares: data splits, encoder initialisation, the run
directory, fitting with model selection, and the final metrics.

A task is then a few lines: build its model (and loss) and call `train_task`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import keras
import numpy as np

from data import DataError, PairData, check_label_set, label_map, make_sample, read_pairs, swap_augment
from modeling.checkpoints import CheckpointError
from modeling.encoder import BertEncoder
from modeling.model_dir import load_model_dir, save_model_dir
from modeling.pretrained import detect_format, load_pretrained, rebuild_encoder, resolve
from modeling.tokenization import IDS_VERSION, PairTokenizer
from training.memory import peak_rss_mb
from training.metrics import classification_metrics
from training.rundir import RunError, differences, finished, start_run
from training.strategy import chief_from_env, in_cluster, is_chief, make_strategy
from training.trainer import Split, Trainer, TrainingError, finish_backup, predict_outputs

log = logging.getLogger(__name__)

SAMPLE_DIR = Path("runs") / "sample_data"


# ----------------------------------------------------------------------------- run dir
def prepare_run_dir(cfg):
    """`--out DIR` or `runs/<task>/<stamp>`; refuse to overwrite a finished run.

    A multi-worker run's other workers write nothing there: they only read the chief's backup."""
    out = Path(cfg.out) if cfg.out else Path("runs") / cfg.task / datetime.now().strftime("%Y%m%d-%H%M%S")
    if not chief_from_env(cfg.train):
        if not cfg.out:
            raise RunError("train.strategy=multiworker: give every worker the same --out (the chief's run "
                           "directory, where the others find the resume checkpoints)")
        return out
    if finished(out):
        raise RunError(f"{out} already holds a finished run (metrics.json); choose another --out")
    start_run(cfg, out)  # a resume must be of a run with this config and data, and keeps its config.yaml
    return out


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
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=float), encoding="utf-8")
    tmp.replace(path)


# ----------------------------------------------------------------------------- data
@dataclass
class Splits:
    train: PairData
    valid: PairData | None
    test: PairData | None
    label_names: list


def read_data(cfg, path, labels=None, labelled=True):
    """A pair file as the `data.*` keys say; skipped bad rows are reported, `data.max_rows` applies."""
    d = cfg.data
    pairs = read_pairs(path, format=d.format, text_a=d.text_a, text_b=d.text_b, label=d.label if labelled else None,
                       labels=labels, on_bad_row=d.on_bad_row)
    if pairs.skipped:
        log.warning("%s: skipped %d bad rows (%s)", path, pairs.skipped, dict(pairs.skip_reasons))
    if d.max_rows:
        pairs = subset(pairs, np.arange(min(d.max_rows, len(pairs))))
    if len(pairs) == 0:
        raise DataError(f"{path}: no usable rows")
    return pairs


def subset(pairs, idx):
    return PairData(text_a=[pairs.text_a[i] for i in idx], text_b=[pairs.text_b[i] for i in idx],
                    labels=None if pairs.labels is None else [pairs.labels[i] for i in idx],
                    lines=[pairs.lines[i] for i in idx], path=pairs.path,
                    skipped=pairs.skipped, skip_reasons=pairs.skip_reasons, columns=pairs.columns)


def load_splits(cfg):
    """Read train/valid/test; without data.train, the generated sample set (the embedded default)."""
    d = cfg.data
    if d.train is None:
        files = make_sample(SAMPLE_DIR, seed=0)
        log.info("no data.train given: using the generated sample data in %s (a smoke test, not a benchmark)",
                 SAMPLE_DIR)
        d.train, d.valid = str(files["train"]), d.valid or str(files["valid"])
        d.test = d.test or str(files["test"])
    train = read_data(cfg, d.train, d.labels)
    if train.labels is None:
        raise DataError(f"{d.train}: no label column {d.label!r}")
    if d.labels is None:
        check_label_set(train)
    names = label_map(train.labels, d.labels)
    if d.valid:
        valid = read_data(cfg, d.valid, names)
    else:
        rng = np.random.default_rng(cfg.train.seed)
        perm = rng.permutation(len(train))
        n_valid = max(1, int(round(d.valid_fraction * len(train))))
        log.info("no data.valid: holding out a seeded %d%% of train (%d pairs) for model selection",
                 round(100 * d.valid_fraction), n_valid)
        valid, train = subset(train, np.sort(perm[:n_valid])), subset(train, np.sort(perm[n_valid:]))
    test = read_data(cfg, d.test, names) if d.test else None
    if d.swap_augment:
        train = swap_augment(train)
    return Splits(train, valid, test, names)


TOKEN_CACHE = Path("runs") / ".cache" / "tokens"


def cached_featurize(model, tokenizer, texts_a, texts_b, max_len, write=True):
    """`model.featurize`, cached on disk under a key of the texts, vocab, casing, length and layout
    (`write=False`: read the cache, never add to it)."""
    h = hashlib.sha256()
    h.update(Path(tokenizer.vocab_file).read_bytes())
    layout = getattr(model, "deployable", model)
    h.update(f"{IDS_VERSION}|{tokenizer.lowercase}|{max_len}|{type(layout).__name__}|"
             f"{getattr(layout, 'whole_word', False)}".encode())
    for a, b in zip(texts_a, texts_b if texts_b is not None else [None] * len(texts_a)):
        h.update(f"{a}\x1f{b}\x1e".encode())
    path = TOKEN_CACHE / f"{h.hexdigest()[:24]}.npz"
    if path.exists():
        with np.load(path) as z:
            keys = {k[: -len(".flat")] for k in z.files if k.endswith(".flat")}
            return {k: [x.tolist() for x in np.split(z[k + ".flat"], np.cumsum(z[k + ".len"])[:-1])] for k in keys}
    feats = model.featurize(tokenizer, texts_a, texts_b, max_len)
    if not write:
        return feats
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for k, rows in feats.items():
        arrays[k + ".flat"] = np.fromiter((t for r in rows for t in r), np.int32)
        arrays[k + ".len"] = np.fromiter((len(r) for r in rows), np.int64, len(rows))
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")  # workers sharing a cache write their own
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return feats


def tokenize(model, tokenizer, pairs, label_names, max_len, name, cache=True):
    feats = cached_featurize(model, tokenizer, pairs.text_a, pairs.text_b, max_len, write=cache)
    index = {n: i for i, n in enumerate(label_names)}
    labels = None if pairs.labels is None else np.array([index[y] for y in pairs.labels], np.int32)
    return Split(name, feats, labels, (pairs.text_a, pairs.text_b))


# ----------------------------------------------------------------------------- encoder
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
                          num_layers=num_layers or model_cfg.random_num_layers, num_heads=model_cfg.num_heads,
                          intermediate_size=model_cfg.intermediate_size, max_position=model_cfg.max_position,
                          hidden_dropout=model_cfg.dropout, attention_dropout=model_cfg.dropout, name="encoder")
    return encoder, tokenizer


def _with_dropout(encoder, rate):
    """The encoder with the configured dropout rate instead of the checkpoint's."""
    if encoder.hidden_dropout == rate and encoder.attention_dropout == rate:
        return encoder
    return rebuild_encoder(encoder, f"{encoder.name} (dropout {rate})", hidden_dropout=rate, attention_dropout=rate)


def is_model_dir(path):
    try:
        return detect_format(resolve(path)) == "model_dir"
    except CheckpointError:
        return False


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


def teacher_for(cfg, run_dir, section):
    """The teacher model directory of `section` (virt or distill), fine-tuned here when absent.

    Returns `(loaded_teacher, teacher_metrics_or_None)`.
    """
    path = getattr(cfg, section).teacher
    metrics = None
    if path is None:
        from training.finetune import finetune  # finetune itself builds on this module

        tcfg = copy.deepcopy(cfg)
        tcfg.task, tcfg.out = "finetune", str(Path(run_dir) / "teacher")
        tcfg.model.num_layers = None  # the teacher is the full checkpoint
        if section == "virt":
            tcfg.model.pooling = "mean"  # VIRT's teachers use mean pooling (paper, Sec. 4.3)
        log.info("no %s.teacher given: fine-tuning a cross-encoder teacher first in %s", section, tcfg.out)
        metrics = run_or_reuse(tcfg, finetune, "teacher")
        path = Path(tcfg.out) / "model"
    teacher = load_model_dir(path, expect_kind="cross_encoder")
    return teacher, metrics


def baseline_scores(cfg, run_dir, splits, path, train_fn, adjust):
    """Valid/test scores of a student's baseline (`path`): None skips it, a model directory is scored
    on this run's splits, `auto` trains it in <out>/baseline with `train_fn` on a copy of `cfg`
    that `adjust(copy)` turns into the baseline's configuration (everything else as the student's)."""
    if path is None:
        return None
    if path != "auto":
        return {**score_model_dir(path, splits, cfg), "model_dir": str(path)}
    bcfg = copy.deepcopy(cfg)
    bcfg.out = str(Path(run_dir) / "baseline")
    adjust(bcfg)
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


def student_model_config(cfg, teacher):
    """`cfg.model`, except that a randomly initialised student shares its teacher's vocabulary.

    Building a second vocabulary from the same texts is not enough: the English WordPiece
    builder is not deterministic (tokenizers' BPE trainer, huggingface/tokenizers#1794),
    and the student must tokenise exactly as the teacher it distils.
    """
    if teacher is None or cfg.model.init is not None or cfg.model.vocab is not None:
        return cfg.model
    model_cfg = copy.copy(cfg.model)
    model_cfg.vocab = teacher.tokenizer.vocab_file
    if model_cfg.lowercase is None:
        model_cfg.lowercase = teacher.tokenizer.lowercase
    log.info("random init: the student uses the teacher's vocabulary %s", model_cfg.vocab)
    return model_cfg


def student_from_teacher(model_cfg, teacher):
    """`model_cfg` with the teacher's model directory as `init` (`distill.student_init` /
    `virt.student_init: teacher`): the student starts as the teacher's first `model.num_layers`
    fine-tuned layers, embeddings and vocabulary included, instead of model.init's. Heads start
    random (the teacher's reads its own last layer); the baseline keeps model.init.

    Why (docs/defaults.md): a cut of a pre-trained encoder has not learnt the task, and the
    teacher's logits or attention maps alone moved a tiny student little; the teacher's own lower
    layers already carry what fine-tuning taught them.
    """
    student_cfg = copy.copy(model_cfg)
    student_cfg.init, student_cfg.vocab = str(teacher.path), None
    return student_cfg


def check_same_vocab(teacher, tokenizer):
    a = Path(teacher.tokenizer.vocab_file).read_bytes()
    b = Path(tokenizer.vocab_file).read_bytes()
    if a != b:
        raise CheckpointError(f"the teacher's vocabulary ({teacher.tokenizer.vocab_file}) differs from the "
                              f"student's ({tokenizer.vocab_file}); both must tokenise the same way")


# ----------------------------------------------------------------------------- train
def evaluator(label_names, batch_size):
    def evaluate(model, split):
        return classification_metrics(split.labels, predict_outputs(model, split.features, batch_size), label_names)
    return evaluate


def metric_for(cfg, label_names):
    """`f1`/`auc` only exist for binary labels; fall back to macro-F1."""
    m = cfg.train.metric
    return "macro_f1" if m in ("f1", "auc") and len(label_names) != 2 else m


def train_task(cfg, run_dir, build_model, splits, evaluate=None, extra_meta=None, train_extra=None,
               strategy=None, report=None, compare_as=None):
    """Fit the model `build_model(encoder_init)` under the strategy and write the run's outputs.

    `build_model()` is called inside the strategy scope and returns `(model, tokenizer)`.
    `train_extra(split) -> dict` adds per-example arrays to the training features
    (e.g. cached teacher logits). `compare_as` names the student when `report` holds
    `teacher` and `baseline` scores (see `compare_with_baseline`). Returns the metrics
    dict written to metrics.json.
    """
    strategy = strategy or make_strategy(cfg.train)
    keras.utils.set_random_seed(cfg.train.seed)
    if cfg.train.mixed_precision:
        keras.mixed_precision.set_global_policy(cfg.train.mixed_precision)
    try:
        with strategy.scope():
            model, tokenizer = build_model()
            model(model.dummy_inputs())
        max_len = cfg.train.max_seq_len
        encoder = getattr(getattr(model, "deployable", model), "encoder", None)
        if encoder is not None and max_len > encoder.max_position:  # a checkpoint's size is known only now
            raise TrainingError(f"train.max_seq_len={max_len}: longer than the {encoder.max_position} position "
                                f"embeddings of model.init={cfg.model.init}")
        t0 = time.time()
        chief = is_chief(strategy)  # the other workers of a multi-worker run write nothing, not even the cache
        train = tokenize(model, tokenizer, splits.train, splits.label_names, max_len, "train", cache=chief)
        if train_extra:
            train.features.update(train_extra(train))
        valid = tokenize(model, tokenizer, splits.valid, splits.label_names, max_len, "valid", cache=chief)
        log.info("tokenised %d train / %d valid pairs in %.1fs", len(train), len(valid), time.time() - t0)
        evaluate = evaluate or evaluator(splits.label_names, cfg.train.eval_batch_size)
        model_dir = Path(run_dir) / "model"
        metric = metric_for(cfg, splits.label_names)

        def save_best(m, metrics):
            # Training wrappers (teacher + student) save only the part that is deployed.
            save_model_dir(getattr(m, "deployable", m), model_dir, tokenizer, labels=splits.label_names, max_seq_len=max_len,
                           extra={"task": cfg.task, **(extra_meta or {})})

        trainer = Trainer(cfg.train, strategy, run_dir)
        result = trainer.fit(model, train, valid, evaluate, save_best, metric=metric)
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
        if report:
            metrics.update(report)
        if compare_as:
            compare_with_baseline(metrics, metric, compare_as)
        write_json(Path(run_dir) / "metrics.json", metrics)
        finish_backup(run_dir)
        return metrics
    finally:
        keras.mixed_precision.set_global_policy("float32")
