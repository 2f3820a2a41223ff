"""virt task: fine-tune (or load) a cross-encoder teacher, then train the VIRT student."""

from __future__ import annotations

import logging

from crossenc.teacher import check_same_vocab, student_config, teacher_for
from training.inputs import init_encoder
from training.metrics import describe_test
from training.references import teacher_leads
from training.runner import TrainingTask, run
from training.transfer import add_transfer
from virt.model import VirtModel, VirtTraining, default_head, uses_fusion

log = logging.getLogger(__name__)


def check_teacher_positions(max_seq_len, max_position):
    """The teacher reads `x ++ y[1:]` (up to 2 * max_seq_len - 1 tokens) at their real positions."""
    if 2 * max_seq_len - 1 > max_position:
        raise ValueError(f"train.max_seq_len={max_seq_len}: the teacher reads x ++ y[1:], up to "
                         f"{2 * max_seq_len - 1} positions, but has {max_position} position embeddings; "
                         f"use train.max_seq_len <= {(max_position + 1) // 2}")


# virt.interaction_weight=null (docs/defaults.md, "the weight follows the teacher's lead"): the
# attention distillation pulls hard only towards a teacher that beats the student's own baseline.
LEADING_WEIGHT, TRAILING_WEIGHT = 10.0, 1.0


def auto_interaction_weight(report, metric):
    """`(weight, reason)` for `virt.interaction_weight=null`: 10 when the teacher leads the siamese
    baseline on valid by the teacher-leads rule (`training.references.teacher_leads`: a one-sided paired
    test on the same pairs), else the paper's 1; without a baseline to compare with, 10."""
    test = teacher_leads(report, "valid", metric)
    if test is None:
        return LEADING_WEIGHT, "no baseline scores to compare the teacher with"
    t, b = report["teacher"]["valid"][metric], report["baseline"]["valid"][metric]
    how = describe_test(test, "the teacher", "the baseline")
    lead = f"the teacher's valid {metric} {t:.4f} against the baseline's {b:.4f}"
    if test["leads"]:
        return LEADING_WEIGHT, f"{lead}: it leads ({how})"
    return TRAILING_WEIGHT, f"{lead}: it does not lead ({how})"


def is_siamese_baseline(v):
    """The flags of the plain siamese model: no distillation, SBERT's (u, v, |u-v|) head."""
    return not v.distill and not v.adapted_interaction and not uses_fusion(v.adapted_interaction, v.fusion)


def as_siamese_baseline(cfg):
    """The student's own siamese baseline: no distillation, SBERT's head; init, depth, data and
    schedule stay the student's, so the comparison says what the teacher added."""
    v = cfg.virt
    v.distill, v.adapted_interaction, v.fusion, v.teacher, v.baseline = False, False, False, None, None
    v.kd_weight = 0.0


def as_teacher(tcfg):
    tcfg.model.pooling = "mean"  # VIRT's teachers use mean pooling (paper, Sec. 4.3)


class Virt(TrainingTask):
    """Teacher -> (siamese baseline) -> VIRT student: a siamese model that learns the teacher's
    cross-attention during training, scored with its siamese baseline's head (Eq. 5/6's head on request)."""

    section = "virt"
    student_name = "the VIRT student"
    weight_reason = None  # why virt.interaction_weight=null resolved as it did

    def decide(self, splits):
        v = self.cfg.virt
        adapted, fusion = default_head()
        if v.adapted_interaction is None:
            v.adapted_interaction = adapted
        if v.fusion is None:
            v.fusion = fusion
        if v.distill and v.teacher is None and self.cfg.model.init is None:  # fail before fine-tuning the teacher
            check_teacher_positions(self.cfg.train.max_seq_len, self.cfg.model.max_position)

    def decide_from_references(self, report, metric):
        v = self.cfg.virt
        if v.distill and v.interaction_weight is None:
            v.interaction_weight, self.weight_reason = auto_interaction_weight(report, metric)
            log.info("virt.interaction_weight=null -> %g (%s)", v.interaction_weight, self.weight_reason)

    def settings(self):
        v = self.cfg.virt
        return {"distill": v.distill, "adapted_interaction": v.adapted_interaction,
                "fusion": uses_fusion(v.adapted_interaction, v.fusion),
                "interaction_weight": v.interaction_weight, "layers": v.layers, "kd_weight": v.kd_weight,
                "kd_temperature": v.kd_temperature, "positions": v.positions,
                "weight_schedule": v.weight_schedule, "student_init": v.student_init if v.distill else "model",
                **({"interaction_weight_rule": self.weight_reason} if self.weight_reason else {})}

    def model_meta(self):
        return {"virt": self.settings()}

    def load_teacher(self, run_dir):
        if not self.cfg.virt.distill:
            return None
        self.teacher, metrics = teacher_for(self.cfg, run_dir, "virt", adjust=as_teacher)
        check_teacher_positions(self.cfg.train.max_seq_len, self.teacher.model.encoder.max_position)
        return metrics

    def baseline_path(self):
        return None if is_siamese_baseline(self.cfg.virt) else self.cfg.virt.baseline

    def as_baseline(self, bcfg):
        as_siamese_baseline(bcfg)
        return train_virt

    def prepare(self, run_dir, splits):
        """Teacher-labelled transfer pairs (after the baseline, which trains on the gold pairs): they
        train the attention term (and kd_weight's) only; the teacher still runs in every step, its
        attention maps being too large to cache."""
        self.extra = {}
        if self.teacher is None:  # virt.distill=false: config.schema refuses transfer pairs
            return splits
        model_cfg = student_config(self.cfg, self.teacher, self.cfg.virt.student_init)
        splits, weight, self.transfer = add_transfer(self.cfg, splits, model_cfg, run_dir)
        if weight is not None:
            self.extra["hard_weight"] = weight
        return splits

    def train_features(self, split):
        return self.extra

    def build(self, run_dir, splits):
        cfg, v, teacher = self.cfg, self.cfg.virt, self.teacher
        model_cfg = student_config(cfg, teacher, v.student_init)
        encoder, tokenizer = init_encoder(model_cfg, splits.train.text_a + splits.train.text_b, run_dir)
        student = VirtModel(encoder, num_labels=len(splits.label_names), adapted_interaction=v.adapted_interaction,
                            fusion=v.fusion, dropout=cfg.model.dropout, name="virt")
        if teacher is None:
            return VirtTraining(student, name="virt_training"), tokenizer
        check_same_vocab(teacher, tokenizer)
        if teacher.labels != splits.label_names:
            log.warning("teacher labels %s differ from the data's %s", teacher.labels, splits.label_names)
        return VirtTraining(student, teacher.model, interaction_weight=v.interaction_weight, layers=v.layers, layer_map=v.layer_map,
                            kd_weight=v.kd_weight, kd_temperature=v.kd_temperature, positions=v.positions,
                            weight_schedule=v.weight_schedule, name="virt_training"), tokenizer


def train_virt(cfg):
    """Teacher -> (siamese baseline) -> VIRT student; writes <out>/model (kind virt) and metrics.json
    (+ teacher and baseline scores, the share of the gap closed, warnings)."""
    return run(Virt(cfg))
