"""Sentence-BERT bi-encoder: one shared encoder, pooling, optional normalisation.

`encode(ids, mask)` -> sentence embedding [B, H] is everything a deployment runs
per text; candidates are encoded offline and scored with a cosine. Pooling and
normalisation are stored in the model directory so export and serving
reproduce training exactly.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from crossenc.model import as_encoder
from modeling.encoder import pool
from modeling.task_model import SIAMESE_IDS, PairModel, ids_spec, siamese_dummy_inputs
from senbert.losses import cosine, cosine_loss, mnrl_loss, softmax_loss


@keras.saving.register_keras_serializable(package="textmatch")
class SentenceBert(PairModel):
    """The Sentence-BERT bi-encoder (task and model kind `sbert`): objective `softmax`, `cosine` or `mnrl`.

    Args:
        encoder: `BertEncoder` or its architecture dict.
        num_labels: classes of the softmax objective's classifier.
        objective: `softmax`, `cosine` or `mnrl`.
        pooling: `mean`, `cls` or `max`.
        normalize: L2-normalise embeddings (then dot product = cosine).
        scale: MNRL's similarity scale.
        positive_index: class id of "same meaning" (MNRL anchors).
        targets: cosine-objective target in [0, 1] for each class id; None = 1 for
            `positive_index`, 0 for the rest (graded labels: their scaled values).
    """

    kind = "sbert"
    servable = True
    ids_inputs = SIAMESE_IDS
    encode_output = "embeddings"
    threshold_metric = "cosine_threshold"  # chosen on the valid split by the sbert evaluator

    def __init__(self, encoder, num_labels=2, objective="softmax", pooling="mean", normalize=False,
                 scale=20.0, positive_index=1, targets=None, dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        self.encoder = as_encoder(encoder)
        self.num_labels, self.objective, self.pooling = num_labels, objective, pooling
        self.normalize, self.scale, self.positive_index, self.dropout_rate = normalize, scale, positive_index, dropout
        self.targets = ([float(t) for t in targets] if targets is not None
                        else [1.0 if i == positive_index else 0.0 for i in range(num_labels)])
        if objective == "softmax":
            self.classifier = keras.layers.Dense(num_labels, dtype="float32", name="classifier",
                                                 kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02))

    def featurize(self, tokenizer, texts_a, texts_b, max_len):
        return tokenizer.encode_virt(texts_a, texts_b, max_len)

    def encode(self, ids, mask, training=False):
        h = self.encoder({"input_ids": ids, "attention_mask": mask}, training=training)["last_hidden_state"]
        e = tf.cast(pool(h, mask, self.pooling), tf.float32)  # [B, H]
        return tf.math.l2_normalize(e, axis=-1) if self.normalize else e

    def call(self, inputs, training=False):
        u = self.encode(inputs["x_ids"], inputs["x_mask"], training)
        v = self.encode(inputs["y_ids"], inputs["y_mask"], training)
        out = {"u": u, "v": v, "cosine": cosine(u, v)}
        if self.objective == "softmax":
            out["logits"] = self.classifier(tf.concat([u, v, tf.abs(u - v)], axis=-1))
        return out

    def loss_terms(self, x, y, y_pred):
        if self.objective == "softmax":
            return {"softmax": softmax_loss(y, y_pred["logits"])}
        y = tf.cast(y, tf.int32)
        if self.objective == "cosine":
            target = tf.gather(tf.constant(self.targets, tf.float32), y)
            return {"cosine": cosine_loss(y_pred["u"], y_pred["v"], target)}
        # Anchors: pairs that mean the same (target >= 0.5 covers binary and graded labels).
        positive = tf.cast(tf.gather(tf.constant(self.targets, tf.float32), y) >= 0.5, tf.float32)
        return {"mnrl": mnrl_loss(y_pred["u"], y_pred["v"], self.scale, positive)}

    def dummy_inputs(self):
        return siamese_dummy_inputs()

    @classmethod
    def predict_outputs(cls, config):
        """`cosine`, and `probs` when the softmax objective trained a classifier."""
        return ("cosine", "probs") if config.get("objective", "softmax") == "softmax" else ("cosine",)

    def reference_outputs(self, feats):
        out = self({k: tf.convert_to_tensor(v) for k, v in feats.items()}, training=False)
        res = {"cosine": out["cosine"]}
        if "logits" in out:
            res["probs"] = tf.nn.softmax(tf.cast(out["logits"], tf.float32), axis=-1)
        return res

    def encode_reference(self, ids, mask):
        return {"embeddings": self.encode(tf.convert_to_tensor(ids), tf.convert_to_tensor(mask))}

    def serving_functions(self):
        @tf.function(autograph=False, input_signature=[ids_spec("input_ids"), ids_spec("attention_mask")])
        def encode_ids(input_ids, attention_mask):
            return self.encode_reference(input_ids, attention_mask)

        @tf.function(autograph=False, input_signature=[ids_spec(n) for n in SIAMESE_IDS])
        def predict_ids(x_ids, x_mask, y_ids, y_mask):
            return self.reference_outputs({"x_ids": x_ids, "x_mask": x_mask, "y_ids": y_ids, "y_mask": y_mask})
        return {"predict_ids": predict_ids, "encode_ids": encode_ids}

    def hf_head(self):
        """A sentence-transformers pipeline: Transformer -> Pooling (-> Normalize). The softmax
        objective's classifier on (u, v, |u-v|) is training-only there and is not written."""
        head = {"sentence_transformers": {"pooling": self.pooling, "normalize": self.normalize}}
        if self.objective == "softmax":
            head["not_written"] = "the softmax objective's classifier on (u, v, |u-v|) (training-only)"
        return head

    def get_config(self):
        return {**super().get_config(), "encoder": self.encoder.architecture(), "num_labels": self.num_labels,
                "objective": self.objective, "pooling": self.pooling, "normalize": self.normalize,
                "scale": self.scale, "positive_index": self.positive_index, "targets": self.targets,
                "dropout": self.dropout_rate}
