"""Sentence-BERT objectives. Each takes two batches of sentence embeddings u, v [B, H].

- `softmax_loss`: SBERT's NLI objective. A linear classifier over (u, v, |u - v|);
  labels are class ids (works for 2 or more classes). Needs the classifier's logits.
  >>> softmax_loss(tf.constant([1, 0]), logits)                     # doctest: +SKIP
- `cosine_loss`: regression of cos(u, v) onto a similarity label in [0, 1]
  (0/1 labels, or graded scores scaled to [0, 1]). MSE.
  >>> cosine_loss(u, v, tf.constant([1.0, 0.0]))                     # doctest: +SKIP
- `mnrl_loss`: multiple-negatives ranking loss for retrieval. Uses positive pairs
  only: for each u_i, v_i is the answer and every other v_j in the batch a
  negative; cross-entropy over `scale * cos(u_i, v_j)`.
  >>> mnrl_loss(u, v, scale=20.0)                                    # doctest: +SKIP
"""

from __future__ import annotations

import tensorflow as tf

from modeling.task_model import cross_entropy


def cosine(u, v):
    u = tf.math.l2_normalize(tf.cast(u, tf.float32), axis=-1)
    v = tf.math.l2_normalize(tf.cast(v, tf.float32), axis=-1)
    return tf.reduce_sum(u * v, axis=-1)


def softmax_loss(labels, logits):
    """Cross-entropy of the (u, v, |u-v|) classifier's logits."""
    return cross_entropy(labels, logits)


def cosine_loss(u, v, similarity):
    """Mean squared error between cos(u, v) and `similarity` in [0, 1]."""
    return tf.reduce_mean(tf.square(cosine(u, v) - tf.cast(similarity, tf.float32)))


def mnrl_loss(u, v, scale=20.0, positive=None):
    """In-batch negatives: CE of row i against column i of `scale * cos(u, v^T)`.

    `positive` [B] (1 for pairs to learn from) restricts the anchors to positive
    pairs; their v's stay in the batch as negatives for the others.
    """
    u = tf.math.l2_normalize(tf.cast(u, tf.float32), axis=-1)
    v = tf.math.l2_normalize(tf.cast(v, tf.float32), axis=-1)
    scores = scale * tf.matmul(u, v, transpose_b=True)  # [B, B]
    per_row = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.range(tf.shape(u)[0]), logits=scores)
    if positive is None:
        return tf.reduce_mean(per_row)
    w = tf.cast(positive, tf.float32)
    return tf.reduce_sum(per_row * w) / tf.maximum(tf.reduce_sum(w), 1.0)
