"""textmatch.py, the Python API: each call against the Keras model run by hand, one pair at a time.

The tiny random models come from test_export.py's fixtures (imported, not copied). The
reference path shares nothing with the API's but the tokenizer: no runtime, no batching, no
length sort, no padding (one unpadded row per call).
"""

from __future__ import annotations

import numpy as np
import pytest

import textmatch
from modeling.model_dir import load_model_dir, save_model_dir
from modeling.tokenization import PairTokenizer
from tests.test_export import MAX_LEN, PAIRS, model_dirs, vocab_file, workdir  # noqa: F401  fixtures

TEXTS_A = PAIRS[0] + ["a much longer first text about opening a savings account at the bank today"]
TEXTS_B = PAIRS[1] + ["short"]


def _softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _one(ids):
    return np.asarray([ids], np.int32), np.ones((1, len(ids)), np.int32)


def _reference_probs(loaded, a, b):
    """softmax(logits) of the Keras model on each pair alone."""
    model, tok, out = loaded.model, loaded.tokenizer, []
    for x, y in zip(a, b):
        if loaded.kind_class.joint_pair():
            enc = tok.encode_pairs([x], [y], MAX_LEN)
            ids, mask = _one(enc["input_ids"][0])
            inputs = {"input_ids": ids, "token_type_ids": np.asarray(enc["token_type_ids"], np.int32),
                      "attention_mask": mask}
        else:
            (xi, xm), (yi, ym) = _one(tok.encode_texts([x], MAX_LEN)[0]), _one(tok.encode_texts([y], MAX_LEN)[0])
            inputs = {"x_ids": xi, "x_mask": xm, "y_ids": yi, "y_mask": ym}
        logits = model(inputs, training=False)
        out.append(_softmax(np.asarray(logits["logits"] if isinstance(logits, dict) else logits))[0])
    return np.stack(out)


def _reference_vector(loaded, text):
    ids, mask = _one(loaded.tokenizer.encode_texts([text], MAX_LEN)[0])
    model = loaded.model
    if loaded.kind == "sbert":
        v = np.asarray(model.encode(ids, mask))[0]
    else:  # VIRT: mean of the last layer's token states
        v = np.asarray(model.encode(ids, mask)["last_hidden_state"])[0].mean(axis=0)
    return v / np.linalg.norm(v)


@pytest.fixture(scope="module")
def cosine_dir(model_dirs, vocab_file, workdir):  # noqa: F811
    """An sbert model trained without a classifier (objective cosine): rank by cosine."""
    return save_model_dir(model_dirs["models"]["sbert_cosine"], workdir / "runs" / "sbert_cosine" / "model",
                          PairTokenizer(vocab_file, lowercase=True), labels=["0", "1"], max_seq_len=MAX_LEN)


@pytest.mark.parametrize("kind", ["cross_encoder", "sbert", "virt"])
def test_predict_equals_the_keras_model_pair_by_pair(model_dirs, kind):  # noqa: F811
    m = textmatch.load(model_dirs[kind])
    assert (m.kind, m.labels) == (kind, ["0", "1"])
    got = m.predict(list(zip(TEXTS_A, TEXTS_B)))
    want = _reference_probs(load_model_dir(model_dirs[kind]), TEXTS_A, TEXTS_B)
    assert got.shape == (len(TEXTS_A), 2)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert not np.allclose(got[:, 1], got[0, 1])  # the random model does tell the pairs apart


@pytest.mark.parametrize("kind", ["sbert", "virt"])
def test_encode_equals_the_keras_encoder_text_by_text(model_dirs, kind):  # noqa: F811
    m = textmatch.load(model_dirs[kind])
    got = m.encode(TEXTS_A)
    loaded = load_model_dir(model_dirs[kind])
    want = np.stack([_reference_vector(loaded, t) for t in TEXTS_A])
    assert got.shape == (len(TEXTS_A), 32) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_rank_orders_by_the_positive_probability(model_dirs):  # noqa: F811
    m = textmatch.load(model_dirs["virt"])
    query, cands = TEXTS_A[0], TEXTS_B
    p1 = _reference_probs(load_model_dir(model_dirs["virt"]), [query] * len(cands), cands)[:, 1]
    ranked = m.rank(query, cands)
    assert [i for i, _, _ in ranked] == list(np.argsort(-p1, kind="stable"))
    assert [t for _, t, _ in ranked] == [cands[i] for i, _, _ in ranked]
    np.testing.assert_allclose([s for _, _, s in ranked], np.sort(p1)[::-1], atol=1e-5)
    assert m.rank(query, cands, top_k=2) == ranked[:2]
    assert m.rank(query, []) == []


def test_rank_by_cosine_without_a_classifier(cosine_dir):
    m = textmatch.load(cosine_dir)
    with pytest.raises(textmatch.BackendError, match="no classifier"):
        m.predict([("a", "b")])
    loaded = load_model_dir(cosine_dir)
    q = _reference_vector(loaded, TEXTS_A[0])
    cos = np.array([_reference_vector(loaded, c) @ q for c in TEXTS_B])
    ranked = m.rank(TEXTS_A[0], TEXTS_B)
    assert [i for i, _, _ in ranked] == list(np.argsort(-cos, kind="stable"))
    np.testing.assert_allclose([s for _, _, s in ranked], np.sort(cos)[::-1], atol=1e-5)


def test_clear_errors_for_bad_input(model_dirs, workdir):  # noqa: F811
    ce = textmatch.load(model_dirs["cross_encoder"])
    with pytest.raises(textmatch.BackendError, match="encode needs an sbert or virt model"):
        ce.encode(["x"])
    with pytest.raises(TypeError, match=r"pairs: expected a list of \(text_a, text_b\) tuples"):
        ce.predict(["just one text"])
    with pytest.raises(TypeError, match="pairs \\(text_b\\): expected a list of strings"):
        ce.predict([("a", 3)])
    with pytest.raises(TypeError, match="candidates: expected a list of strings"):
        ce.rank("q", "a string, not a list")
    assert ce.predict([]).shape == (0, 2)
    with pytest.raises(textmatch.BackendError, match="no such directory"):
        textmatch.load(workdir / "nope")
    with pytest.raises(textmatch.BackendError, match="not a model directory"):
        textmatch.load(workdir)
