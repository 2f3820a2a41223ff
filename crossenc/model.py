"""Cross-encoder (interaction model): `[CLS] a [SEP] b [SEP]` -> encoder -> pool -> classifier.

The "Tiny RoBERTa" of the original project, the teacher of distillation and
of VIRT (which uses mean pooling).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from modeling.encoder import BertEncoder, pool
from modeling.task_model import PAIR_IDS, PairModel, ids_spec, pair_dummy_inputs


def as_encoder(encoder):
    """Accept a built `BertEncoder` or its architecture dict (from a saved config)."""
    return encoder if isinstance(encoder, BertEncoder) else BertEncoder(**encoder, name="encoder")


@keras.saving.register_keras_serializable(package="textmatch")
class CrossEncoder(PairModel):
    """Sentence-pair classifier over one jointly encoded input.

    Args:
        encoder: a `BertEncoder` (or its `architecture()` dict).
        num_labels: number of classes.
        pooling: `cls` (BERT's tanh pooler on [CLS] when the encoder has one,
            as HF's `BertForSequenceClassification`), `mean` or `max`.
        dropout: dropout before the classifier.
    """

    kind = "cross_encoder"
    servable = True
    reranks = True

    def __init__(self, encoder, num_labels, pooling="cls", dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        self.encoder = as_encoder(encoder)
        self.num_labels = num_labels
        self.pooling = pooling
        self.dropout_rate = dropout
        self.dropout = keras.layers.Dropout(dropout, name="classifier_dropout")
        # float32 logits keep the softmax stable under mixed precision.
        self.classifier = keras.layers.Dense(num_labels, dtype="float32", name="classifier",
                                             kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02))

    def featurize(self, tokenizer, texts_a, texts_b, max_len):
        return tokenizer.encode_pairs(texts_a, texts_b, max_len)

    def forward(self, inputs, training=False, output_hidden_states=False):
        """Logits [B, C] and the encoder's outputs (distillation reads its hidden states)."""
        out = self.encoder(inputs, training=training, output_hidden_states=output_hidden_states)
        return self.head(out, inputs["attention_mask"], training), out

    def head(self, encoder_out, attention_mask, training=False):
        """Logits [B, C] from the encoder's outputs (VIRT reuses the teacher's attention pass)."""
        if self.pooling == "cls" and "pooler_output" in encoder_out:
            pooled = encoder_out["pooler_output"]  # [B, H]
        else:
            pooled = pool(encoder_out["last_hidden_state"], attention_mask, self.pooling)  # [B, H]
        return self.classifier(self.dropout(pooled, training=training))

    def call(self, inputs, training=False):
        return self.forward(inputs, training)[0]  # [B, C]

    def dummy_inputs(self):
        return pair_dummy_inputs()

    def serving_functions(self):
        @tf.function(autograph=False, input_signature=[ids_spec(n) for n in PAIR_IDS])
        def predict_ids(input_ids, token_type_ids, attention_mask):
            return self.reference_outputs({"input_ids": input_ids, "token_type_ids": token_type_ids,
                                           "attention_mask": attention_mask})
        return {"predict_ids": predict_ids}

    def hf_head(self):
        """BertForSequenceClassification is tanh(dense([CLS])) -> linear: our head with `cls`
        pooling over the encoder's pooler, and only that."""
        if self.pooling != "cls" or self.encoder.pooler is None:
            what = (f"model.pooling={self.pooling}" if self.pooling != "cls"
                    else "model.pooling=cls on an encoder without a pooler (its raw [CLS] state)")
            raise ValueError(f"{what} has no BertForSequenceClassification equivalent (its head is BERT's tanh "
                             "pooler on [CLS], then a linear layer): export it without hf, or train it with "
                             "model.pooling=cls from a checkpoint with a pooler")
        return {"architecture": "BertForSequenceClassification",
                "classifier": (self.classifier.kernel.numpy(), self.classifier.bias.numpy())}

    def get_config(self):
        return {**super().get_config(), "encoder": self.encoder.architecture(),
                "num_labels": self.num_labels, "pooling": self.pooling, "dropout": self.dropout_rate}
