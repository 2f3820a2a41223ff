"""virt task: fine-tune (or load) a cross-encoder teacher, then train the VIRT student."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from modeling.checkpoints import CheckpointError
from modeling.model_dir import load_model_dir
from training.tasks import init_encoder, load_splits, prepare_run_dir, print_summary, train_task
from virt.model import VirtModel, VirtTraining

log = logging.getLogger(__name__)


def teacher_for(cfg, run_dir, section):
    """The teacher model directory of `section` (virt or distill), fine-tuned here when absent.

    Returns `(loaded_teacher, teacher_metrics_or_None)`.
    """
    path = getattr(cfg, section).teacher
    metrics = None
    if path is None:
        from training.finetune import finetune

        tcfg = copy.deepcopy(cfg)
        tcfg.task, tcfg.out = "finetune", str(Path(run_dir) / "teacher")
        tcfg.model.num_layers = None  # the teacher is the full checkpoint
        if section == "virt":
            tcfg.model.pooling = "mean"  # VIRT's teachers use mean pooling (paper, Sec. 4.3)
        log.info("no %s.teacher given: fine-tuning a cross-encoder teacher first in %s", section, tcfg.out)
        metrics = finetune(tcfg)
        path = Path(tcfg.out) / "model"
    teacher = load_model_dir(path, expect_kind="cross_encoder")
    return teacher, metrics


def check_same_vocab(teacher, tokenizer):
    a = Path(teacher.tokenizer.vocab_file).read_bytes()
    b = Path(tokenizer.vocab_file).read_bytes()
    if a != b:
        raise CheckpointError(f"the teacher's vocabulary ({teacher.tokenizer.vocab_file}) differs from the "
                              f"student's ({tokenizer.vocab_file}); both must tokenise the same way")


def train_virt(cfg):
    """Teacher -> VIRT student; writes <out>/model (kind virt), metrics.json (+ teacher scores)."""
    run_dir = prepare_run_dir(cfg)
    splits = load_splits(cfg)
    v = cfg.virt
    teacher, teacher_metrics = teacher_for(cfg, run_dir, "virt") if v.distill else (None, None)

    def build():
        encoder, tokenizer = init_encoder(cfg.model, splits.train.text_a + splits.train.text_b, run_dir)
        student = VirtModel(encoder, num_labels=len(splits.label_names), adapted_interaction=v.adapted_interaction,
                            dropout=cfg.model.dropout, name="virt")
        if teacher is None:
            return VirtTraining(student, name="virt_training"), tokenizer
        check_same_vocab(teacher, tokenizer)
        if teacher.labels != splits.label_names:
            log.warning("teacher labels %s differ from the data's %s", teacher.labels, splits.label_names)
        return VirtTraining(student, teacher.model.encoder, alpha=v.alpha, layers=v.layers,
                            layer_map=v.layer_map, name="virt_training"), tokenizer

    report = {"virt": {"distill": v.distill, "adapted_interaction": v.adapted_interaction,
                       "alpha": v.alpha, "layers": v.layers}}
    if teacher_metrics:
        report["teacher"] = {k: teacher_metrics[k] for k in ("valid", "test") if k in teacher_metrics}
    metrics = train_task(cfg, run_dir, build, splits, report=report,
                         extra_meta={"virt": report["virt"]})
    print_summary(run_dir, metrics)
    return metrics
