"""Masked-language-model pre-training (BERT's MLM) for domains without a checkpoint.

Masking runs in `tf.data` (`batch_transform`), with a fresh draw per epoch:
15% of the real tokens are selected (never [CLS]/[SEP]/[PAD]); of those 80%
become [MASK], 10% a random token, 10% stay. The loss is cross-entropy on the
selected positions only. The output layer is tied to the word embeddings.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from crossenc.model import as_encoder
from modeling.encoder import gelu
from modeling.task_model import PairModel, pair_dummy_inputs


def mask_tokens(ids, maskable, seed, vocab_size, mask_id, rate=0.15, word_starts=None):
    """BERT masking of a padded batch `ids` [B, T].

    Args:
        maskable: [B, T] 1 where a token may be selected (real, non-special tokens).
        seed: stateless seed, shape [2].
        word_starts: [B, T] 1 on the first piece of each word: whole-word masking
            selects words (all their pieces) instead of single pieces.
    Returns `(masked_ids, labels)` with labels = original id on selected positions, -1 elsewhere.
    """
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 3)
    maskable = tf.cast(maskable, tf.bool)
    if word_starts is None:
        selected = (tf.random.stateless_uniform(tf.shape(ids), seeds[0]) < rate) & maskable
    else:
        # One draw per word, spread over its pieces: word index = running count of word starts.
        starts = tf.cast(word_starts, tf.int32) * tf.cast(maskable, tf.int32)
        word = tf.maximum(tf.cumsum(starts, axis=1) - 1, 0)  # [B, T]
        draw = tf.random.stateless_uniform(tf.shape(ids), seeds[0]) < rate  # one per word slot
        selected = tf.gather(draw, word, batch_dims=1) & maskable
    roll = tf.random.stateless_uniform(tf.shape(ids), seeds[1])
    random_ids = tf.random.stateless_uniform(tf.shape(ids), seeds[2], minval=0, maxval=vocab_size, dtype=tf.int32)
    ids = tf.cast(ids, tf.int32)
    masked = tf.where(selected & (roll < 0.8), tf.fill(tf.shape(ids), mask_id), ids)
    masked = tf.where(selected & (roll >= 0.8) & (roll < 0.9), random_ids, masked)
    labels = tf.where(selected, ids, -tf.ones_like(ids))
    return masked, labels


@keras.saving.register_keras_serializable(package="textmatch")
class MaskedLM(PairModel):
    """Encoder + BERT's MLM head (dense -> GELU -> LayerNorm -> tied output embedding + bias).

    Args:
        encoder: `BertEncoder` or its architecture dict.
        special_ids: token ids never selected for masking ([CLS], [SEP], [PAD], [MASK], [UNK]).
        mask_id: id of [MASK].
        whole_word: select whole words (features carry `word_starts`).
    """

    kind = "mlm"

    def __init__(self, encoder, special_ids=(0, 1, 2, 3, 4), mask_id=4, rate=0.15, whole_word=False, **kwargs):
        super().__init__(**kwargs)
        self.encoder = as_encoder(encoder)
        self.special_ids, self.mask_id, self.rate, self.whole_word = list(special_ids), int(mask_id), rate, whole_word
        h = self.encoder.hidden_size
        self.transform = keras.layers.Dense(h, activation=gelu, name="mlm_transform",
                                            kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02))
        self.transform_norm = keras.layers.LayerNormalization(epsilon=self.encoder.layer_norm_eps, name="mlm_norm")

    def build(self, input_shape=None):
        # float32 logits + a float32 bias: under a mixed policy Keras would hand call() a bf16/fp16 copy
        self.output_bias = self.add_weight(name="mlm_output_bias", shape=(self.encoder.vocab_size,),
                                           initializer="zeros", autocast=False)
        super().build(input_shape)

    def featurize(self, tokenizer, texts_a, texts_b, max_len):
        """Single texts (texts_b None) or pairs; `word_starts` marks the first piece of each word."""
        feats = (tokenizer.encode_texts(texts_a, max_len) if texts_b is None
                 else tokenizer.encode_pairs(texts_a, texts_b, max_len))
        ids = feats if texts_b is None else feats["input_ids"]
        out = {"input_ids": ids} if texts_b is None else dict(feats)
        if self.whole_word:
            vocab = tokenizer.convert_ids_to_tokens
            out["word_starts"] = [[0 if t.startswith("##") else 1 for t in vocab(row)] for row in ids]
        return out

    def batch_transform(self, batch, seed):
        ids = batch["input_ids"]
        maskable = tf.cast(batch["attention_mask"], tf.bool)
        for s in self.special_ids:
            maskable &= tf.not_equal(ids, s)
        masked, labels = mask_tokens(ids, maskable, seed, self.encoder.vocab_size, self.mask_id, self.rate,
                                     batch.get("word_starts") if self.whole_word else None)
        x = {k: v for k, v in batch.items() if k != "word_starts"}
        x["input_ids"] = masked
        return x, labels

    def call(self, inputs, training=False):
        h = self.encoder(inputs, training=training)["last_hidden_state"]  # [B, T, H]
        h = self.transform_norm(self.transform(h))
        table = tf.cast(self.encoder.word_embeddings.embeddings, h.dtype)  # tied: [V, H]
        logits = tf.einsum("bth,vh->btv", h, table)  # [B, T, V]
        return tf.cast(logits, tf.float32) + self.output_bias

    def loss_terms(self, x, y, y_pred):
        return {"mlm": masked_lm_loss(y, y_pred)}

    def dummy_inputs(self):
        return pair_dummy_inputs()

    def get_config(self):
        return {**super().get_config(), "encoder": self.encoder.architecture(), "special_ids": self.special_ids,
                "mask_id": self.mask_id, "rate": self.rate, "whole_word": self.whole_word}


def masked_lm_loss(labels, logits):
    """Mean cross-entropy over selected positions (labels >= 0); padding and unselected tokens add nothing."""
    labels = tf.cast(labels, tf.int32)
    sel = labels >= 0
    per_token = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.maximum(labels, 0), logits=logits)
    w = tf.cast(sel, tf.float32)
    return tf.reduce_sum(per_token * w) / tf.maximum(tf.reduce_sum(w), 1.0)
