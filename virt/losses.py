"""VIRT's attention-map distillation loss (Li et al., EMNLP 2022, Eq. 3-4).

What it is for: a siamese student never attends from text x to text y. VIRT
makes it *compute* those missing maps from its own per-layer projections,
`M~_xy = softmax(Q~_x K~_y^T / sqrt(d))`, and pulls them towards the blocks a
cross-encoder teacher actually computed on the joint input:

    L_virt = 1/(2L) sum_l ( ||M~_xy - M_xy||_F / m + ||M~_yx - M_yx||_F / n )

per example (m valid x tokens, n valid y tokens after y's [CLS]), averaged
over heads and batch. Training only: inference keeps the bi-encoder's cost.

Inputs (one layer; B batch, N heads, Lx/Ly padded lengths, D head size):
    qx, kx: student query/key states of x, [B, N, Lx, D]
    qy, ky: student query/key states of y, [B, N, Ly, D] (position 0 = y's [CLS])
    x_mask [B, Lx], y_mask [B, Ly]: 1 on tokens, 0 on padding
    teacher_probs: [B, Nt, Lx + Ly - 1, Lx + Ly - 1], the teacher's attention on
        `x (padded to Lx) ++ y[1:] (padded to Ly - 1)` (see `teacher_inputs`)

Example:
    >>> per_layer = [virt_layer_loss(qx, kx, qy, ky, xm, ym, P) for ...]   # doctest: +SKIP
    >>> loss = tf.add_n(per_layer) / (2 * len(per_layer))                  # doctest: +SKIP
"""

from __future__ import annotations

import math

import tensorflow as tf

from modeling.task_model import resolve_layer_map

_NEG = -1e9


def teacher_inputs(x_ids, x_mask, y_ids, y_mask):
    """The cross-encoder's view of a VIRT batch: `x ++ y[1:]` with real positions.

    x is padded to Lx and y[1:] to Ly - 1 separately, so every block is a fixed
    slice; explicit position ids (`0..Lx-1`, then `m_b + j`) and the mask make
    this exactly the contiguous `[CLS] x [SEP] y [SEP]` computation.
    """
    y_ids, y_mask = y_ids[:, 1:], y_mask[:, 1:]
    m = tf.reduce_sum(tf.cast(x_mask, tf.int32), axis=1, keepdims=True)  # [B, 1]
    lx, ly = tf.shape(x_ids)[1], tf.shape(y_ids)[1]
    pos_x = tf.broadcast_to(tf.range(lx)[None, :], tf.shape(x_ids))
    pos_y = m + tf.range(ly)[None, :]
    return {
        "input_ids": tf.concat([x_ids, y_ids], axis=1),
        "attention_mask": tf.concat([x_mask, y_mask], axis=1),
        "token_type_ids": tf.concat([tf.zeros_like(x_ids), tf.cast(y_mask, x_ids.dtype)], axis=1),
        "position_ids": tf.concat([pos_x, pos_y * tf.cast(y_mask, tf.int32)], axis=1),
    }


def _masked_softmax(scores, key_mask):
    """Softmax over the last axis restricted to `key_mask` ([B, 1, 1, K])."""
    return tf.nn.softmax(scores + (1.0 - key_mask) * _NEG, axis=-1)


def _renormalise(block, key_mask):
    """A teacher block's rows re-normalised over its own columns (= softmax over that block)."""
    block = block * key_mask
    return block / tf.maximum(tf.reduce_sum(block, axis=-1, keepdims=True), 1e-12)


def _frobenius(diff):
    """||.||_F over the last two axes, with a zero (not NaN) gradient at 0."""
    sq = tf.reduce_sum(tf.square(diff), axis=[-2, -1])
    safe = tf.where(sq > 0, sq, tf.ones_like(sq))
    return tf.where(sq > 0, tf.sqrt(safe), tf.zeros_like(sq))


def virtual_maps(qx, kx, qy, ky, x_mask, y_mask):
    """The student's virtual interaction maps (Eq. 3) from its own Q/K of one layer.

    `M~_xy = softmax(Q~_x K~_y^T / sqrt(d))` with x queries over y[1:] keys and
    `M~_yx` with y[1:] queries over x keys; padded keys get 0 probability.
    Returns float32 `(s_xy [B, N, Lx, Ly-1], s_yx [B, N, Ly-1, Lx])`; rows of
    padded queries are meaningless (mask them with x_mask / y_mask[:, 1:]).
    """
    f32 = tf.float32
    qx, kx, qy, ky = (tf.cast(t, f32) for t in (qx, kx, qy, ky))
    xm = tf.cast(x_mask, f32)  # [B, Lx]
    ym = tf.cast(y_mask, f32)[:, 1:]  # [B, Ly-1]: y tokens after [CLS]
    scale = 1.0 / math.sqrt(qx.shape[-1])
    s_xy = _masked_softmax(tf.matmul(qx, ky[:, :, 1:], transpose_b=True) * scale, ym[:, None, None, :])
    s_yx = _masked_softmax(tf.matmul(qy[:, :, 1:], kx, transpose_b=True) * scale, xm[:, None, None, :])
    return s_xy, s_yx


def teacher_maps(teacher_probs, x_mask, y_mask):
    """The teacher's cross blocks of its joint attention on `x ++ y[1:]`, each row renormalised
    over its own block's valid columns: `(t_xy [B, Nt, Lx, Ly-1], t_yx [B, Nt, Ly-1, Lx])`."""
    xm = tf.cast(x_mask, tf.float32)
    ym = tf.cast(y_mask, tf.float32)[:, 1:]
    lx = tf.shape(xm)[1]
    p = tf.cast(teacher_probs, tf.float32)
    t_xy = _renormalise(p[:, :, :lx, lx:], ym[:, None, None, :])
    t_yx = _renormalise(p[:, :, lx:, :lx], xm[:, None, None, :])
    return t_xy, t_yx


