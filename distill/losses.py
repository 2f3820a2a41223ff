"""Logit distillation (Hinton et al., 2015) and hidden-state distillation losses.

What they are for: a large fine-tuned cross-encoder (the teacher) teaches a
small one (the student) through its soft predictions, which carry more
information per example than the hard label (how *close* a negative is).

    loss = alpha * CE(y, s) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))

T^2 keeps the soft term's gradients on the scale of the hard term as T grows.
alpha is the config key `distill.label_weight` (once itself named `distill.alpha`).
The original project used alpha=0.2, T=10.

Inputs: integer labels [B], student logits [B, C], teacher logits [B, C].

Example:
    >>> kd_loss(tf.constant([1]), tf.constant([[0., 1.]]), tf.constant([[0., 2.]]), alpha=0.2, temperature=10.)
    <tf.Tensor: shape=(), dtype=float32, numpy=0.16194...>   # worked by hand in tests/test_distill.py
"""

from __future__ import annotations

import tensorflow as tf

from modeling.task_model import cross_entropy


def soft_kl(student_logits, teacher_logits, temperature):
    """Mean over the batch of KL(softmax(t/T) || softmax(s/T))."""
    log_t = tf.nn.log_softmax(tf.cast(teacher_logits, tf.float32) / temperature, axis=-1)
    log_s = tf.nn.log_softmax(tf.cast(student_logits, tf.float32) / temperature, axis=-1)
    kl = tf.reduce_sum(tf.exp(log_t) * (log_t - log_s), axis=-1)  # [B]
    return tf.reduce_mean(tf.maximum(kl, 0.0))  # KL >= 0; rounding can dip below when t ~ s


def kd_terms(labels, student_logits, teacher_logits, alpha, temperature, hard_weight=None):
    """The two weighted terms of the distillation loss: {"ce": ..., "kd": ...}.

    `hard_weight` [B], optional: a per-row weight of the hard-label term, the batch mean of
    `hard_weight * CE` (`modeling.task_model.cross_entropy`): teacher-labelled transfer rows
    (training/transfer.py: swapped, re-paired, augmented or unlabelled pairs) have weight 0 and learn
    from the teacher's soft targets alone; every row has the soft term.
    """
    ce = cross_entropy(labels, student_logits, hard_weight)
    kd = soft_kl(student_logits, teacher_logits, temperature) * temperature ** 2
    return {"ce": alpha * ce, "kd": (1.0 - alpha) * kd}


def kd_loss(labels, student_logits, teacher_logits, alpha=0.2, temperature=10.0):
    """`alpha * CE + (1 - alpha) * T^2 * KL`, a scalar."""
    return tf.add_n(list(kd_terms(labels, student_logits, teacher_logits, alpha, temperature).values()))


def hidden_mse(student_hidden, teacher_hidden, mask):
    """Mean squared error between (projected) student and teacher token states on valid tokens.

    student_hidden, teacher_hidden: [B, T, H]; mask [B, T].
    """
    m = tf.cast(mask, tf.float32)[:, :, None]
    sq = tf.square(tf.cast(student_hidden, tf.float32) - tf.cast(teacher_hidden, tf.float32)) * m
    return tf.reduce_sum(sq) / tf.maximum(tf.reduce_sum(m) * tf.cast(tf.shape(sq)[-1], tf.float32), 1.0)
