"""virt task: fine-tune (or load) a cross-encoder teacher, then train the VIRT student."""

from __future__ import annotations

import logging

from training.tasks import (baseline_scores, check_same_vocab, init_encoder, load_splits, prepare_run_dir,
                            print_summary, student_from_teacher, student_model_config, teacher_for,
                            teacher_report, train_task)
from virt.model import VirtModel, VirtTraining, default_fusion, uses_fusion

log = logging.getLogger(__name__)


def check_teacher_positions(max_seq_len, max_position):
    """The teacher reads `x ++ y[1:]` (up to 2 * max_seq_len - 1 tokens) at their real positions."""
    if 2 * max_seq_len - 1 > max_position:
        raise ValueError(f"train.max_seq_len={max_seq_len}: the teacher reads x ++ y[1:], up to "
                         f"{2 * max_seq_len - 1} positions, but has {max_position} position embeddings; "
                         f"use train.max_seq_len <= {(max_position + 1) // 2}")


def is_siamese_baseline(v):
    """The flags of the plain siamese model: no distillation, SBERT's (u, v, |u-v|) head."""
    return not v.distill and not v.adapted_interaction and not uses_fusion(v.adapted_interaction, v.fusion)


def as_siamese_baseline(cfg):
    """The student's own siamese baseline: no distillation, SBERT's head; init, depth, data and
    schedule stay the student's, so the comparison says what the teacher added."""
    v = cfg.virt
    v.distill, v.adapted_interaction, v.fusion, v.teacher, v.baseline = False, False, False, None, None
    v.kd_weight = 0.0


def train_virt(cfg):
    """Teacher -> (siamese baseline) -> VIRT student; writes <out>/model (kind virt) and metrics.json
    (+ teacher and baseline scores, the share of the gap closed, warnings)."""
    run_dir = prepare_run_dir(cfg)
    splits = load_splits(cfg)
    v = cfg.virt
    if v.fusion is None:
        v.fusion = default_fusion(v.adapted_interaction, len(splits.label_names))
    if v.distill and v.teacher is None and cfg.model.init is None:  # fail before fine-tuning the teacher
        check_teacher_positions(cfg.train.max_seq_len, cfg.model.max_position)
    teacher, teacher_metrics = teacher_for(cfg, run_dir, "virt") if v.distill else (None, None)

    if teacher is not None:
        check_teacher_positions(cfg.train.max_seq_len, teacher.model.encoder.max_position)
    model_cfg = student_model_config(cfg, teacher)
    if teacher is not None and v.student_init == "teacher":
        model_cfg = student_from_teacher(model_cfg, teacher)

    def build():
        encoder, tokenizer = init_encoder(model_cfg, splits.train.text_a + splits.train.text_b, run_dir)
        student = VirtModel(encoder, num_labels=len(splits.label_names), adapted_interaction=v.adapted_interaction,
                            fusion=v.fusion, dropout=cfg.model.dropout, name="virt")
        if teacher is None:
            return VirtTraining(student, name="virt_training"), tokenizer
        check_same_vocab(teacher, tokenizer)
        if teacher.labels != splits.label_names:
            log.warning("teacher labels %s differ from the data's %s", teacher.labels, splits.label_names)
        return VirtTraining(student, teacher.model, interaction_weight=v.interaction_weight, layers=v.layers,
                            layer_map=v.layer_map, kd_weight=v.kd_weight, kd_temperature=v.kd_temperature,
                            name="virt_training"), tokenizer

    report = {"virt": {"distill": v.distill, "adapted_interaction": v.adapted_interaction,
                       "fusion": uses_fusion(v.adapted_interaction, v.fusion),
                       "interaction_weight": v.interaction_weight, "layers": v.layers, "kd_weight": v.kd_weight,
                       "kd_temperature": v.kd_temperature, "student_init": v.student_init if v.distill else "model"}}
    if teacher is not None:
        report["teacher"] = teacher_report(teacher, teacher_metrics, splits, cfg)
    baseline = None if is_siamese_baseline(v) else baseline_scores(cfg, run_dir, splits, v.baseline, train_virt,
                                                                     as_siamese_baseline)
    if baseline:
        report["baseline"] = baseline
    metrics = train_task(cfg, run_dir, build, splits, report=report,
                         extra_meta={"virt": report["virt"]}, compare_as="the VIRT student")
    print_summary(run_dir, metrics)
    return metrics
