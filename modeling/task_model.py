"""The base of every trainable model: what the one training loop needs from a task.

A task model is a `keras.Model` that
- `featurize(tokenizer, texts_a, texts_b, max_len)`: texts -> ragged id lists
  (the pipeline pads them per batch and adds a `*mask` for each `*ids`);
- `call(inputs, training)`: padded features -> logits [B, classes] (float32);
- `loss_terms(x, y, y_pred)`: named scalar losses, each a mean over the batch
  (the trainer sums them, scales for replicas and logs each);
- `dummy_inputs()`: a tiny batch that creates every variable.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def _ids(n):
    return tf.constant([[2, 5, 3] + [0] * (n - 3)], tf.int32)


class PairModel(keras.Model):
    kind = "abstract"

    def featurize(self, tokenizer, texts_a, texts_b, max_len):
        raise NotImplementedError

    def loss_terms(self, x, y, y_pred):
        """Default: cross-entropy of the logits against integer labels."""
        return {"ce": cross_entropy(y, y_pred)}

    def dummy_inputs(self):
        raise NotImplementedError

    def predict_proba_fn(self):
        """A `tf.function` from a padded batch to class probabilities (built once per model)."""
        fn = self.__dict__.get("_proba_fn")
        if fn is None:
            fn = tf.function(lambda x: tf.nn.softmax(self(x, training=False), axis=-1), reduce_retracing=True)
            object.__setattr__(self, "_proba_fn", fn)  # bypass Keras attribute tracking
        return fn


class StudentTraining(PairModel):
    """Base of training-time wrappers (distillation, VIRT) around a deployable `student`.

    The wrapper owns the extra training-only parts (a frozen teacher, a
    projection); `deployable` is what gets saved, exported and served.
    """

    def __init__(self, student, **kwargs):
        super().__init__(**kwargs)
        self.student = student

    @property
    def kind(self):
        return self.student.kind

    @property
    def deployable(self):
        return self.student

    def featurize(self, tokenizer, texts_a, texts_b, max_len):
        return self.student.featurize(tokenizer, texts_a, texts_b, max_len)

    def dummy_inputs(self):
        return self.student.dummy_inputs()


def resolve_layer_map(layer_map, student_layers, teacher_layers, key):
    """The teacher layer of each student layer: `layer_map` checked, or the same relative depth.

    A student deeper than its teacher shares teacher layers (clamped at layer 0).
    """
    if not layer_map:
        return [max(round((l + 1) * teacher_layers / student_layers) - 1, 0) for l in range(student_layers)]
    if len(layer_map) != student_layers or not all(0 <= t < teacher_layers for t in layer_map):
        raise ValueError(f"{key}={list(layer_map)}: need {student_layers} teacher layer indices "
                         f"in 0..{teacher_layers - 1}")
    return list(layer_map)


def cross_entropy(labels, logits):
    """Mean softmax cross-entropy of integer `labels` [B] given `logits` [B, C]."""
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(labels, tf.int32), logits=tf.cast(logits, tf.float32)))


def pair_dummy_inputs():
    ids = _ids(5)
    return {"input_ids": ids, "token_type_ids": tf.zeros_like(ids), "attention_mask": tf.cast(ids > 0, tf.int32)}
