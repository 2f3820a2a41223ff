"""VIRT student: a siamese encoder plus the VIRT-adapted interaction head.

Inference is split the way a deployment runs it:
    encode(ids, mask)         -> last-layer token states [B, T, H]  (y side: offline, cached)
    score(hx, xm, hy, ym)     -> class probabilities                (online, cheap)
`score` broadcasts a batch of 1 on the x side: one query's states [1, Tx, H] against K
candidates [K, Ty, H] give K probabilities (search/engine.py's rerank).
and `call` = score(encode(x), encode(y)) on `x_ids/x_mask/y_ids/y_mask`.

`VirtTraining` wraps the student with a frozen cross-encoder teacher and adds
`interaction_weight * L_virt` (virt/losses.py) to the cross-entropy, and optionally the
teacher's soft targets (`kd_weight`, distill/losses.py) from the same teacher pass.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from distill.losses import soft_kl
from crossenc.model import CrossEncoder, as_encoder
from modeling.encoder import gelu, pool
from modeling.task_model import (SIAMESE_IDS, PairModel, StudentTraining, cross_entropy, ids_spec, resolve_layer_map,
                                 siamese_dummy_inputs)
from virt.losses import select_layers, teacher_inputs, virt_loss, weight_scale


def _masked_attend(hq, hk, k_mask):
    """softmax(hq hk^T / sqrt(d)) over valid keys, applied to hk: [B, Tq, H]. The reference
    formula of Eq. 5 (tests, bench/virt_head.py); the model computes it as `adapted_pooling`."""
    scores = tf.matmul(hq, hk, transpose_b=True) / math.sqrt(hq.shape[-1])  # [B, Tq, Tk]
    scores = tf.cast(scores, tf.float32) + (1.0 - tf.cast(k_mask[:, None, :], tf.float32)) * -1e9
    return tf.matmul(tf.cast(tf.nn.softmax(scores, axis=-1), hk.dtype), hk)


def adapted_pooling(hx, x_mask, hy, y_mask):
    """Eq. 5's u = mean_x(softmax(Hx Hy^T/sqrt(d)) Hy) and v = mean_y(softmax(Hy Hx^T/sqrt(d)) Hx).

    Computed as `pool(_masked_attend(...))` is, with two exact shortcuts: both directions share
    one score matrix S = Hx Hy^T (v's scores are S^T), and the mean over x of (P Hy) is
    (mean over x of P) Hy, so the [B, Tx, Ty] x [B, Ty, H] products become [B, 1, Ty] x [B, Ty, H]:
    one batched matmul of the attention size instead of four. The batch dims broadcast, so one
    query (batch 1) scores against K cached candidates (batch K) without copying it K times.
    """
    s = tf.cast(_scores(hx, hy) / math.sqrt(hx.shape[-1]), tf.float32)  # [B, Tx, Ty]
    xm = tf.cast(x_mask, tf.float32)  # [B, Tx]
    ym = tf.cast(y_mask, tf.float32)  # [B, Ty]
    p_xy = tf.nn.softmax(s + (1.0 - ym[:, None, :]) * -1e9, axis=-1)  # rows: x tokens over valid y
    p_yx = tf.nn.softmax(s + (1.0 - xm[:, :, None]) * -1e9, axis=-2)  # columns: y tokens over valid x
    w_y = tf.reduce_sum(p_xy * xm[:, :, None], axis=-2) / tf.maximum(tf.reduce_sum(xm, -1, keepdims=True), 1.0)
    w_x = tf.reduce_sum(p_yx * ym[:, None, :], axis=-1) / tf.maximum(tf.reduce_sum(ym, -1, keepdims=True), 1.0)
    u = tf.matmul(tf.cast(w_y, hy.dtype)[:, None, :], hy)[:, 0]  # [B, H]
    v = tf.matmul(tf.cast(w_x, hx.dtype)[:, None, :], hx)[:, 0]  # [B, H]
    return u, v


def _scores(hx, hy):
    """Hx Hy^T: [B, Tx, Ty]. One query (batch 1) against K candidates is computed as one 2-D
    matmul [K*Ty, H] x [H, Tx] (1.7x faster on this CPU than the broadcast batched matmul)."""
    def one_query():
        shape = tf.shape(hy)
        s = tf.matmul(tf.reshape(hy, [-1, shape[2]]), hx[0], transpose_b=True)  # [K*Ty, Tx]
        return tf.transpose(tf.reshape(s, [shape[0], shape[1], tf.shape(hx)[1]]), [0, 2, 1])

    return tf.cond(tf.logical_and(tf.equal(tf.shape(hx)[0], 1), tf.greater(tf.shape(hy)[0], 1)), one_query,
                   lambda: tf.matmul(hx, hy, transpose_b=True))


def _same_batch(u, v):
    """Broadcast [1, H] against [B, H] (one query state scored against B candidates) by adding zeros of
    the other's batch: exact, and an elementwise broadcast every runtime's shape inference follows
    (OpenVINO's refused the ONNX Expand of tf.broadcast_to at the concat after it)."""
    return u + tf.zeros_like(v[:, :1]), v + tf.zeros_like(u[:, :1])  # [B, H] each


def uses_fusion(adapted_interaction, fusion=None):
    """Whether the head has Eq. 6's fusion MLP: `fusion`, or (model directories written before
    `virt.fusion` existed) the adapted flag."""
    return adapted_interaction if fusion is None else bool(fusion)


def default_head():
    """`(adapted_interaction, fusion)` for `virt.adapted_interaction=null` / `virt.fusion=null`: the
    siamese baseline's own head (mean-pooled towers, SBERT's (u, v, |u-v|)) for every class count,
    so the student differs from its baseline by the attention distillation alone.

    Measured (docs/defaults.md, "Why VIRT ended below its baseline"): with the teacher leading by 9.7
    points, Eq. 5 + Eq. 6's fusion head scored 5.7 points below the SBERT-headed baseline without
    distillation and 2.7-3.0 below it with distillation (which added +3.0 / +2.7 under that head),
    against +5.3 over it with the SBERT head; the 3-class outside check's fusion-headed VIRT also
    ended below its SBERT-headed baseline at both depths. (Until issue 29: Eq. 5 + fusion for more
    than two classes, on one outside 3-class run under an older recipe.)"""
    return False, False


@keras.saving.register_keras_serializable(package="textmatch")
class VirtModel(PairModel):
    """Siamese encoder (shared weights) + interaction head.

    Args:
        encoder: `BertEncoder` or its architecture dict.
        num_labels: number of classes.
        adapted_interaction: VIRT-adapted interaction (Eq. 5):
            u = mean_x(softmax(Hx Hy^T/sqrt(d)) Hy), v = mean_y(softmax(Hy Hx^T/sqrt(d)) Hx).
            When False, u and v are the mean-pooled Hx and Hy.
        fusion: Eq. 6, r = [u, v, u-v, max(u,v)], logits = MLP(MLP(r) + r); when False,
            SBERT's head [u, v, |u-v|] -> linear. None (default) = same as
            `adapted_interaction`, so `adapted_interaction=False` alone is the plain SBERT
            head; `adapted_interaction=False, fusion=True` is the paper's own
            "w/o adapted interaction" ablation (Sec. 4.5.1 keeps the fusion layer).
        dropout: dropout before the output layer.
    """

    kind = "virt"
    servable = True
    ids_inputs = SIAMESE_IDS
    encode_output = "token_states"
    late_interaction = True

    def __init__(self, encoder, num_labels, adapted_interaction=True, fusion=None, dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        self.encoder = as_encoder(encoder)
        self.num_labels = num_labels
        self.adapted_interaction = adapted_interaction
        self.fusion = uses_fusion(adapted_interaction, fusion)
        self.dropout_rate = dropout
        width = 4 * self.encoder.hidden_size
        init = keras.initializers.TruncatedNormal(stddev=0.02)
        if self.fusion:
            self.fuse = keras.layers.Dense(width, activation=gelu, kernel_initializer=init, name="fuse_mlp")
            self.hidden = keras.layers.Dense(self.encoder.hidden_size, activation=gelu, kernel_initializer=init,
                                             name="output_mlp")
        self.dropout = keras.layers.Dropout(dropout, name="classifier_dropout")
        self.classifier = keras.layers.Dense(num_labels, dtype="float32", kernel_initializer=init,
                                             name="classifier")

    def featurize(self, tokenizer, texts_a, texts_b, max_len):
        return tokenizer.encode_virt(texts_a, texts_b, max_len)

    # ---- inference split -------------------------------------------------------
    def encode(self, ids, mask, training=False, output_qk=False):
        return self.encoder({"input_ids": ids, "attention_mask": mask}, training=training, output_qk=output_qk)

    def score_logits(self, hx, x_mask, hy, y_mask, training=False):
        if self.adapted_interaction:
            u, v = adapted_pooling(hx, x_mask, hy, y_mask)  # [B, H] each
        else:
            u, v = _same_batch(pool(hx, x_mask, "mean"), pool(hy, y_mask, "mean"))  # [B, H]
        if self.fusion:
            r = tf.concat([u, v, u - v, tf.maximum(u, v)], axis=-1)  # [B, 4H]
            features = self.hidden(self.fuse(r) + r)  # [B, H]
        else:
            features = tf.concat([u, v, tf.abs(u - v)], axis=-1)  # [B, 3H]
        return self.classifier(self.dropout(features, training=training))  # [B, C]

    def score(self, hx, x_mask, hy, y_mask):
        return tf.nn.softmax(self.score_logits(hx, x_mask, hy, y_mask), axis=-1)

    def call(self, inputs, training=False):
        hx = self.encode(inputs["x_ids"], inputs["x_mask"], training)["last_hidden_state"]
        hy = self.encode(inputs["y_ids"], inputs["y_mask"], training)["last_hidden_state"]
        return self.score_logits(hx, inputs["x_mask"], hy, inputs["y_mask"], training)

    def dummy_inputs(self):
        return siamese_dummy_inputs()

    def encode_reference(self, ids, mask):
        states = self.encode(tf.convert_to_tensor(ids), tf.convert_to_tensor(mask))["last_hidden_state"]
        return {"token_states": tf.cast(states, tf.float32)}

    def serving_functions(self):
        @tf.function(autograph=False, input_signature=[ids_spec("input_ids"), ids_spec("attention_mask")])
        def encode_ids(input_ids, attention_mask):
            return self.encode_reference(input_ids, attention_mask)

        hidden = self.encoder.hidden_size

        @tf.function(autograph=False, input_signature=[tf.TensorSpec([None, None, hidden], tf.float32, name="x_states"),
                                                       ids_spec("x_mask"),
                                                       tf.TensorSpec([None, None, hidden], tf.float32, name="y_states"),
                                                       ids_spec("y_mask")])
        def score(x_states, x_mask, y_states, y_mask):
            return {"probs": tf.cast(self.score(x_states, x_mask, y_states, y_mask), tf.float32)}

        @tf.function(autograph=False, input_signature=[ids_spec(n) for n in SIAMESE_IDS])
        def predict_ids(x_ids, x_mask, y_ids, y_mask):
            return self.reference_outputs({"x_ids": x_ids, "x_mask": x_mask, "y_ids": y_ids, "y_mask": y_mask})
        return {"score": score, "predict_ids": predict_ids, "encode_ids": encode_ids}

    def hf_head(self):
        raise ValueError("a virt model has no Hugging Face form: it scores a pair with its interaction head over "
                         "both texts' token states, which neither transformers nor sentence-transformers "
                         "models; a sentence-transformers folder of its encoder would give embeddings nobody "
                         "trained to be compared by cosine. Export it without hf (ONNX / SavedModel keep the "
                         "encode / score split), or train an sbert model (e.g. from model.init=<this model>)")

    def get_config(self):
        return {**super().get_config(), "encoder": self.encoder.architecture(), "num_labels": self.num_labels,
                "adapted_interaction": self.adapted_interaction, "fusion": self.fusion,
                "dropout": self.dropout_rate}


class VirtTraining(StudentTraining):
    """Training-time wrapper, frozen teacher: `loss = CE + interaction_weight * L_virt [+ kd_weight * T^2 * KL]`.

    The teacher runs in the step in inference mode on `x ++ y[1:]`; its attention
    probabilities of the mapped layers feed L_virt. Given the whole cross-encoder
    (not only its encoder) and `kd_weight > 0`, the same pass also gives its logits
    (the positions and mask make them the joint pair's), and the student's logits are
    pulled towards them (Hinton's soft targets at `kd_temperature`; off in the paper,
    DiPair-style). Memory: per distilled layer, the teacher's [B, Nt, T, T] and the
    student's [B, N, Lx, Ly] maps (T = Lx + Ly - 1); at B=32, T=128, 12 heads that is
    ~25 MB per layer in float32.

    Args:
        student: the `VirtModel` that gets saved and served.
        teacher: a `CrossEncoder`, or its `BertEncoder` alone (attention only); None = no teacher.
        interaction_weight: weight of L_virt, the attention (interaction) distillation
            (`virt.interaction_weight`).
        layers, layer_map: which student layers are distilled, from which teacher layers.
        kd_weight: weight of the soft-target term (needs a `CrossEncoder` teacher).
        kd_temperature: its temperature T.
        positions: the tokens L_virt covers: `all`, or `content` (no [CLS] / [SEP] rows or columns).
        weight_schedule: `constant`, or `decay` (the weight falls linearly to 0 over the training
            steps the trainer passes to `follow_steps`).
    """

    def __init__(self, student, teacher=None, interaction_weight=1.0, layers="all", layer_map=None,
                 kd_weight=0.0, kd_temperature=2.0, positions="all", weight_schedule="constant", **kwargs):
        super().__init__(student, **kwargs)
        if kd_weight and not isinstance(teacher, CrossEncoder):
            raise ValueError("virt.kd_weight > 0 needs the teacher's classifier: pass the CrossEncoder, not its encoder")
        self.teacher_head = teacher if isinstance(teacher, CrossEncoder) else None
        self.teacher = teacher.encoder if isinstance(teacher, CrossEncoder) else teacher
        self.interaction_weight = interaction_weight
        self.kd_weight, self.kd_temperature = kd_weight, kd_temperature
        self.positions = positions
        weight_scale(weight_schedule, None, 1)  # fail on a bad name at build, not at the first step
        self.weight_schedule = weight_schedule
        self.__dict__.update(_step=None, _total_steps=1)  # untracked: the step is the optimizer's variable
        ns = student.encoder.num_layers
        self.distilled_layers = select_layers(layers, ns) if self.teacher is not None else []
        if self.teacher is not None:
            if self.teacher_head is not None:
                self.teacher_head.trainable = False
            self.teacher.trainable = False
            self.layer_map = resolve_layer_map(layer_map, ns, self.teacher.num_layers, "virt.layer_map")

    def call(self, inputs, training=False):
        if not training or self.teacher is None:
            return self.student(inputs, training=training)
        s = self.student
        distill = bool(self.distilled_layers)
        out_x = s.encode(inputs["x_ids"], inputs["x_mask"], training, output_qk=distill)
        out_y = s.encode(inputs["y_ids"], inputs["y_mask"], training, output_qk=distill)
        logits = s.score_logits(out_x["last_hidden_state"], inputs["x_mask"],
                                out_y["last_hidden_state"], inputs["y_mask"], training)
        t_in = teacher_inputs(inputs["x_ids"], inputs["x_mask"], inputs["y_ids"], inputs["y_mask"])
        t_out = self.teacher(t_in, training=False, output_attentions=True)
        t_att = [tf.stop_gradient(a) for a in t_out["attentions"]]
        l_virt = virt_loss(out_x, out_y, inputs["x_mask"], inputs["y_mask"], t_att, self.distilled_layers, self.layer_map,
                           self.positions)
        out = {"logits": logits, "virt": l_virt}
        if self.kd_weight:
            t_logits = self.teacher_head.head(t_out, t_in["attention_mask"], training=False)  # [B, C]
            t = self.kd_temperature
            out["kd"] = soft_kl(logits, tf.stop_gradient(t_logits), t) * t ** 2
        return out

    def follow_steps(self, step, total_steps):
        """Give `weight_schedule` the optimizer's step counter (a variable, read in each step)."""
        self.__dict__.update(_step=step, _total_steps=total_steps)

    def loss_terms(self, x, y, y_pred):
        if not isinstance(y_pred, dict):
            return {"ce": cross_entropy(y, y_pred)}
        # Teacher-labelled transfer rows (hard_weight 0) keep only the teacher's terms.
        weight = self.interaction_weight * weight_scale(self.weight_schedule, self._step, self._total_steps)
        terms = {"ce": cross_entropy(y, y_pred["logits"], x.get("hard_weight")), "virt": weight * y_pred["virt"]}
        if "kd" in y_pred:
            terms["kd"] = self.kd_weight * y_pred["kd"]
        return terms
