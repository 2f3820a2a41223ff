"""The cross-encoder as the teacher of distillation and VIRT: given, or fine-tuned inside the
student's run; and the students that share its vocabulary or start from its layers."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from crossenc.task import finetune
from modeling.checkpoints import CheckpointError
from modeling.model_dir import load_model_dir, read_meta
from training.references import run_or_reuse

log = logging.getLogger(__name__)


def teacher_for(cfg, run_dir, section, adjust=None):
    """The teacher model directory `<section>.teacher`, fine-tuned in <out>/teacher when absent on a
    copy of `cfg` (the full checkpoint) that `adjust(copy)` may change further.

    Returns `(loaded_teacher, teacher_metrics_or_None)`.
    """
    path = getattr(cfg, section).teacher
    metrics = None
    if path is None:
        tcfg = copy.deepcopy(cfg)
        tcfg.task, tcfg.out = "finetune", str(Path(run_dir) / "teacher")
        tcfg.model.num_layers = None  # the teacher is the full checkpoint
        tcfg.transfer = type(tcfg.transfer)()  # labelled pairs only (its students' transfer pairs are theirs)
        if adjust:
            adjust(tcfg)
        log.info("no %s.teacher given: fine-tuning a cross-encoder teacher first in %s", section, tcfg.out)
        metrics = run_or_reuse(tcfg, finetune, "teacher")
        path = Path(tcfg.out) / "model"
    kind = read_meta(path)["kind"]
    if kind != "cross_encoder":  # the student learns the attention or logits of a joint reading of the pair
        raise CheckpointError(f"{section}.teacher={path}: a {kind} model; a teacher must be a cross_encoder "
                              f"model directory (finetune writes one)")
    return load_model_dir(path), metrics


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


def student_config(cfg, teacher, student_init):
    """The student's model configuration: `student_model_config`, started from the teacher's layers
    (`student_from_teacher`) when `student_init` is `teacher` and there is a teacher."""
    model_cfg = student_model_config(cfg, teacher)
    return student_from_teacher(model_cfg, teacher) if teacher is not None and student_init == "teacher" else model_cfg


def check_same_vocab(teacher, tokenizer):
    """The student's tokenizer must be the teacher's: the teacher reads the student's ids."""
    a = Path(teacher.tokenizer.vocab_file).read_bytes()
    b = Path(tokenizer.vocab_file).read_bytes()
    if a != b:
        raise CheckpointError(f"the teacher's vocabulary ({teacher.tokenizer.vocab_file}) differs from the "
                              f"student's ({tokenizer.vocab_file}); both must tokenise the same way")
