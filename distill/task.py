"""distill task: a cross-encoder teacher -> a tiny cross-encoder student (logit distillation)."""

from __future__ import annotations

import copy
import gc
import logging
import time

import numpy as np

from common.cache import DiskCache, cache_dir, text_pairs
from crossenc.task import build_cross_encoder, finetune
from crossenc.teacher import check_same_vocab, student_config, student_model_config, teacher_for
from distill.model import DistillTraining
from training.runner import TrainingTask, run
from training.transfer import add_transfer, swapped, with_transfer
from training.trainer import predict_outputs

log = logging.getLogger(__name__)


def _logits_fn(model):
    import tensorflow as tf

    return tf.function(lambda x: model(x, training=False), reduce_retracing=True)


def cached_teacher_logits(teacher, texts_a, texts_b, max_len, batch_size, cache, with_path=False):
    """Teacher logits over the training pairs, computed once and kept on disk in directory `cache`
    (`with_path`: `(logits, cache file)`).

    The key hashes the teacher's weights file, the texts (in order) and the
    length, so a changed teacher or data set never reuses stale logits.
    """
    path = DiskCache(cache).path(".npy", (teacher.path / "model.weights.h5").read_bytes(), f"{max_len}\x00",
                                 text_pairs(texts_a, texts_b))
    logits = DiskCache.get(path)
    if logits is not None:
        log.info("teacher logits from cache %s", path)
    else:
        feats = teacher.model.featurize(teacher.tokenizer, texts_a, texts_b, max_len)
        logits = predict_outputs(teacher.model, feats, batch_size, fn=_logits_fn(teacher.model)).astype(np.float32)
        DiskCache.put(path, logits)
        log.info("teacher logits for %d pairs cached in %s", len(logits), path)
    return (logits, path) if with_path else logits


def with_swapped_pairs(splits):
    """`distill.swap`: training pairs followed by every pair swapped, teacher-labelled (the swap source of
    `transfer.sources` at one swapped copy of each pair), and the rows' hard-label weights
    (`training.transfer.with_transfer`)."""
    return with_transfer(splits, swapped(splits.train, range(len(splits.train))))


def transfer_logits(teacher, transfer_texts, max_len, batch_size, cache):
    """The teacher's logits on the transfer pairs through the cache, and its file and the seconds they took
    (computing them, or reading the file)."""
    start = time.time()
    logits, path = cached_teacher_logits(teacher, *transfer_texts, max_len, batch_size, cache, with_path=True)
    return logits, {"teacher_logits_cache": str(path), "teacher_seconds": round(time.time() - start, 1)}


class Distill(TrainingTask):
    """Teacher (given or fine-tuned here) -> tiny cross-encoder student on the teacher's logits."""

    section = "distill"
    student_name = "the distilled student"

    def settings(self):
        d = self.cfg.distill
        return {"label_weight": d.label_weight, "temperature": d.temperature, "online": d.online,
                "intermediate": d.intermediate, "swap": d.swap, "student_init": d.student_init}

    def model_meta(self):
        return {"distill": self.settings()}

    def load_teacher(self, run_dir):
        self.teacher, metrics = teacher_for(self.cfg, run_dir, "distill")
        return metrics

    def baseline_path(self):
        return self.cfg.distill.baseline

    def as_baseline(self, bcfg):
        """model.init's student, same schedule and data, fine-tuned on the labels alone."""
        bcfg.task, bcfg.distill.baseline = "finetune", None
        bcfg.model = copy.copy(student_model_config(self.cfg, self.teacher))
        return finetune

    def prepare(self, run_dir, splits):
        d, t, self.extra = self.cfg.distill, self.cfg.train, {}
        self.student_cfg = student_config(self.cfg, self.teacher, d.student_init)
        n_gold = len(splits.train)
        # After the baseline, which trains on the gold pairs alone.
        splits, weight, self.transfer = add_transfer(self.cfg, splits, self.student_cfg, run_dir)
        if d.swap:  # config.schema refuses it beside transfer pairs
            splits, weight = with_swapped_pairs(splits)
        if weight is not None:
            self.extra["hard_weight"] = weight
        if not (d.online or d.intermediate):
            cache = cache_dir(t.cache_dir, run_dir, "teacher_logits")
            train = splits.train
            logits = cached_teacher_logits(self.teacher, train.text_a[:n_gold], train.text_b[:n_gold], t.max_seq_len,
                                           t.eval_batch_size, cache)
            if len(train) > n_gold:  # the transfer pairs' logits in a file of their own: the gold one is reused
                extra, facts = transfer_logits(self.teacher, (train.text_a[n_gold:], train.text_b[n_gold:]),
                                               t.max_seq_len, t.eval_batch_size, cache)
                logits = np.concatenate([logits, extra])
                if self.transfer is not None:
                    self.transfer.update(facts)
            self.extra["teacher_logits"] = logits
            self.teacher = None  # the student trains without the teacher in memory
            gc.collect()
        return splits

    def train_features(self, split):
        return self.extra

    def build(self, run_dir, splits):
        d, teacher = self.cfg.distill, self.teacher
        student, tokenizer = build_cross_encoder(self.cfg, self.student_cfg, splits, run_dir)
        if teacher is not None:
            check_same_vocab(teacher, tokenizer)
            if teacher.labels != splits.label_names:
                raise ValueError(f"teacher labels {teacher.labels} differ from the data's {splits.label_names}")
        return DistillTraining(student, teacher.model if teacher is not None else None, label_weight=d.label_weight,
                               temperature=d.temperature, intermediate=d.intermediate, layer_map=d.layer_map,
                               intermediate_weight=d.intermediate_weight, name="distill_training"), tokenizer


def train_distill(cfg):
    """Teacher (given or fine-tuned here) -> student; writes <out>/model and metrics.json."""
    return run(Distill(cfg))
