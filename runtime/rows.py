"""Request rows: texts tokenised as in training, one dict of int32 arrays per row.

A row holds one example's unpadded inputs of an ids-level function (runtime.backends); the
batcher (runtime.batching) pads rows into batches. Serve, search and bench build rows here.
"""

from __future__ import annotations

import re

import numpy as np

# JSON's "\ud800" escapes and Python strings can hold lone surrogates, which are not text: the tokenizer
# refuses them with a type error about its input union. Callers check first and say where the bad text is.
SURROGATE = re.compile("[\ud800-\udfff]")


def invalid_text(text):
    """Why the string `text` cannot be tokenised, or None: the server's and the Python API's words."""
    if (bad := SURROGATE.search(text)) is not None:
        return f"not valid Unicode text: a lone surrogate \\u{ord(bad.group()):04x} at character {bad.start()}"
    return None


def text_rows(backend, texts):
    """`[CLS] t [SEP]` rows for encode_ids, tokenised as in training."""
    return [{"input_ids": np.asarray(ids, np.int32), "attention_mask": np.ones(len(ids), np.int32)}
            for ids in backend.tokenizer.encode_texts(texts, backend.max_len)]


def pair_rows(backend, a, b):
    """predict_ids rows for text pairs, tokenised as in training: one joint row per pair
    (`input_ids`, `token_type_ids`, `attention_mask`) when the model's kind reads the pair as
    one input, else each text alone (`x_ids`, `x_mask`, `y_ids`, `y_mask`)."""
    if backend.spec.joint_pair():
        enc = backend.tokenizer.encode_pairs(a, b, backend.max_len)
        return [{"input_ids": np.asarray(ids, np.int32), "token_type_ids": np.asarray(t, np.int32),
                 "attention_mask": np.ones(len(ids), np.int32)}
                for ids, t in zip(enc["input_ids"], enc["token_type_ids"])]
    return [{"x_ids": x["input_ids"], "x_mask": x["attention_mask"],
             "y_ids": y["input_ids"], "y_mask": y["attention_mask"]}
            for x, y in zip(text_rows(backend, a), text_rows(backend, b))]


def pad_rows(rows, dtype, pad_value=0):
    """Stack arrays of shape [L_i, ...] into [B, max L, ...], padded with `pad_value`."""
    rows = [np.asarray(r) for r in rows]
    width = max((r.shape[0] for r in rows), default=0)
    out = np.full((len(rows), width) + rows[0].shape[1:], pad_value, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, :r.shape[0]] = r
    return out
