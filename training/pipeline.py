"""Tokenised features -> `tf.data` batches padded per batch, bucketed by length.

Features are dicts of ragged id lists (`input_ids`, `x_ids`, ...) and of
fixed-size numeric arrays (labels, cached teacher logits). Every token-id key
(`input_ids`, `x_ids`, ..., not segment or position ids) gets a matching mask (`input_ids` -> `attention_mask`, `x_ids` -> `x_mask`),
so models never guess padding from the pad id.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

# Length buckets keep padding low without a retrace for every batch shape.
BUCKETS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def mask_key(key):
    return "attention_mask" if key == "input_ids" else key[: -len("ids")] + "mask"


def _ragged(lists):
    lengths = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
    flat = np.fromiter((t for x in lists for t in x), dtype=np.int32, count=int(lengths.sum()))
    return tf.RaggedTensor.from_row_lengths(flat, lengths)


def _split(features):
    ragged = {k: v for k, v in features.items() if isinstance(v, list) and (not v or isinstance(v[0], (list, tuple)))}
    dense = {k: np.asarray(v) for k, v in features.items() if k not in ragged}
    return ragged, dense


def example_lengths(features):
    ragged, _ = _split(features)
    return np.max([[len(x) for x in v] for v in ragged.values()], axis=0)


def make_dataset(features, labels=None, batch_size=32, shuffle=False, seed=0, epoch=0,
                 drop_remainder=False, skip_batches=0, bucket=True, transform=None):
    """Build one epoch of batches `(x, y)` (or `x` when `labels` is None).

    Shuffling is seeded by `(seed, epoch)`, so an interrupted epoch can be
    rebuilt identically and `skip_batches` resumes it exactly. `transform`
    (e.g. MLM masking) maps each padded batch, with its own seed per epoch.
    """
    ragged, dense = _split(features)
    n = len(next(iter(ragged.values())))
    order = np.arange(n)
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(n)
    if drop_remainder:
        # Drop from the shuffled order, before grouping by length, so no example is always left out.
        order = order[: n - n % batch_size]
        n = len(order)
    if bucket:
        # Sort shuffled examples by bucket inside windows of 50 batches, then shuffle the
        # batches: padding stays low and every epoch still sees a new order.
        lengths = example_lengths(features)[order]
        bucket_of = np.searchsorted(BUCKETS, lengths)
        window = batch_size * 50
        chunks = []
        for start in range(0, n, window):
            idx = order[start:start + window]
            chunks.append(idx[np.argsort(bucket_of[start:start + window], kind="stable")])
        order = np.concatenate(chunks) if chunks else order
        batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
        if shuffle:
            perm = np.random.default_rng([seed, epoch, 1]).permutation(len(batches))
            batches = [batches[i] for i in perm]
        order = np.concatenate(batches) if batches else order[:0]

    tensors = {k: tf.gather(_ragged(v), order) for k, v in ragged.items()}
    tensors.update({k: v[order] for k, v in dense.items()})
    y = None if labels is None else np.asarray(labels)[order]
    ds = tf.data.Dataset.from_tensor_slices((tensors, y) if y is not None else tensors)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(_pad_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if transform is not None:
        # Stateless per-batch seeds: batch i of epoch e always gets the same draw.
        ds = ds.enumerate().map(lambda i, b: transform(b, tf.stack([tf.cast(seed * 1000 + epoch, tf.int64), i])),
                                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if skip_batches:
        ds = ds.skip(skip_batches)
    return ds.prefetch(tf.data.AUTOTUNE)


def _pad_batch(x, y=None):
    out = {}
    for k, v in x.items():
        if isinstance(v, tf.RaggedTensor):
            out[k] = v.to_tensor(0)
            if k.endswith("ids") and not k.endswith(("type_ids", "position_ids")):
                out[mask_key(k)] = tf.cast(tf.ones_like(v).to_tensor(0), tf.int32)
        else:
            out[k] = v
    return out if y is None else (out, y)


def num_batches(n, batch_size, drop_remainder):
    return n // batch_size if drop_remainder else -(-n // batch_size)
