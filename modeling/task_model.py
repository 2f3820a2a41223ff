"""The base of every trainable model: what the one training loop needs from a task.

A task model is a `keras.Model` that
- `featurize(tokenizer, texts_a, texts_b, max_len)`: texts -> ragged id lists
  (the pipeline pads them per batch and adds a `*mask` for each `*ids`);
- `call(inputs, training)`: padded features -> logits [B, classes] (float32);
- `loss_terms(x, y, y_pred)`: named scalar losses, each a mean over the batch
  (the trainer sums them, scales for replicas and logs each);
- `dummy_inputs()`: a tiny batch that creates every variable.

A model class with a `kind` registers itself (`KINDS`), and its class attributes say what
export, the inference runtime, the server and search need of the kind (its functions, their
input and output names), so none of them branches on the kind's name. The attributes are
readable from model.json without building the model (`model_dir.kind_class`); an export writes them
into its directory as plain data (`modeling.serving_spec`), which is all a server of it reads.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from modeling.serving_spec import PAIR_IDS, SIAMESE_IDS  # noqa: F401  (the kinds' model modules import them here)

KINDS = {}  # kind -> model class; filled by PairModel.__init_subclass__


def _ids(n):
    return tf.constant([[2, 5, 3] + [0] * (n - 3)], tf.int32)


class PairModel(keras.Model):
    kind = "abstract"
    servable = False  # exported (SavedModel, ONNX) and served
    ids_inputs = PAIR_IDS  # predict_ids' inputs; PAIR_IDS: a pair is tokenised jointly, [CLS] a [SEP] b [SEP]
    encode_output = None  # encode_ids' output for one text (None: no such function): "embeddings" [B, H] ...
    late_interaction = False  # ... or per-token "token_states" [B, T, H], scored by `score` (VIRT)
    reranks = False  # its predict_ids on (query, candidate) may rerank search results
    threshold_metric = None  # metrics.json's "valid" key of a decision threshold on `cosine` (no classifier)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if isinstance(cls.__dict__.get("kind"), str):  # training wrappers take their student's kind
            KINDS[cls.kind] = cls

    @classmethod
    def joint_pair(cls):
        """Whether a pair is one input ([CLS] a [SEP] b [SEP]) rather than two texts encoded alone."""
        return cls.ids_inputs == PAIR_IDS

    @classmethod
    def predict_outputs(cls, config):
        """Output names of predict_ids / serving_default, from the model's Keras config (model.json)."""
        return ("probs",)

    def serving_functions(self):
        """The ids-level `tf.function`s (input_signature set) by name: `predict_ids` (inputs
        `ids_inputs`, outputs `predict_outputs`), `encode_ids` when `encode_output`, `score` when
        `late_interaction`. SavedModel, frozen graph, ONNX and the Keras backend are all made
        from these, so they compute the same thing."""
        raise NotImplementedError(f"a {self.kind} model has no serving functions")

    def reference_outputs(self, feats):
        """predict_ids' outputs on padded ids (tensors or arrays): class probabilities."""
        logits = self({k: tf.convert_to_tensor(v) for k, v in feats.items()}, training=False)
        return {"probs": tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)}

    def encode_reference(self, ids, mask):
        """encode_ids' output `{encode_output: ...}` on padded ids of single texts."""
        raise NotImplementedError(f"a {self.kind} model encodes no single text")

    def hf_head(self):
        """What the Hugging Face export (export/hf.py) writes besides the encoder, which is the model
        there: `{"architecture": "BertForSequenceClassification", "classifier": (kernel [H, C],
        bias [C])}` or `{"sentence_transformers": {"pooling": mode, "normalize": bool}}`, with `not_written` naming
        what of the model the folder leaves out. Raises
        ValueError saying why and what to do instead when the model has no such form."""
        raise ValueError(f"a {self.kind} model has no Hugging Face form")

    def featurize(self, tokenizer, texts_a, texts_b, max_len):
        raise NotImplementedError

    def loss_terms(self, x, y, y_pred):
        """Default: cross-entropy of the logits against integer labels."""
        return {"ce": cross_entropy(y, y_pred)}

    def dummy_inputs(self):
        raise NotImplementedError

    def outputs_fn(self):
        """A `tf.function` from a padded batch to `reference_outputs` (the named outputs of the kind's
        `predict_outputs`), built once per model: what evaluation and predict read, whatever the kind."""
        fn = self.__dict__.get("_outputs_fn")
        if fn is None:
            fn = tf.function(self.reference_outputs, reduce_retracing=True)
            object.__setattr__(self, "_outputs_fn", fn)  # bypass Keras attribute tracking
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


def cross_entropy(labels, logits, row_weight=None):
    """Mean softmax cross-entropy of integer `labels` [B] given `logits` [B, C].

    `row_weight` [B], optional: the mean over the batch of `row_weight * CE`. A row of weight 0 (a
    teacher-labelled transfer pair, whose label is the placeholder `NO_LABEL`) adds nothing: its label is
    never read. The mean stays over all B rows, so under a distribution strategy each replica's share is
    its part of the global-batch mean, as for every other term (training/transfer.py gives labelled rows
    the weight that keeps the term's expected scale).
    """
    labels = tf.cast(labels, tf.int32)
    if row_weight is not None:
        w = tf.cast(row_weight, tf.float32)
        labels = tf.where(w > 0, labels, tf.zeros_like(labels))
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=tf.cast(logits, tf.float32))
    return tf.reduce_mean(ce if row_weight is None else w * ce)


def ids_spec(name):
    return tf.TensorSpec([None, None], tf.int32, name=name)


def siamese_dummy_inputs():
    ids = tf.constant([[2, 5, 3]], tf.int32)
    mask = tf.ones_like(ids)
    return {"x_ids": ids, "x_mask": mask, "y_ids": ids, "y_mask": mask}


def pair_dummy_inputs():
    ids = _ids(5)
    return {"input_ids": ids, "token_type_ids": tf.zeros_like(ids), "attention_mask": tf.cast(ids > 0, tf.int32)}
