"""A BERT / RoBERTa encoder in Keras 3 that exposes what text-matching needs.

Why our own: VIRT distils a cross-encoder's attention maps into a siamese
student, so every layer must hand out its attention probabilities *and* its
query/key projections (split into heads). keras-hub's `BertBackbone` and
tf-models-official do not expose those; this file is small enough to read top
to bottom.

Shapes in comments: B batch, T tokens, H hidden, N heads, D = H / N head size.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf


def gelu(x):
    """Exact GELU written with `erf`.

    TF >= 2.20 lowers `tf.nn.gelu(approximate=False)` to an `Erfc` op that
    tf2onnx 1.17 cannot convert; this form matches checkpoints trained with
    exact GELU and exports cleanly. The order of the products,
    `x * ((1 + erf(x * 0.7071)) * 0.5)`, is the one onnxruntime's GELU fusion
    matches in a TensorFlow graph (export/fusion.py); scaling by 0.5 is exact.
    """
    return x * ((1.0 + tf.math.erf(x * (1.0 / math.sqrt(2.0)))) * 0.5)


def _init(stddev):
    return keras.initializers.TruncatedNormal(stddev=stddev)


class SelfAttention(keras.layers.Layer):
    """Multi-head self-attention that can return its probabilities and Q/K."""

    def __init__(self, hidden_size, num_heads, attention_dropout, initializer_range, **kwargs):
        super().__init__(**kwargs)
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_size = hidden_size // num_heads
        dense = dict(units=hidden_size, kernel_initializer=_init(initializer_range))
        self.query = keras.layers.Dense(name="query", **dense)
        self.key = keras.layers.Dense(name="key", **dense)
        self.value = keras.layers.Dense(name="value", **dense)
        self.dropout = keras.layers.Dropout(attention_dropout, name="dropout")

    def split_heads(self, x, b, t):
        # [B, T, H] -> [B, N, T, D]
        x = tf.reshape(x, [b, t, self.num_heads, self.head_size])
        return tf.transpose(x, [0, 2, 1, 3])

    def call(self, hidden, mask_bias, training=False):
        # B, T from the layer input: tf2onnx 1.17 can rewire tf.shape() of a Dense
        # output to its flattened [B*T, H] MatMul (when the bias is all zero).
        b, t = tf.shape(hidden)[0], tf.shape(hidden)[1]
        q = self.split_heads(self.query(hidden), b, t)  # [B, N, T, D]
        k = self.split_heads(self.key(hidden), b, t)  # [B, N, T, D]
        v = self.split_heads(self.value(hidden), b, t)  # [B, N, T, D]
        scores = tf.matmul(q, k, transpose_b=True) / math.sqrt(self.head_size)  # [B, N, T, T]
        # Softmax in float32 so a large negative mask is safe under mixed precision.
        probs = tf.nn.softmax(tf.cast(scores, tf.float32) + tf.cast(mask_bias, tf.float32), axis=-1)  # [B, N, T, T]
        context = tf.matmul(tf.cast(self.dropout(probs, training=training), v.dtype), v)  # [B, N, T, D]
        context = tf.reshape(tf.transpose(context, [0, 2, 1, 3]), [b, t, -1])  # [B, T, H]
        return context, probs, q, k


class TransformerLayer(keras.layers.Layer):
    """Post-LayerNorm transformer block (BERT): attention, add & norm, FFN, add & norm."""

    def __init__(self, hidden_size, num_heads, intermediate_size, hidden_dropout,
                 attention_dropout, layer_norm_eps, initializer_range, **kwargs):
        super().__init__(**kwargs)
        self.attention = SelfAttention(hidden_size, num_heads, attention_dropout,
                                       initializer_range, name="attention")
        self.attention_output = keras.layers.Dense(hidden_size, kernel_initializer=_init(initializer_range),
                                                   name="attention_output")
        self.attention_dropout = keras.layers.Dropout(hidden_dropout, name="attention_output_dropout")
        self.attention_norm = keras.layers.LayerNormalization(epsilon=layer_norm_eps, name="attention_norm")
        self.intermediate = keras.layers.Dense(intermediate_size, kernel_initializer=_init(initializer_range),
                                               name="intermediate")
        self.output_dense = keras.layers.Dense(hidden_size, kernel_initializer=_init(initializer_range),
                                               name="output")
        self.output_dropout = keras.layers.Dropout(hidden_dropout, name="output_dropout")
        self.output_norm = keras.layers.LayerNormalization(epsilon=layer_norm_eps, name="output_norm")

    def call(self, hidden, mask_bias, training=False):
        context, probs, q, k = self.attention(hidden, mask_bias, training=training)
        attended = self.attention_dropout(self.attention_output(context), training=training)
        hidden = self.attention_norm(hidden + attended)  # [B, T, H]
        ffn = self.output_dense(gelu(self.intermediate(hidden)))  # [B, T, H]
        hidden = self.output_norm(hidden + self.output_dropout(ffn, training=training))
        return hidden, probs, q, k


@keras.saving.register_keras_serializable(package="textmatch")
class BertEncoder(keras.Model):
    """BERT-architecture encoder (also RoBERTa-wwm and MiniLM, which share it).

    Args:
        vocab_size: number of WordPiece / character tokens.
        hidden_size: width H of every layer.
        num_layers: number of transformer blocks.
        num_heads: attention heads N per block (H must be a multiple of N).
        intermediate_size: width of the feed-forward layer.
        max_position: number of learned position embeddings.
        type_vocab_size: number of segment ids (2 for BERT: text a / text b).
        hidden_dropout: dropout on embeddings and sublayer outputs.
        attention_dropout: dropout on attention probabilities.
        layer_norm_eps: LayerNorm epsilon (1e-12 in Google's checkpoints).
        initializer_range: stddev of the truncated-normal initialiser.
        use_pooler: build BERT's dense+tanh pooler on [CLS] (`pooler_output`).

    Inputs: a dict with `input_ids` [B, T] and optionally `token_type_ids`,
    `attention_mask` (1 = token, 0 = padding) and `position_ids` (VIRT's
    teacher layout places text b at its real positions after padding of a).

    Returns a dict with HF-style keys: `last_hidden_state` [B, T, H],
    `pooler_output` [B, H] (when `use_pooler`), and on request
    `hidden_states` (tuple of L+1: embeddings then each layer, [B, T, H]),
    `attentions` (tuple of L, [B, N, T, T]), and `query_states` /
    `key_states` (tuple of L, [B, N, T, D], the projections before scaling).

    Example:
    >>> enc = BertEncoder(vocab_size=100, hidden_size=32, num_layers=2,
    ...                   num_heads=4, intermediate_size=64)
    >>> out = enc({"input_ids": tf.constant([[2, 7, 9, 3, 0]]),
    ...            "attention_mask": tf.constant([[1, 1, 1, 1, 0]])},
    ...           output_attentions=True)
    >>> out["last_hidden_state"].shape, out["attentions"][0].shape
    (TensorShape([1, 5, 32]), TensorShape([1, 4, 5, 5]))
    """

    def __init__(self, vocab_size, hidden_size=768, num_layers=12, num_heads=12,
                 intermediate_size=3072, max_position=512, type_vocab_size=2,
                 hidden_dropout=0.1, attention_dropout=0.1, layer_norm_eps=1e-12,
                 initializer_range=0.02, use_pooler=True, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.intermediate_size = intermediate_size
        self.max_position = max_position
        self.type_vocab_size = type_vocab_size
        self.hidden_dropout = hidden_dropout
        self.attention_dropout = attention_dropout
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.use_pooler = use_pooler

        # === Embeddings ===
        emb = dict(output_dim=hidden_size, embeddings_initializer=_init(initializer_range))
        self.word_embeddings = keras.layers.Embedding(vocab_size, name="word_embeddings", **emb)
        self.position_embeddings = keras.layers.Embedding(max_position, name="position_embeddings", **emb)
        self.token_type_embeddings = keras.layers.Embedding(type_vocab_size, name="token_type_embeddings", **emb)
        self.embeddings_norm = keras.layers.LayerNormalization(epsilon=layer_norm_eps, name="embeddings_norm")
        self.embeddings_dropout = keras.layers.Dropout(hidden_dropout, name="embeddings_dropout")

        # === Transformer blocks ===
        self.encoder_layers = [
            TransformerLayer(hidden_size, num_heads, intermediate_size, hidden_dropout,
                             attention_dropout, layer_norm_eps, initializer_range, name=f"layer_{i}")
            for i in range(num_layers)
        ]

        # === Pooler ([CLS] -> dense -> tanh), as in BERT's next-sentence head ===
        self.pooler = (keras.layers.Dense(hidden_size, activation="tanh",
                                          kernel_initializer=_init(initializer_range), name="pooler")
                       if use_pooler else None)

    def build_for_loading(self):
        """Create every variable by calling the encoder once on a dummy batch."""
        if not self.built or not self.weights:
            self({"input_ids": tf.zeros([1, 2], tf.int32)})
        return self

    def call(self, inputs, output_hidden_states=False, output_attentions=False,
             output_qk=False, training=False):
        input_ids = tf.cast(inputs["input_ids"], tf.int32)  # [B, T]
        mask = inputs.get("attention_mask")
        mask = tf.ones_like(input_ids) if mask is None else tf.cast(mask, tf.int32)
        token_type_ids = inputs.get("token_type_ids")
        token_type_ids = tf.zeros_like(input_ids) if token_type_ids is None else tf.cast(token_type_ids, tf.int32)
        position_ids = inputs.get("position_ids")
        if position_ids is None:
            position_ids = tf.broadcast_to(tf.range(tf.shape(input_ids)[1])[None, :], tf.shape(input_ids))

        hidden = (self.word_embeddings(input_ids)
                  + self.position_embeddings(tf.cast(position_ids, tf.int32))
                  + self.token_type_embeddings(token_type_ids))  # [B, T, H]
        hidden = self.embeddings_dropout(self.embeddings_norm(hidden), training=training)

        # Additive float32 bias: 0 on tokens, -1e9 on padding keys.  [B, 1, 1, T]
        # Two expand_dims rather than mask[:, None, None, :]: tf2onnx makes these two Unsqueeze
        # (the slice form adds a no-op Slice), the mask path onnxruntime's attention fusion
        # matches (export/fusion.py).
        mask_bias = (1.0 - tf.cast(tf.expand_dims(tf.expand_dims(mask, 1), 1), tf.float32)) * -1e9

        all_hidden, all_probs, all_q, all_k = [hidden], [], [], []
        for layer in self.encoder_layers:
            hidden, probs, q, k = layer(hidden, mask_bias, training=training)
            all_hidden.append(hidden)
            all_probs.append(probs)
            all_q.append(q)
            all_k.append(k)

        out = {"last_hidden_state": hidden}
        if self.pooler is not None:
            out["pooler_output"] = self.pooler(hidden[:, 0])  # [B, H]
        if output_hidden_states:
            out["hidden_states"] = tuple(all_hidden)
        if output_attentions:
            out["attentions"] = tuple(all_probs)
        if output_qk:
            out["query_states"] = tuple(all_q)
            out["key_states"] = tuple(all_k)
        return out

    def get_config(self):
        config = super().get_config()
        config.update(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, num_layers=self.num_layers,
            num_heads=self.num_heads, intermediate_size=self.intermediate_size,
            max_position=self.max_position, type_vocab_size=self.type_vocab_size,
            hidden_dropout=self.hidden_dropout, attention_dropout=self.attention_dropout,
            layer_norm_eps=self.layer_norm_eps, initializer_range=self.initializer_range,
            use_pooler=self.use_pooler,
        )
        return config

    def architecture(self):
        """The constructor arguments only (what a model directory stores)."""
        config = self.get_config()
        return {k: config[k] for k in (
            "vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
            "max_position", "type_vocab_size", "hidden_dropout", "attention_dropout",
            "layer_norm_eps", "initializer_range", "use_pooler")}


def pool(hidden, mask, mode="mean"):
    """Pool token states [B, T, H] into [B, H] over valid tokens (mask [B, T]).

    `cls` takes the first token; `mean` and `max` ignore padding.
    """
    if mode == "cls":
        return hidden[:, 0]
    m = tf.cast(mask, hidden.dtype)[:, :, None]  # [B, T, 1]
    if mode == "mean":
        return tf.reduce_sum(hidden * m, axis=1) / tf.maximum(tf.reduce_sum(m, axis=1), 1.0)
    if mode == "max":
        return tf.reduce_max(hidden + (1.0 - m) * tf.cast(-1e4, hidden.dtype), axis=1)
    raise ValueError(f"unknown pooling {mode!r} (expected cls, mean or max)")
