"""distill task: a cross-encoder teacher -> a tiny cross-encoder student (logit distillation)."""

from __future__ import annotations

import copy
import dataclasses
import gc
import hashlib
import logging
from pathlib import Path

import numpy as np

from data import swap_augment
from distill.model import DistillTraining
from crossenc.model import CrossEncoder
from training.finetune import finetune
from training.tasks import (baseline_scores, check_same_vocab, init_encoder, load_splits, prepare_run_dir,
                            print_summary, student_from_teacher, student_model_config, teacher_for,
                            teacher_report, train_task)
from training.trainer import predict_outputs

log = logging.getLogger(__name__)

CACHE = Path("runs") / ".cache" / "teacher_logits"


def _logits_fn(model):
    import tensorflow as tf

    return tf.function(lambda x: model(x, training=False), reduce_retracing=True)


def cached_teacher_logits(teacher, texts_a, texts_b, max_len, batch_size):
    """Teacher logits over the training pairs, computed once and kept on disk.

    The key hashes the teacher's weights file, the texts (in order) and the
    length, so a changed teacher or data set never reuses stale logits.
    """
    h = hashlib.sha256()
    h.update((teacher.path / "model.weights.h5").read_bytes())
    h.update(f"{max_len}\x00".encode())
    for a, b in zip(texts_a, texts_b):
        h.update(f"{a}\x1f{b}\x1e".encode())
    path = CACHE / f"{h.hexdigest()[:24]}.npy"
    if path.exists():
        log.info("teacher logits from cache %s", path)
        return np.load(path)
    feats = teacher.model.featurize(teacher.tokenizer, texts_a, texts_b, max_len)
    logits = predict_outputs(teacher.model, feats, batch_size, fn=_logits_fn(teacher.model)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, logits)
    log.info("teacher logits for %d pairs cached in %s", len(logits), path)
    return logits


def with_swapped_pairs(splits):
    """Training pairs followed by the same pairs swapped, and the rows whose hard label is used (1: the
    originals; a swapped pair keeps its label only for symmetric relations, so it learns from the
    teacher's logits on (b, a) alone)."""
    n = len(splits.train)
    hard = np.concatenate([np.ones(n, np.float32), np.zeros(n, np.float32)])
    return dataclasses.replace(splits, train=swap_augment(splits.train)), hard


def train_distill(cfg):
    """Teacher (given or fine-tuned here) -> student; writes <out>/model and metrics.json."""
    run_dir = prepare_run_dir(cfg)
    splits = load_splits(cfg)
    d = cfg.distill
    teacher, teacher_metrics = teacher_for(cfg, run_dir, "distill")
    model_cfg = student_model_config(cfg, teacher)
    student_cfg = student_from_teacher(model_cfg, teacher) if d.student_init == "teacher" else model_cfg
    report = {"distill": {"alpha": d.alpha, "temperature": d.temperature, "online": d.online,
                          "intermediate": d.intermediate, "swap": d.swap, "student_init": d.student_init}}
    report["teacher"] = teacher_report(teacher, teacher_metrics, splits, cfg)

    def as_plain_student(bcfg):  # model.init's student, same schedule and data, fine-tuned on the labels alone
        bcfg.task, bcfg.model, bcfg.distill.baseline = "finetune", copy.copy(model_cfg), None

    baseline = baseline_scores(cfg, run_dir, splits, d.baseline, finetune, as_plain_student)
    if baseline:
        report["baseline"] = baseline

    extra = {}
    if d.swap:  # after the baseline, which trains on the original pairs
        splits, extra["hard_weight"] = with_swapped_pairs(splits)
    if not (d.online or d.intermediate):
        extra["teacher_logits"] = cached_teacher_logits(teacher, splits.train.text_a, splits.train.text_b,
                                                        cfg.train.max_seq_len, cfg.train.eval_batch_size)
        teacher = None  # the student trains without the teacher in memory
        gc.collect()

    def build():
        encoder, tokenizer = init_encoder(student_cfg, splits.train.text_a + splits.train.text_b, run_dir)
        student = CrossEncoder(encoder, num_labels=len(splits.label_names), pooling=cfg.model.pooling,
                               dropout=cfg.model.dropout, name="cross_encoder")
        if teacher is not None:
            check_same_vocab(teacher, tokenizer)
            if teacher.labels != splits.label_names:
                raise ValueError(f"teacher labels {teacher.labels} differ from the data's {splits.label_names}")
        return DistillTraining(student, teacher.model if teacher is not None else None, alpha=d.alpha,
                               temperature=d.temperature, intermediate=d.intermediate, layer_map=d.layer_map,
                               intermediate_weight=d.intermediate_weight, name="distill_training"), tokenizer

    metrics = train_task(cfg, run_dir, build, splits, report=report,
                         train_extra=(lambda split: extra) if extra else None,
                         extra_meta={"distill": report["distill"]}, compare_as="the distilled student")
    print_summary(run_dir, metrics)
    return metrics
