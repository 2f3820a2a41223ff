"""VIRT: the distillation loss against hand-worked values, masking, gradient flow, the teacher
layout, the encode/score split, ablation flags, learning, the virt task and virt-plot.

Every model here is tiny (vocab ~60, hidden 32, 4 heads, 2-3 layers) and built once per module.
"""

import json
import math

import keras
import numpy as np
import scipy.special
import pytest
import tensorflow as tf

from modeling.encoder import BertEncoder
from modeling.model_dir import load_model_dir, save_model_dir
from modeling.tokenization import PairTokenizer
from virt.losses import (content_masks, select_layers, teacher_inputs, teacher_maps, uniform_layer_map,
                         virt_layer_loss, virt_loss, weight_scale)
from virt.model import VirtModel, VirtTraining

WORDS = ("the a an cat dog bird man woman child park street house car bus train red big small old new "
         "sat ran jumped walked played sang is was on in at to near with under over today now quickly "
         "guitar music song crowd stage").split()
H, HEADS, INTER = 32, 4, 64


def np_softmax(s, axis=-1):
    e = np.exp(s - s.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def tiny_encoder(layers, name="encoder", heads=HEADS, dropout=0.0, init=0.02, vocab=64):
    return BertEncoder(vocab_size=vocab, hidden_size=H, num_layers=layers, num_heads=heads, intermediate_size=INTER,
                       max_position=64, hidden_dropout=dropout, attention_dropout=dropout,
                       initializer_range=init, name=name)


def pad(lists, value=0):
    t = max(len(x) for x in lists)
    ids = np.full((len(lists), t), value, np.int32)
    mask = np.zeros((len(lists), t), np.int32)
    for i, x in enumerate(lists):
        ids[i, :len(x)], mask[i, :len(x)] = x, 1
    return ids, mask


def virt_batch(x_lists, y_lists):
    x_ids, x_mask = pad(x_lists)
    y_ids, y_mask = pad(y_lists)
    return {"x_ids": x_ids, "x_mask": x_mask, "y_ids": y_ids, "y_mask": y_mask}


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    vocab = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n", encoding="utf-8")
    t = PairTokenizer(vocab)
    assert t.vocab_size <= 64
    return t


@pytest.fixture(scope="module")
def texts(tok):
    xs = ["the man played the guitar on the stage", "a dog ran", "the old woman sang a song today"]
    ys = ["a man is playing music", "the big red dog ran quickly in the park", "a child sang"]
    return tok.encode_virt(xs, ys, max_len=24)


@pytest.fixture(scope="module")
def teacher_enc():
    keras.utils.set_random_seed(1)
    enc = tiny_encoder(3, name="teacher_encoder", heads=2, init=0.2)  # peaky maps, other head count
    enc.build_for_loading()
    return enc


# --------------------------------------------------------------------------- the loss, by hand

def reference_layer_loss(qx, kx, qy, ky, x_mask, y_mask, p):
    """numpy, example by example, from the losses.py docstring formula (valid tokens only)."""
    total, count = 0.0, 0
    for b in range(qx.shape[0]):
        m, n = int(x_mask[b].sum()), int(y_mask[b].sum()) - 1
        lx = x_mask.shape[1]
        d = qx.shape[-1]
        s_xy = np_softmax(qx[b, :, :m] @ ky[b, :, 1:n + 1].transpose(0, 2, 1) / math.sqrt(d))
        s_yx = np_softmax(qy[b, :, 1:n + 1] @ kx[b, :, :m].transpose(0, 2, 1) / math.sqrt(d))
        t_xy = p[b, :, :m, lx:lx + n]
        t_yx = p[b, :, lx:lx + n, :m]
        t_xy = t_xy / t_xy.sum(-1, keepdims=True)
        t_yx = t_yx / t_yx.sum(-1, keepdims=True)
        for h in range(qx.shape[1]):
            total += np.linalg.norm(s_xy[h] - t_xy[h]) / m + np.linalg.norm(s_yx[h] - t_yx[h]) / n
            count += 1
    return total / count


def test_layer_loss_equals_value_worked_by_hand():
    # One example, one head, head size 1 (so scores are products), m = 2 x tokens, y = [CLS] + 2.
    ln2, ln3 = math.log(2.0), math.log(3.0)
    qx = np.array([1.0, 0.0]).reshape(1, 1, 2, 1)
    kx = np.array([0.0, 1.0]).reshape(1, 1, 2, 1)
    qy = np.array([7.0, ln2, 0.0]).reshape(1, 1, 3, 1)  # y[0] = [CLS]: never a query
    ky = np.array([9.0, 0.0, ln3]).reshape(1, 1, 3, 1)  # y[0] = [CLS]: never a key
    # x -> y: row 0 scores (0, ln3) -> (1/4, 3/4); row 1 scores (0, 0) -> (1/2, 1/2).
    # y -> x: row 0 scores (0, ln2) -> (1/3, 2/3); row 1 scores (0, 0) -> (1/2, 1/2).
    # Teacher on x ++ y[1:] (T = 4); only the cross blocks matter, rows renormalised in the block:
    p = np.array([[0.5, 0.3, 0.1, 0.1],    # x0: (0.1, 0.1) -> (1/2, 1/2)
                  [0.1, 0.1, 0.2, 0.6],    # x1: (0.2, 0.6) -> (1/4, 3/4)
                  [0.2, 0.4, 0.1, 0.3],    # y1: (0.2, 0.4) -> (1/3, 2/3)
                  [0.3, 0.1, 0.4, 0.2]]).reshape(1, 1, 4, 4)  # y2: (0.3, 0.1) -> (3/4, 1/4)
    # ||xy diff||_F = sqrt(4 * 0.25^2) = 0.5, / m = 0.25; ||yx diff||_F = sqrt(2 * 0.25^2), / n = sqrt(2)/8.
    expected = 0.25 + math.sqrt(2.0) / 8.0
    ones = lambda k: np.ones((1, k), np.int32)  # noqa: E731
    got = float(virt_layer_loss(qx, kx, qy, ky, ones(2), ones(3), p))
    assert got == pytest.approx(expected, abs=1e-6)
    assert reference_layer_loss(qx, kx, qy, ky, ones(2), ones(3), p) == pytest.approx(expected, abs=1e-12)


def random_case(seed, lengths_x=(5, 3), lengths_y=(3, 6), heads=2, d=3, t_heads=None):
    """Random Q/K of a padded batch and a random positive teacher attention (junk on padding)."""
    rng = np.random.default_rng(seed)
    b, lx, ly = len(lengths_x), max(lengths_x), max(lengths_y)
    x_mask = (np.arange(lx)[None] < np.array(lengths_x)[:, None]).astype(np.int32)
    y_mask = (np.arange(ly)[None] < np.array(lengths_y)[:, None]).astype(np.int32)
    q = lambda t: rng.normal(size=(b, heads, t, d)) * 1.5  # noqa: E731
    t = lx + ly - 1
    p = rng.uniform(0.01, 1.0, size=(b, t_heads or heads, t, t))
    return q(lx), q(lx), q(ly), q(ly), x_mask, y_mask, p


def test_layer_loss_matches_numpy_formula_on_a_padded_multi_head_batch():
    args = random_case(0)
    got = float(virt_layer_loss(*args))
    assert got == pytest.approx(reference_layer_loss(*args), abs=1e-6)
    assert got > 0.1


def test_loss_is_zero_when_student_maps_equal_the_teachers():
    qx, kx, qy, ky, xm, ym, p = random_case(1, heads=4)
    rng = np.random.default_rng(2)
    lx = xm.shape[1]
    for b in range(2):
        m, n = int(xm[b].sum()), int(ym[b].sum()) - 1
        s_xy = np_softmax(qx[b, :, :m] @ ky[b, :, 1:n + 1].transpose(0, 2, 1) / math.sqrt(3))
        s_yx = np_softmax(qy[b, :, 1:n + 1] @ kx[b, :, :m].transpose(0, 2, 1) / math.sqrt(3))
        # Any positive factor per row: the block renormalisation removes it.
        p[b, :, :m, lx:lx + n] = s_xy * rng.uniform(0.05, 0.9, size=(4, m, 1))
        p[b, :, lx:lx + n, :m] = s_yx * rng.uniform(0.05, 0.9, size=(4, n, 1))
    assert float(virt_layer_loss(qx, kx, qy, ky, xm, ym, p)) < 1e-6
    p2 = p.copy()
    p2[0, 1, 0, lx] *= 3.0  # one teacher entry changed -> a clearly positive loss
    assert float(virt_layer_loss(qx, kx, qy, ky, xm, ym, p2)) > 1e-3


def qk_outputs(qx, kx, qy, ky):
    """One layer's student Q/K as the encoder outputs `virt_loss` reads."""
    return ({"query_states": [tf.constant(qx, tf.float32)], "key_states": [tf.constant(kx, tf.float32)]},
            {"query_states": [tf.constant(qy, tf.float32)], "key_states": [tf.constant(ky, tf.float32)]})


def test_content_positions_leave_the_special_tokens_out_of_both_maps():
    # The hand-worked example above wrapped in its special tokens: x = [CLS] x0 x1 [SEP] and
    # y = [CLS] y1 y2 [SEP], with arbitrary Q/K and teacher attention on the special tokens. Over
    # content tokens the loss is the hand value, 0.25 + sqrt(2)/8; over all tokens it is not.
    ln2, ln3 = math.log(2.0), math.log(3.0)
    qx = np.array([3.0, 1.0, 0.0, -2.0]).reshape(1, 1, 4, 1)
    kx = np.array([5.0, 0.0, 1.0, 4.0]).reshape(1, 1, 4, 1)
    qy = np.array([7.0, ln2, 0.0, 1.5]).reshape(1, 1, 4, 1)
    ky = np.array([9.0, 0.0, ln3, 2.5]).reshape(1, 1, 4, 1)
    rng = np.random.default_rng(7)
    p = rng.uniform(0.05, 0.9, size=(1, 1, 7, 7))  # x ++ y[1:]: x at 0..3, y1 y2 [SEP] at 4..6
    content = [1, 2, 4, 5]
    p[np.ix_([0], [0], content, content)] = np.array([[0.5, 0.3, 0.1, 0.1], [0.1, 0.1, 0.2, 0.6],
                                                      [0.2, 0.4, 0.1, 0.3], [0.3, 0.1, 0.4, 0.2]])
    ones = np.ones((1, 4), np.int32)
    out_x, out_y = qk_outputs(qx, kx, qy, ky)
    expected = 0.25 + math.sqrt(2.0) / 8.0
    got = 2 * float(virt_loss(out_x, out_y, ones, ones, [p], [0], [0], positions="content"))  # 1/(2L), L = 1
    assert got == pytest.approx(expected, abs=1e-6)
    assert 2 * float(virt_loss(out_x, out_y, ones, ones, [p], [0], [0])) != pytest.approx(expected, abs=1e-2)
    with pytest.raises(ValueError, match="virt.positions='cls'"):
        virt_loss(out_x, out_y, ones, ones, [p], [0], [0], positions="cls")


def test_content_positions_on_a_padded_batch_equal_the_formula_on_the_content_tokens():
    qx, kx, qy, ky, xm, ym, p = random_case(5, lengths_x=(6, 4), lengths_y=(4, 7))
    np.testing.assert_array_equal(content_masks(xm, ym)[0].numpy(), [[0, 1, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(content_masks(xm, ym)[1].numpy(), [[1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0]])
    lx = xm.shape[1]
    per_example = []
    for b in range(2):
        m, ny = int(xm[b].sum()), int(ym[b].sum())
        xs, ys = list(range(1, m - 1)), list(range(ny - 1))  # x without [CLS]/[SEP]; y keeps [CLS], drops [SEP]
        idx = xs + [lx + j - 1 for j in ys[1:]]  # the teacher's rows/columns of those tokens
        per_example.append(reference_layer_loss(
            qx[b:b + 1, :, xs], kx[b:b + 1, :, xs], qy[b:b + 1, :, ys], ky[b:b + 1, :, ys],
            np.ones((1, len(xs))), np.ones((1, len(ys))), p[b:b + 1][:, :, idx][:, :, :, idx]))
    out_x, out_y = qk_outputs(qx, kx, qy, ky)
    got = 2 * float(virt_loss(out_x, out_y, xm, ym, [p], [0], [0], positions="content"))
    assert got == pytest.approx(np.mean(per_example), abs=1e-5)


def test_padding_changes_nothing():
    qx, kx, qy, ky, xm, ym, p = random_case(3, lengths_x=(4,), lengths_y=(3,))  # no padding: m=4, n=2
    rng = np.random.default_rng(4)
    px, py = 3, 4  # extra padding on x and on y
    lx, ly = 4 + px, 3 + py
    junk = lambda a, axis, k: np.concatenate(  # noqa: E731
        [a, rng.normal(size=a.shape[:axis] + (k,) + a.shape[axis + 1:]) * 5], axis=axis)
    qx2, kx2, qy2, ky2 = junk(qx, 2, px), junk(kx, 2, px), junk(qy, 2, py), junk(ky, 2, py)
    xm2, ym2 = np.pad(xm, [(0, 0), (0, px)]), np.pad(ym, [(0, 0), (0, py)])
    # The teacher's padded layout: x at [0, 4), y[1:] at [lx, lx + 2); junk everywhere else.
    src = np.r_[0:4, 4:6]
    dst = np.r_[0:4, lx:lx + 2]
    p2 = rng.uniform(0.0, 1.0, size=(1, 2, lx + ly - 1, lx + ly - 1))
    p2[np.ix_([0], [0, 1], dst, dst)] = p[np.ix_([0], [0, 1], src, src)]
    a = float(virt_layer_loss(qx, kx, qy, ky, xm, ym, p))
    b = float(virt_layer_loss(qx2, kx2, qy2, ky2, xm2, ym2, p2))
    assert a > 0.1 and b == pytest.approx(a, abs=1e-6)


def test_different_head_counts_compare_head_averaged_maps():
    qx, kx, qy, ky, xm, ym, p = random_case(5, heads=4, t_heads=2)
    got = float(virt_layer_loss(qx, kx, qy, ky, xm, ym, p))
    lx = xm.shape[1]
    total = 0.0
    for b in range(2):
        m, n = int(xm[b].sum()), int(ym[b].sum()) - 1
        s_xy = np_softmax(qx[b, :, :m] @ ky[b, :, 1:n + 1].transpose(0, 2, 1) / math.sqrt(3)).mean(0)
        s_yx = np_softmax(qy[b, :, 1:n + 1] @ kx[b, :, :m].transpose(0, 2, 1) / math.sqrt(3)).mean(0)
        t_xy, t_yx = p[b, :, :m, lx:lx + n], p[b, :, lx:lx + n, :m]
        t_xy = (t_xy / t_xy.sum(-1, keepdims=True)).mean(0)
        t_yx = (t_yx / t_yx.sum(-1, keepdims=True)).mean(0)
        total += np.linalg.norm(s_xy - t_xy) / m + np.linalg.norm(s_yx - t_yx) / n
    assert got == pytest.approx(total / 2, abs=1e-6)


# --------------------------------------------------------------------------- layer choice

def test_select_layers_specs():
    assert select_layers("all", 4) == [0, 1, 2, 3]
    assert select_layers("first-2", 4) == [0, 1]
    assert select_layers("last-1", 4) == [3]
    assert select_layers("last-3", 4) == [1, 2, 3]
    assert select_layers("skip-2", 4) == [1, 3]
    assert select_layers("skip-3", 6) == [2, 5]
    assert select_layers("first-4", 4) == [0, 1, 2, 3]
    for bad in ("first-0", "last-5", "skip-9", "middle-2", "first", "first-x", "", "all-2", "last--1"):
        with pytest.raises(ValueError, match="virt.layers"):
            select_layers(bad, 4)


def test_uniform_layer_map():
    assert uniform_layer_map(2, 6) == [2, 5]
    assert uniform_layer_map(3, 12) == [3, 7, 11]
    assert uniform_layer_map(4, 4) == [0, 1, 2, 3]
    # A student deeper than its teacher shares teacher layers (was [-1, 0, 0]: a crash).
    assert uniform_layer_map(3, 1) == [0, 0, 0]
    assert uniform_layer_map(6, 2) == [0, 0, 0, 0, 1, 1]


# --------------------------------------------------------------------------- models

@pytest.fixture(scope="module")
def student3():
    keras.utils.set_random_seed(2)
    model = VirtModel(tiny_encoder(3), num_labels=2, dropout=0.0, name="virt")
    model(model.dummy_inputs())
    return model


def test_virt_gradients_reach_only_the_distilled_qk_path(student3, teacher_enc, texts):
    vt = VirtTraining(student3, teacher_enc, interaction_weight=1.0, layers="first-2", name="virt_training")
    batch = virt_batch(texts["x_ids"], texts["y_ids"])
    with tf.GradientTape() as tape:
        virt = vt(batch, training=True)["virt"]
    variables = vt.trainable_variables
    grads = dict(zip([v.path.split("virt/encoder/")[-1] for v in variables], tape.gradient(virt, variables)))
    assert float(virt) > 0.01

    def norm(name):
        g = grads[name]
        return 0.0 if g is None else float(tf.norm(g))

    for layer in (0, 1):  # distilled layers: their query and key projections learn
        for part in ("query", "key"):
            assert norm(f"layer_{layer}/attention/{part}/kernel") > 1e-6, (layer, part)
    assert norm("layer_0/attention/value/kernel") > 1e-6  # layer 0 feeds layer 1's Q/K
    assert norm("word_embeddings/embeddings") > 1e-6
    zero = [n for n in grads if n.startswith("layer_2/")]
    zero += [f"layer_1/{p}" for p in ("attention/value/kernel", "attention/value/bias", "attention_output/kernel",
                                      "attention_output/bias", "attention_norm/gamma", "attention_norm/beta",
                                      "intermediate/kernel", "intermediate/bias", "output/kernel", "output/bias",
                                      "output_norm/gamma", "output_norm/beta")]
    zero += [n for n in grads if any(h in n for h in ("fuse_mlp", "output_mlp", "classifier", "pooler"))]
    assert len(zero) >= 16 + 12 + 6
    for name in zero:
        assert norm(name) == 0.0, name
    # The teacher is frozen: none of its variables is trained.
    assert teacher_enc.trainable_variables == []
    teacher_ids = {id(v) for v in teacher_enc.weights}
    assert not any(id(v) in teacher_ids for v in variables)


def test_teacher_inputs_reproduce_the_contiguous_teacher_per_example(tok, texts, teacher_enc, student3):
    x_lists, y_lists = texts["x_ids"], texts["y_ids"]
    ms, ns = [len(x) for x in x_lists], [len(y) - 1 for y in y_lists]
    assert len(set(ms)) == 3 and len(set(ns)) == 3  # every example at other offsets
    batch = virt_batch(x_lists, y_lists)
    lx = batch["x_ids"].shape[1]
    t_in = teacher_inputs(batch["x_ids"], batch["x_mask"], batch["y_ids"], batch["y_mask"])
    att = teacher_enc(t_in, output_attentions=True)["attentions"]
    out_x = student3.encode(batch["x_ids"], batch["x_mask"], output_qk=True)
    out_y = student3.encode(batch["y_ids"], batch["y_mask"], output_qk=True)
    per_example = []
    for b, (x, y) in enumerate(zip(x_lists, y_lists)):
        m, n = ms[b], ns[b]
        ids, types = tok.teacher_ids(x, y)  # the contiguous `ids_x + ids_y[1:]`
        ref = teacher_enc({"input_ids": np.array([ids]), "token_type_ids": np.array([types])},
                          output_attentions=True)["attentions"]
        for layer in range(3):
            ps, pr = att[layer].numpy(), ref[layer].numpy()
            np.testing.assert_allclose(ps[b, :, :m, lx:lx + n], pr[0, :, :m, m:], atol=1e-5)  # x -> y
            np.testing.assert_allclose(ps[b, :, lx:lx + n, :m], pr[0, :, m:, :m], atol=1e-5)  # y -> x
        # Through the loss inputs: the renormalised blocks are the contiguous ones...
        t_xy, t_yx = teacher_maps(att[1], batch["x_mask"], batch["y_mask"])
        r_xy, r_yx = ref[1].numpy()[0, :, :m, m:], ref[1].numpy()[0, :, m:, :m]
        np.testing.assert_allclose(t_xy.numpy()[b, :, :m, :n], r_xy / r_xy.sum(-1, keepdims=True), atol=1e-5)
        np.testing.assert_allclose(t_yx.numpy()[b, :, :n, :m], r_yx / r_yx.sum(-1, keepdims=True), atol=1e-5)
        # ... and the batched loss is the mean of the unpadded per-example losses.
        one = lambda out, k, T: out[k][1][b:b + 1, :, :T]  # noqa: E731
        per_example.append(float(virt_layer_loss(
            one(out_x, "query_states", m), one(out_x, "key_states", m),
            one(out_y, "query_states", n + 1), one(out_y, "key_states", n + 1),
            np.ones((1, m)), np.ones((1, n + 1)), ref[1])))
    batched = float(virt_layer_loss(out_x["query_states"][1], out_x["key_states"][1], out_y["query_states"][1],
                                    out_y["key_states"][1], batch["x_mask"], batch["y_mask"], att[1]))
    assert batched == pytest.approx(np.mean(per_example), abs=1e-6)
    # virt_loss = 1/(2L) * sum over the chosen layers, teacher layers through the layer map.
    both = virt_loss(out_x, out_y, batch["x_mask"], batch["y_mask"], att, [0, 2], [1, 0, 1])
    layer0 = virt_layer_loss(out_x["query_states"][0], out_x["key_states"][0], out_y["query_states"][0],
                             out_y["key_states"][0], batch["x_mask"], batch["y_mask"], att[1])
    layer2 = virt_layer_loss(out_x["query_states"][2], out_x["key_states"][2], out_y["query_states"][2],
                             out_y["key_states"][2], batch["x_mask"], batch["y_mask"], att[1])
    assert float(both) == pytest.approx((float(layer0) + float(layer2)) / 4, abs=1e-6)


@pytest.fixture(scope="module")
def students():
    keras.utils.set_random_seed(3)
    out = {}
    for adapted in (True, False):
        m = VirtModel(tiny_encoder(2), num_labels=3, adapted_interaction=adapted, name="virt")
        m(m.dummy_inputs())
        out[adapted] = m
    return out


@pytest.mark.parametrize("adapted", [True, False])
def test_inference_split_equals_call_and_model_dir_round_trip(students, adapted, texts, tok, tmp_path):
    model = students[adapted]
    batch = virt_batch(texts["x_ids"], texts["y_ids"])
    hx = model.encode(batch["x_ids"], batch["x_mask"])["last_hidden_state"]
    hy = model.encode(batch["y_ids"], batch["y_mask"])["last_hidden_state"]
    split = model.score(hx, batch["x_mask"], hy, batch["y_mask"]).numpy()
    called = tf.nn.softmax(model(batch), axis=-1).numpy()
    np.testing.assert_allclose(split, called, atol=1e-6)
    np.testing.assert_allclose(split.sum(-1), 1.0, atol=1e-6)
    # y states cached one text at a time (as a deployment would), padded afterwards: same scores.
    cached = [model.encode(np.array([y]), np.ones((1, len(y)), np.int32))["last_hidden_state"].numpy()[0]
              for y in texts["y_ids"]]
    hy_cached = np.zeros_like(hy.numpy())
    for i, h in enumerate(cached):
        hy_cached[i, :len(h)] = h
    np.testing.assert_allclose(model.score(hx, batch["x_mask"], hy_cached, batch["y_mask"]).numpy(), split,
                               atol=1e-5)
    save_model_dir(model, tmp_path / "model", tok, labels=["a", "b", "c"], max_seq_len=24)
    loaded = load_model_dir(tmp_path / "model", expect_kind="virt")
    assert loaded.model.adapted_interaction is adapted and loaded.labels == ["a", "b", "c"]
    np.testing.assert_allclose(tf.nn.softmax(loaded.model(batch), axis=-1).numpy(), split, atol=1e-6)


def test_ablation_flags_change_the_graph(students, teacher_enc, texts):
    adapted, plain = students[True], students[False]
    names = lambda m: {v.path for v in m.weights}  # noqa: E731
    assert not any("fuse_mlp" in n or "output_mlp" in n for n in names(plain))
    assert tuple(plain.classifier.kernel.shape) == (3 * H, 3)  # [u, v, |u - v|]
    assert tuple(adapted.fuse.kernel.shape) == (4 * H, 4 * H)  # MLP(r), r = [u, v, u - v, max(u, v)]
    assert tuple(adapted.hidden.kernel.shape) == (4 * H, H)  # MLP(MLP(r) + r)
    assert tuple(adapted.classifier.kernel.shape) == (H, 3)
    batch = virt_batch(texts["x_ids"], texts["y_ids"])
    labels = np.array([0, 1, 2])

    no_teacher = VirtTraining(adapted, name="vt_plain")
    out = no_teacher(batch, training=True)
    assert isinstance(out, tf.Tensor) and tuple(out.shape) == (3, 3)
    assert set(no_teacher.loss_terms(batch, labels, out)) == {"ce"}

    vt = VirtTraining(adapted, teacher_enc, interaction_weight=0.5, layers="last-1", name="vt_distil")
    assert vt.distilled_layers == [1] and vt.layer_map == [1, 2]  # 2 student vs 3 teacher layers
    out = vt(batch, training=True)
    assert set(out) == {"logits", "virt"}
    terms = vt.loss_terms(batch, labels, out)
    assert set(terms) == {"ce", "virt"}
    assert float(terms["virt"]) == pytest.approx(0.5 * float(out["virt"]), rel=1e-6)
    assert isinstance(vt(batch, training=False), tf.Tensor)  # inference: the student alone
    assert vt.deployable is adapted


def test_weight_schedule_decay_scales_the_virt_term_by_the_optimizer_step(students, teacher_enc, texts):
    # decay: weight * (1 - step / total): 0.5 at step 0, 0.25 at step 5 of 10, 0 at step 10 and after.
    assert [float(weight_scale("decay", s, 10)) for s in (0, 5, 10, 12)] == [1.0, 0.5, 0.0, 0.0]
    assert float(weight_scale("constant", 7, 10)) == 1.0
    with pytest.raises(ValueError, match="virt.weight_schedule='cosine'"):
        VirtTraining(students[True], teacher_enc, weight_schedule="cosine")
    vt = VirtTraining(students[True], teacher_enc, interaction_weight=0.5, weight_schedule="decay", name="vt_decay")
    batch = virt_batch(texts["x_ids"], texts["y_ids"])
    out = vt(batch, training=True)
    l_virt = float(out["virt"])
    step = tf.Variable(0, dtype=tf.int64)
    n_weights = len(vt.weights)
    vt.follow_steps(step, 10)
    assert len(vt.weights) == n_weights  # the optimizer's counter is read, not made the model's variable
    got = []
    for s in (0, 5, 10):
        step.assign(s)
        got.append(float(vt.loss_terms(batch, np.array([0, 1, 2]), out)["virt"]))
    assert got == pytest.approx([0.5 * l_virt, 0.25 * l_virt, 0.0], rel=1e-6)


def test_fusion_without_adapted_interaction_is_eq6_on_mean_pooled_states(texts):
    # The paper's own "w/o adapted interaction" ablation: Eq. 6's fusion MLP on mean-pooled u, v.
    keras.utils.set_random_seed(4)
    m = VirtModel(tiny_encoder(2), num_labels=3, adapted_interaction=False, fusion=True, dropout=0.0, name="virt")
    batch = virt_batch(texts["x_ids"], texts["y_ids"])
    logits = m(batch).numpy()
    assert m.fusion and tuple(m.fuse.kernel.shape) == (4 * H, 4 * H)
    hx = m.encode(batch["x_ids"], batch["x_mask"])["last_hidden_state"].numpy()
    hy = m.encode(batch["y_ids"], batch["y_mask"])["last_hidden_state"].numpy()
    mean = lambda h, mask: (h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)  # noqa: E731
    u, v = mean(hx, np.asarray(batch["x_mask"])), mean(hy, np.asarray(batch["y_mask"]))
    r = np.concatenate([u, v, u - v, np.maximum(u, v)], -1)
    gelu = lambda z: 0.5 * z * (1 + scipy.special.erf(z / np.sqrt(2)))  # noqa: E731
    dense = lambda layer, z: z @ layer.kernel.numpy() + layer.bias.numpy()  # noqa: E731
    expected = dense(m.classifier, gelu(dense(m.hidden, gelu(dense(m.fuse, r)) + r)))
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    # defaults keep the two old heads, and old model.json files (no "fusion" key) load as before
    assert VirtModel(tiny_encoder(2), 3).fusion is True
    assert VirtModel(tiny_encoder(2), 3, adapted_interaction=False).fusion is False


def test_distillation_moves_student_maps_towards_the_teacher():
    keras.utils.set_random_seed(7)
    rng = np.random.default_rng(7)
    teacher = tiny_encoder(1, name="fixed_teacher", heads=2, init=0.2)  # random, peaky, never trained
    student = VirtModel(tiny_encoder(2, name="student_encoder"), num_labels=2, dropout=0.0, name="virt")
    vt = VirtTraining(student, teacher, interaction_weight=1.0, layers="all", name="virt_training")
    words = lambda k: [2, *rng.integers(5, 5 + len(WORDS), size=k).tolist(), 3]  # noqa: E731
    lengths = rng.integers(3, 8, size=(2, 24))
    batch = virt_batch([words(k) for k in lengths[0]], [words(k) for k in lengths[1]])
    batch = {k: tf.constant(v) for k, v in batch.items()}
    labels = tf.constant(rng.integers(0, 2, size=24))  # random labels: CE is noise here
    before = float(vt(batch, training=True)["virt"])
    teacher_weights = [w.numpy() for w in teacher.weights]
    optimizer = keras.optimizers.Adam(3e-3)
    optimizer.build(vt.trainable_variables)  # outside the tf.function: one trace only

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            out = vt(batch, training=True)
            loss = tf.add_n(list(vt.loss_terms(batch, labels, out).values()))
        variables = vt.trainable_variables
        grads = tape.gradient(loss, variables)
        optimizer.apply([g for g in grads if g is not None], [v for g, v in zip(grads, variables) if g is not None])

    for _ in range(80):  # ~1 s once traced; the ratio is 0.53-0.66 over seeds 7-10
        step()
    after = float(vt(batch, training=True)["virt"])
    assert after < 0.75 * before, (before, after)
    for w, w0 in zip(teacher.weights, teacher_weights):
        np.testing.assert_array_equal(w.numpy(), w0)


def test_kd_term_is_the_kl_to_the_teachers_logits_on_the_joint_pair():
    """virt.kd_weight: the teacher's logits from the x ++ y[1:] pass equal its logits on the contiguous
    `[CLS] x [SEP] y [SEP]` row (computed here from a separately padded joint batch), and the term is
    T^2 * KL(softmax(t/T) || softmax(s/T)) worked in NumPy."""
    from crossenc.model import CrossEncoder

    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(3)
    teacher = CrossEncoder(tiny_encoder(2, name="kd_teacher_encoder", init=0.2), num_labels=3, pooling="mean",
                           dropout=0.0, name="kd_teacher")
    student = VirtModel(tiny_encoder(1, name="kd_student_encoder"), num_labels=3, dropout=0.0, name="virt")
    words = lambda k: [2, *rng.integers(5, 5 + len(WORDS), size=k).tolist(), 3]  # noqa: E731
    xs, ys = [words(k) for k in (2, 6, 4, 1)], [words(k) for k in (5, 1, 3, 6)]
    batch = {k: tf.constant(v) for k, v in virt_batch(xs, ys).items()}
    joint_ids, joint_mask = pad([x + y[1:] for x, y in zip(xs, ys)])
    types = pad([[0] * len(x) + [1] * (len(y) - 1) for x, y in zip(xs, ys)])[0]
    teacher_logits = teacher({"input_ids": tf.constant(joint_ids), "attention_mask": tf.constant(joint_mask),
                              "token_type_ids": tf.constant(types)}).numpy()
    t_in = teacher_inputs(batch["x_ids"], batch["x_mask"], batch["y_ids"], batch["y_mask"])
    split_logits = teacher.head(teacher.encoder(t_in), t_in["attention_mask"]).numpy()
    np.testing.assert_allclose(split_logits, teacher_logits, atol=1e-5)
    T = 2.5
    vt = VirtTraining(student, teacher, interaction_weight=1.0, kd_weight=0.7, kd_temperature=T, name="vt_kd")
    out = vt(batch, training=True)
    s = out["logits"].numpy()
    pt, ps = np_softmax(teacher_logits / T), np_softmax(s / T)
    expected = T ** 2 * np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), -1))
    assert float(out["kd"]) == pytest.approx(expected, rel=1e-3)  # float32 logits, a small KL
    terms = vt.loss_terms(batch, tf.constant([0, 1, 2, 0]), out)
    assert float(terms["kd"]) == pytest.approx(0.7 * float(out["kd"]), rel=1e-6)
    assert not any("kd_teacher" in v.path for v in vt.trainable_variables)  # the teacher stays frozen
    with pytest.raises(ValueError, match="kd_weight"):
        VirtTraining(student, teacher.encoder, kd_weight=1.0)  # an encoder alone has no logits


# --------------------------------------------------------------------------- tasks

@pytest.fixture(scope="module")
def virt_run(tmp_path_factory):
    """The virt task end to end (random init, teacher fine-tuned in the run), via run_tasks.main."""
    import run_tasks
    from tests.tiny_runs import sample_task_overrides

    root = tmp_path_factory.mktemp("virt_run")
    common = sample_task_overrides(root)
    files = dict(c[len("data."):].split("=", 1) for c in common if c.startswith("data."))  # train, valid, test
    run = root / "run"
    rc = run_tasks.main(["--debug", "--task", "virt", "--set", *common, "model.num_layers=2", "virt.teacher=null",
                         "--out", str(run)])
    assert rc == 0
    return {"run": run, "files": files, "common": common}


def test_teacher_positions_must_cover_x_plus_y():
    from virt.task import check_teacher_positions

    check_teacher_positions(256, 512)  # x ++ y[1:] <= 511 tokens
    with pytest.raises(ValueError, match=r"train.max_seq_len <= 256"):
        check_teacher_positions(257, 512)


def test_virt_task_end_to_end(virt_run):
    run = virt_run["run"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"valid", "test", "teacher", "virt"} <= set(metrics)
    assert {"valid", "test"} <= set(metrics["teacher"])
    assert metrics["virt"]["distill"] is True
    assert json.loads((run / "model" / "model.json").read_text())["kind"] == "virt"
    assert json.loads((run / "teacher" / "model" / "model.json").read_text())["kind"] == "cross_encoder"
    student = load_model_dir(run / "model", expect_kind="virt")
    assert student.model.encoder.num_layers == 2


def test_virt_with_every_transfer_source_end_to_end(virt_run):
    """Transfer pairs train the attention and kd terms; the teacher still runs in the step (no logit cache)."""
    import run_tasks
    from tests.test_transfer import check_transfer_run, every_source

    root = virt_run["run"].parent
    out = root / "transfer"
    assert run_tasks.main(["--task", "virt", "--set", *virt_run["common"], *every_source(root), "model.num_layers=1",
                           "train.steps_per_epoch=3", f"virt.teacher={virt_run['run'] / 'teacher' / 'model'}",
                           "virt.baseline=null", "virt.kd_weight=0.5", "virt.interaction_weight=1",
                           "--out", str(out)]) == 0
    m, t = check_transfer_run(out, virt_run["files"]["train"], 32, 32)
    assert "teacher_logits_cache" not in t and not (out / ".cache" / "teacher_logits").exists()


def test_virt_task_trains_and_compares_a_same_depth_siamese_baseline(virt_run):
    """The run compares the student with its baseline and its teacher by paired tests on the same pairs,
    from the per-pair outputs each run saved; gap_closed only where the teacher leads by the test."""
    from training.metrics import PairOutputs, paired_test

    run = virt_run["run"]
    metrics = json.loads((run / "metrics.json").read_text())
    base = json.loads((run / "baseline" / "metrics.json").read_text())
    assert base["virt"] == {"distill": False, "adapted_interaction": False, "fusion": False,
                            "interaction_weight": None, "layers": "all", "kd_weight": 0.0, "kd_temperature": 2.0,
                            "positions": "all", "weight_schedule": "constant", "student_init": "model"}
    assert "baseline" not in base  # the baseline has none of its own
    assert load_model_dir(run / "baseline" / "model", expect_kind="virt").model.encoder.num_layers == 2
    metric = metrics["training"]["selection_metric"]
    for split in ("valid", "test"):
        assert metrics["baseline"][split][metric] == pytest.approx(base[split][metric])
        # the saved outputs are the reported numbers' pairs: recomputing the tests from them gives the records
        t, b, s = (PairOutputs.load(d / "predictions" / f"{split}.npz") for d in (run / "teacher", run / "baseline", run))
        assert len(s.labels) == metrics[split]["n"] == 32
        for key, (x, y) in (("teacher_vs_baseline", (t, b)), ("student_vs_baseline", (s, b))):
            want = paired_test(metric, x, y)
            assert metrics[key][split] == {k: pytest.approx(v) if isinstance(v, float) else v for k, v in want.items()}
        tb, bb, sb = metrics["teacher"][split], base[split], metrics[split]
        if metrics["teacher_vs_baseline"][split]["leads"]:
            assert metrics["gap_closed"][split] == pytest.approx((sb[metric] - bb[metric]) / (tb[metric] - bb[metric]))
            lo, hi = metrics["gap_closed_ci95"][split]
            assert lo <= hi
        else:
            assert split not in metrics.get("gap_closed", {}) and split not in metrics.get("gap_closed_ci95", {})
        for block in (tb, sb):  # every reported score has its interval
            assert set(block["ci95"]) == {"accuracy", "f1", "auc"} - ({"auc"} if math.isnan(block["auc"]) else set())
            assert block["ci95"]["accuracy"][0] <= block["accuracy"] <= block["ci95"]["accuracy"][1]
    leads = metrics["teacher_vs_baseline"]["valid"]["leads"]
    assert any("does not lead the baseline" in w for w in metrics.get("warnings", [])) == (not leads)


def test_interaction_weight_null_follows_the_teachers_lead_over_the_baseline(virt_run):
    """virt.interaction_weight=null (virt.yaml): the run resolved it by the teacher-leads test on the
    valid pairs it reports, and says why (the test, its numbers) in metrics.json."""
    metrics = json.loads((virt_run["run"] / "metrics.json").read_text())
    metric = metrics["training"]["selection_metric"]
    test = metrics["teacher_vs_baseline"]["valid"]
    assert metrics["virt"]["interaction_weight"] == (10.0 if test["leads"] else 1.0)
    reason = metrics["virt"]["interaction_weight_rule"]
    assert metric in reason and f"{test['pairs']} pairs" in reason and test["test"].split(",")[0] in reason


def _pair_outputs(n, right_a_only, right_b_only, both_wrong=0):
    """Two binary models' outputs on n pairs (label 1): right for A only on the first `right_a_only`
    pairs, for B only on the next `right_b_only`, both wrong on `both_wrong` more, both right elsewhere."""
    from training.metrics import PairOutputs

    a, b = np.ones(n, bool), np.ones(n, bool)
    b[:right_a_only] = False
    a[right_a_only:right_a_only + right_b_only] = False
    start = right_a_only + right_b_only
    a[start:start + both_wrong] = b[start:start + both_wrong] = False
    y = np.ones(n, int)
    return [PairOutputs(y, np.eye(2)[r.astype(int)] * 0.9 + 0.05, ("0", "1")) for r in (a, b)]


def _report(teacher, baseline, metric="accuracy"):
    from training.metrics import PER_PAIR, point_metric

    return {"teacher": {"valid": {metric: point_metric(metric, teacher), PER_PAIR: teacher}},
            "baseline": {"valid": {metric: point_metric(metric, baseline), PER_PAIR: baseline}}}


@pytest.mark.parametrize("n, teacher_only, baseline_only, weight", [
    # `make demo`: teacher 97.33 against baseline 87.67 valid on 300 pairs (8 and 37 pairs wrong);
    # at the least favourable overlap (the teacher's 8 errors all right for the baseline) p = 8e-6
    (300, 37, 8, 10.0),
    (300, 1, 0, 1.0),        # 0.3 points (one pair): the sample set at full schedule
    (1000, 20, 10, 10.0),    # p = P(X >= 20 | Bin(30, 1/2)) = 0.049
    (1000, 19, 10, 1.0),     # p = 0.068
    (300, 2, 5, 1.0),        # the teacher trails
])
def test_auto_interaction_weight_is_the_teacher_leads_test(n, teacher_only, baseline_only, weight):
    from virt.task import auto_interaction_weight

    teacher, baseline = _pair_outputs(n, teacher_only, baseline_only)
    got, reason = auto_interaction_weight(_report(teacher, baseline), "accuracy")
    d = teacher_only + baseline_only
    p = sum(math.comb(d, k) for k in range(teacher_only, d + 1)) / 2 ** d  # one-sided exact McNemar, by hand
    assert got == weight == (10.0 if p < 0.05 else 1.0)
    assert f"p={p:.3g}" in reason and f"{n} pairs, {teacher_only} right for the teacher only" in reason
    assert ("it leads" if weight == 10 else "it does not lead") in reason
    assert auto_interaction_weight({"teacher": _report(teacher, baseline)["teacher"]}, "accuracy")[0] == 10.0


def test_auto_interaction_weight_on_f1_uses_the_paired_bootstrap():
    """`make demo` selects on F1: the same teacher lead holds by the paired bootstrap."""
    from training.metrics import PairOutputs
    from virt.task import auto_interaction_weight

    teacher, baseline = _pair_outputs(300, 37, 8)
    y = np.tile([0, 1], 150)  # both classes: flip the label and both models' probabilities on half the pairs
    teacher, baseline = (PairOutputs(y, np.where(y[:, None] == 1, m.probs, m.probs[:, ::-1]), ("0", "1"))
                         for m in (teacher, baseline))
    assert (teacher.correct.sum(), baseline.correct.sum()) == (292, 263)
    got, reason = auto_interaction_weight(_report(teacher, baseline, "f1"), "f1")
    assert got == 10.0 and "paired bootstrap" in reason


def test_student_init_teacher_starts_the_siamese_student_from_the_teachers_layers(virt_run, monkeypatch):
    """virt.student_init=teacher: the student's encoder is built from the teacher's model directory
    (its first model.num_layers layers: tests/test_distill.py checks the weights), the baseline from
    model.init."""
    import run_tasks
    import virt.task

    built = []
    real = virt.task.init_encoder
    monkeypatch.setattr(virt.task, "init_encoder", lambda model_cfg, *a, **k: built.append(model_cfg.init)
                        or real(model_cfg, *a, **k))
    run, teacher = virt_run["run"], virt_run["run"] / "teacher" / "model"
    out = run.parent / "from_teacher"
    rc = run_tasks.main(["--task", "virt", "--set", *virt_run["common"], "model.num_layers=1",
                         f"virt.teacher={teacher}", f"virt.baseline={run / 'baseline' / 'model'}",
                         "virt.student_init=teacher", "train.steps_per_epoch=1", "--out", str(out)])
    assert rc == 0 and built == [str(teacher)]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["virt"]["student_init"] == "teacher"
    assert load_model_dir(out / "model", expect_kind="virt").model.encoder.num_layers == 1
    assert (out / "model" / "vocab.txt").read_bytes() == (teacher / "vocab.txt").read_bytes()


def test_gap_closed_and_weak_teacher_warning_by_hand():
    """gap_closed where the teacher leads by the paired test (valid: 40 pairs right for the teacher only,
    none for the baseline), with its joint-bootstrap interval; no share and a warning where it does
    not (test: 2 vs 1); the student's own test against the baseline."""
    from training.metrics import PER_PAIR, point_metric
    from training.references import compare_with_baseline

    def block(out):
        return {"accuracy": point_metric("accuracy", out), PER_PAIR: out}

    t, b = _pair_outputs(200, 40, 0, both_wrong=20)  # teacher 0.90, baseline 0.70
    s = _pair_outputs(200, 30, 0, both_wrong=30)[0]  # right where the teacher is on 30 of its 40: 0.85
    t2, b2 = _pair_outputs(200, 2, 1)
    m = {"teacher": {"valid": block(t), "test": block(t2)}, "baseline": {"valid": block(b), "test": block(b2)},
         "valid": block(s), "test": block(_pair_outputs(200, 2, 0)[0])}
    compare_with_baseline(m, "accuracy", "the student")
    assert m["gap_closed"] == {"valid": pytest.approx(0.75)}  # (0.85 - 0.70) / (0.90 - 0.70); test: no lead
    lo, hi = m["gap_closed_ci95"]["valid"]
    assert 0.5 < lo < 0.75 < hi <= 1.0  # the student is right on a subset of the teacher's pairs: never above 1
    assert m["gap_closed_bootstrap"]["valid"] == {"resamples": 1000, "seed": 0, "dropped": 0}
    assert m["teacher_vs_baseline"]["valid"]["leads"] and not m["teacher_vs_baseline"]["test"]["leads"]
    assert m["student_vs_baseline"]["valid"]["right_only"] == [30, 0]
    assert "warnings" not in m  # only a teacher that does not lead on *valid* warns

    m = {"teacher": {"valid": block(t2)}, "baseline": {"valid": block(b2)}, "valid": block(s)}
    compare_with_baseline(m, "accuracy", "the student")  # 0.5 points on 200 pairs: p = 4/8
    assert "gap_closed" not in m and len(m["warnings"]) == 1
    assert m["warnings"][0].startswith("the teacher's valid accuracy (0.9950) does not lead the baseline's (0.9900) "
                                       "by a paired test (exact McNemar, one-sided p=0.5; 200 pairs, 2 right")


def test_the_summary_prints_intervals_n_and_the_tests(tmp_path, capsys):
    """print_summary: every metric with its interval and the pairs it was measured on, gap closed with
    its interval, and each "leads" with the test behind it; save_predictions leaves no array behind."""
    from training.metrics import PER_PAIR, with_uncertainty
    from training.references import compare_with_baseline, save_predictions
    from training.runner import print_summary

    def block(out):
        return with_uncertainty({"n": len(out.labels), "accuracy": float(out.correct.mean())}, out.labels, out.probs,
                                out.label_names)

    t, b = _pair_outputs(200, 40, 0, both_wrong=20)
    s = _pair_outputs(200, 30, 0, both_wrong=30)[0]
    m = {"teacher": {"valid": block(t)}, "baseline": {"valid": block(b)}, "valid": block(s)}
    compare_with_baseline(m, "accuracy", "the student")
    save_predictions(tmp_path, m)
    assert PER_PAIR not in m["valid"] and PER_PAIR not in m["teacher"]["valid"]
    json.dumps(m)  # nothing left that metrics.json could not hold
    print_summary(tmp_path, m)
    out = capsys.readouterr().out.splitlines()
    lo, hi = m["valid"]["ci95"]["accuracy"]
    assert out[2] == f"valid (n=200): accuracy 0.8500 [{lo:.4f}, {hi:.4f}]"
    assert out[0].startswith("teacher (valid, n=200): accuracy 0.9000 [")
    g_lo, g_hi = m["gap_closed_ci95"]["valid"]
    assert out[3] == f"gap closed (valid): 75% [{g_lo:.0%}, {g_hi:.0%}] of the way from the baseline to the teacher"
    assert out[4].startswith("the teacher leads the baseline on valid accuracy (exact McNemar, one-sided p=9.09e-13; "
                             "200 pairs, 40 right for the teacher only, 0 for the baseline only)")
    assert out[5].startswith("the student leads the baseline on valid accuracy (exact McNemar")


def test_a_worker_without_the_baseline_runs_metrics_scores_its_model(monkeypatch, tmp_path):
    """A multi-worker run's non-chief workers get `{}` from the baseline's sub-run: they score the chief's
    baseline model directory, so every worker resolves virt.interaction_weight from the same scores."""
    import training.references as refs
    from config import load_config

    scored = []
    monkeypatch.setattr(refs, "run_or_reuse", lambda cfg, fn, what: {})
    monkeypatch.setattr(refs, "score_model_dir", lambda path, splits, cfg: scored.append(path) or {"valid": {"accuracy": 0.5}})

    class Task:
        cfg = load_config(None, [f"out={tmp_path}"])
        baseline_path = staticmethod(lambda: "auto")
        as_baseline = staticmethod(lambda bcfg: None)

    got = refs.baseline_scores(Task(), tmp_path, splits=None)
    assert got == {"valid": {"accuracy": 0.5}, "model_dir": str(tmp_path / "baseline" / "model")}
    assert scored == [tmp_path / "baseline" / "model"]


def test_virt_plot_writes_a_readable_png(virt_run, tmp_path, capsys):
    import run_tasks

    run = virt_run["run"]
    out = tmp_path / "plot"
    # No virt.teacher / virt.baseline: the run's own teacher and siamese baseline (<run>/teacher/model,
    # <run>/baseline/model) are found next to the student.
    rc = run_tasks.main(["--debug", "--task", "virt-plot", "--set", f"model.init={run / 'model'}",
                         "virt.plot_pair=[\"the man played the guitar\", \"a man is playing music\"]",
                         "virt.layers=last-1", "--out", str(out)])
    assert rc == 0
    png = out / "virt_attention.png"
    assert png.is_file() and png.stat().st_size > 5_000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads((out / "virt_attention.json").read_text())
    assert result["teacher"]["layer"] == 4 and [s["layer"] for s in result["students"]] == [2, 2]  # 1-based
    assert result["students"][1]["model"] == str(run / "baseline" / "model")
    t_map = np.array(result["teacher"]["map"])
    assert t_map.shape == (len(result["x_tokens"]), len(result["y_tokens"]))
    np.testing.assert_allclose(t_map.sum(-1), 1.0, atol=1e-5)  # renormalised rows
    assert "mean |M~_xy - M_xy|" in capsys.readouterr().out


# --------------------------------------------------------------------------- head diagnostic (bench/virt_head.py)

def _virt_head():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import virt_head

    return virt_head


def test_head_stats_pool_as_the_model_does(texts):
    from modeling.encoder import pool
    from virt.model import _masked_attend

    keras.utils.set_random_seed(5)
    m = VirtModel(tiny_encoder(2), num_labels=2, dropout=0.0, name="virt")
    batch = virt_batch(texts["x_ids"], texts["y_ids"])  # padded: lengths differ
    hx = m.encode(batch["x_ids"], batch["x_mask"])["last_hidden_state"]
    hy = m.encode(batch["y_ids"], batch["y_mask"])["last_hidden_state"]
    s = _virt_head().head_stats(hx.numpy(), batch["x_mask"], hy.numpy(), batch["y_mask"])
    u = pool(_masked_attend(hx, hy, batch["y_mask"]), batch["x_mask"], "mean").numpy()
    v = pool(_masked_attend(hy, hx, batch["x_mask"]), batch["y_mask"], "mean").numpy()
    np.testing.assert_allclose(s["u"], u, atol=1e-5)
    np.testing.assert_allclose(s["v"], v, atol=1e-5)


def test_head_coverage_and_peak_worked_by_hand():
    # y: 3 valid tokens + 1 padding token. Zero x states -> equal scores -> uniform rows: coverage 1.
    hy = np.zeros((1, 4, 2))
    hy[0, :, 0] = [1.0, 2.0, 3.0, 50.0]  # the padding token would win every row if it were not masked
    ym = np.array([[1, 1, 1, 0]])
    xm = np.array([[1, 1]])
    s = _virt_head().head_stats(np.zeros((1, 2, 2)), xm, hy, ym)
    assert s["coverage_y"][0] == pytest.approx(1.0)
    assert s["peak"][0] == pytest.approx(1 / 3)
    # x states pointing hard along y token 2's direction: every row puts ~all its mass on it -> 1/n.
    s = _virt_head().head_stats(np.full((1, 2, 2), [1000.0, 0.0]), xm, hy, ym)
    assert s["coverage_y"][0] == pytest.approx(1 / 3, abs=1e-6)
    assert s["peak"][0] == pytest.approx(1.0)
    # two of three y tokens shared evenly: coverage exp(ln 2) / 3 = 2/3 (token scores 3 and 3, token 1 far below)
    hy2 = np.zeros((1, 3, 2))
    hy2[0, :, 0] = [-1.0, 1.0, 1.0]
    s = _virt_head().head_stats(np.full((1, 2, 2), [1000.0, 0.0]), xm, hy2, np.ones((1, 3)))
    assert s["coverage_y"][0] == pytest.approx(2 / 3, abs=1e-6)


def test_virt_head_script_on_a_trained_run(virt_run, tmp_path):
    _virt_head().main(["--model", str(virt_run["run"] / "model"), "--data", str(virt_run["files"]["test"]),
                       "--out", str(tmp_path)])
    result = json.loads((tmp_path / "virt_head.json").read_text())
    assert result["pairs"] == 32
    for key in ("model_auc", "auc_cos_adapted", "auc_cos_mean"):
        assert 0.0 <= result[key] <= 1.0
    for key in ("coverage_y_pos", "coverage_y_neg", "coverage_x_pos", "peak_neg"):
        assert 0.0 < result[key] <= 1.0 + 1e-9
    assert "coverage of y in u" in (tmp_path / "virt_head.md").read_text()


def test_virt_run_config_yaml_is_what_ran(virt_run):
    """config.yaml is written after the run decided virt.fusion (null in the given configuration), and
    the teacher's records the mean pooling VIRT's teachers are fine-tuned with."""
    from config import load_config

    run = virt_run["run"]
    saved = load_config(run / "config.yaml")
    assert saved.virt.fusion is False  # default_head
    assert saved.virt.adapted_interaction is False  # default_head
    assert json.loads((run / "model" / "model.json").read_text())["virt"]["adapted_interaction"] is False
    assert json.loads((run / "inputs.json").read_text())["config"]["virt"]["fusion"] is None
    assert load_config(run / "teacher" / "config.yaml").model.pooling == "mean"


@pytest.mark.parametrize("labels", [["0", "1"], ["entailment", "neutral", "contradiction"]])
def test_the_default_head_is_the_baselines_for_every_class_count(labels):
    """virt.adapted_interaction / virt.fusion null -> the siamese baseline's head (mean-pooled towers,
    SBERT's head) for 3 classes too: until issue 29 a 3-class student got Eq. 5 + Eq. 6's fusion head,
    which its SBERT-headed baseline lacked (docs/defaults.md); a key given explicitly is kept."""
    from types import SimpleNamespace

    from config import load_config
    from virt.task import Virt, is_siamese_baseline

    task = Virt(load_config("config/virt.yaml"))
    task.decide(SimpleNamespace(label_names=labels))
    v = task.cfg.virt
    assert (v.adapted_interaction, v.fusion) == (False, False)
    v.distill = False
    assert is_siamese_baseline(v)  # without the teacher, the student is exactly its baseline
    chosen = Virt(load_config("config/virt.yaml", ["virt.adapted_interaction=true"]))
    chosen.decide(SimpleNamespace(label_names=labels))
    assert (chosen.cfg.virt.adapted_interaction, chosen.cfg.virt.fusion) == (True, False)