def virt_layer_loss(qx, kx, qy, ky, x_mask, y_mask, teacher_probs):
    """`||M~_xy - M_xy||_F / m + ||M~_yx - M_yx||_F / n` for one layer, mean over heads and batch."""
    f32 = tf.float32
    xm = tf.cast(x_mask, f32)  # [B, Lx]
    ym = tf.cast(y_mask, f32)[:, 1:]  # [B, Ly-1]: y tokens after [CLS]
    key_x, key_y = xm[:, None, None, :], ym[:, None, None, :]  # [B, 1, 1, K]
    row_x, row_y = xm[:, None, :, None], ym[:, None, :, None]  # [B, 1, R, 1]

    s_xy, s_yx = virtual_maps(qx, kx, qy, ky, x_mask, y_mask)  # student: [B, N, Lx, Ly-1], [B, N, Ly-1, Lx]
    t_xy, t_yx = teacher_maps(teacher_probs, x_mask, y_mask)  # teacher: [B, Nt, Lx, Ly-1], [B, Nt, Ly-1, Lx]

    if s_xy.shape[1] != t_xy.shape[1]:
        s_xy, s_yx, t_xy, t_yx = (tf.reduce_mean(t, axis=1, keepdims=True) for t in (s_xy, s_yx, t_xy, t_yx))
    m = tf.reduce_sum(xm, axis=1)[:, None]  # [B, 1]
    n = tf.reduce_sum(ym, axis=1)[:, None]
    d_xy = _frobenius((s_xy - t_xy) * row_x * key_y) / tf.maximum(m, 1.0)  # [B, heads]
    d_yx = _frobenius((s_yx - t_yx) * row_y * key_x) / tf.maximum(n, 1.0)
    return tf.reduce_mean(d_xy + d_yx)


SCHEDULES = ("constant", "decay")


def weight_scale(schedule, step, total_steps):
    """The factor on `virt.interaction_weight` at optimizer step `step` of `total_steps`:
    `constant` 1; `decay` linear from 1 at step 0 to 0 at the last step, so the final steps
    train on the cross-entropy alone."""
    if schedule not in SCHEDULES:
        raise ValueError(f"virt.weight_schedule={schedule!r}: expected one of {', '.join(SCHEDULES)}")
    if schedule == "constant" or step is None:
        return tf.constant(1.0)
    frac = tf.cast(step, tf.float32) / float(max(int(total_steps), 1))
    return tf.clip_by_value(1.0 - frac, 0.0, 1.0)


def select_layers(spec, num_layers):
    """Student layers to distil: `all`, `first-k`, `last-k` or `skip-k` (every k-th: k-1, 2k-1, ...)."""
    if spec == "all":
        return list(range(num_layers))
    kind, _, k = spec.partition("-")
    if kind not in ("first", "last", "skip") or not k.isdigit():
        raise ValueError(f"virt.layers={spec!r}: expected all, first-k, last-k or skip-k")
    k = int(k)
    if not 1 <= k <= num_layers:
        raise ValueError(f"virt.layers={spec!r}: k must be in 1..{num_layers}")
    if kind == "first":
        return list(range(k))
    if kind == "last":
        return list(range(num_layers - k, num_layers))
    if kind == "skip":
        return [i for i in range(num_layers) if (i + 1) % k == 0]
    raise ValueError(f"virt.layers={spec!r}: expected all, first-k, last-k or skip-k")


def uniform_layer_map(student_layers, teacher_layers):
    """Student layer l -> teacher layer f(l): the same relative depth (identity when equal)."""
    return resolve_layer_map(None, student_layers, teacher_layers, "layer_map")


POSITIONS = ("all", "content")


def content_masks(x_mask, y_mask):
    """The masks without the special tokens: x's [CLS] (position 0) and each text's final [SEP]
    (its last valid position). y's [CLS] stays set: `virt_layer_loss` drops y[0] itself.

    Masks are right-padded `[CLS] t [SEP]` rows (`PairTokenizer.encode_texts`)."""
    def without_last(mask):
        mask = tf.cast(mask, tf.int32)
        last = tf.reduce_sum(mask, axis=1, keepdims=True) - 1  # [B, 1]
        return mask * tf.cast(tf.range(tf.shape(mask)[1])[None, :] != last, tf.int32)

    xm = without_last(x_mask)
    xm = xm * tf.cast(tf.range(tf.shape(xm)[1])[None, :] > 0, tf.int32)
    return xm, without_last(y_mask)


def virt_loss(student_x, student_y, x_mask, y_mask, teacher_attentions, layers, layer_map, positions="all"):
    """L_virt over the chosen student `layers`: 1/(2L) * sum of `virt_layer_loss`.

    `student_x` / `student_y` are encoder outputs with `query_states` and
    `key_states`; `teacher_attentions` the teacher's per-layer probabilities.
    `positions="content"` leaves the special tokens out of both maps (rows and columns, the
    teacher's blocks renormalised over content columns, m and n counting content tokens).
    """
    if positions not in POSITIONS:
        raise ValueError(f"virt.positions={positions!r}: expected one of {', '.join(POSITIONS)}")
    if positions == "content":
        x_mask, y_mask = content_masks(x_mask, y_mask)
    per_layer = [virt_layer_loss(student_x["query_states"][l], student_x["key_states"][l],
                                 student_y["query_states"][l], student_y["key_states"][l],
                                 x_mask, y_mask, teacher_attentions[layer_map[l]])
                 for l in layers]
    return tf.add_n(per_layer) / (2.0 * len(per_layer))
