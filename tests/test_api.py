"""textmatch.py, the Python API: each call against the Keras model run by hand, one pair at a time.

The tiny random models come from test_export.py's fixtures (imported, not copied). The
reference path shares nothing with the API's but the tokenizer: no runtime, no batching, no
length sort, no padding (one unpadded row per call).
"""

from __future__ import annotations

from pathlib import Path

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
    assert ce.predict([]).shape == (0, 2)
    with pytest.raises(textmatch.BackendError, match="no such directory"):
        textmatch.load(workdir / "nope")
    (workdir / "model.json.txt").write_text("{}")
    with pytest.raises(textmatch.BackendError, match="a file, not a model or export directory"):
        textmatch.load(workdir / "model.json.txt")  # was "no such directory"
    with pytest.raises(textmatch.BackendError, match="not a checkpoint directory"):
        textmatch.load(workdir)  # neither model.json nor a HuggingFace or TF1 checkpoint


# ----------------------------------------------------------------------------- single inputs, iterables
@pytest.fixture(scope="module")
def matchers(model_dirs):  # noqa: F811
    return {kind: textmatch.load(model_dirs[kind]) for kind in ("cross_encoder", "sbert")}


def test_one_text_or_pair_gives_one_row_and_any_iterable_a_matrix(matchers):
    ce, sb = matchers["cross_encoder"], matchers["sbert"]
    pairs = list(zip(TEXTS_A, TEXTS_B))
    many = ce.predict(pairs)
    # alone, a row is padded to its own length: the same numbers to float rounding
    np.testing.assert_allclose(ce.predict(pairs[1]), many[1], atol=1e-6)  # a tuple: one pair -> [classes]
    np.testing.assert_allclose(ce.predict(list(pairs[1])), many[1], atol=1e-6)  # a list of two strings: one pair
    np.testing.assert_array_equal(ce.predict(p for p in pairs), many)  # a generator, read once
    assert ce.predict(pairs[1]).shape == (2,) and ce.predict(pairs[:1]).shape == (1, 2)
    vectors = sb.encode(TEXTS_A)
    np.testing.assert_allclose(sb.encode(TEXTS_A[2]), vectors[2], atol=1e-6)  # one text -> [dim], as sentence-transformers
    assert sb.encode(TEXTS_A[2]).shape == (32,)
    np.testing.assert_array_equal(sb.encode(t for t in TEXTS_A), vectors)
    np.testing.assert_array_equal(sb.encode(tuple(TEXTS_A)), vectors)
    assert sb.encode(iter([])).shape == (0, 32)
    ranked = ce.rank(TEXTS_A[0], TEXTS_B)
    assert len(ranked) == len(TEXTS_B) > 2
    assert ce.rank(TEXTS_A[0], (c for c in TEXTS_B)) == ranked  # the generator of the issue returned []
    assert ce.rank(TEXTS_A[0], TEXTS_B, top_k=1) == ranked[:1]
    assert ce.rank(TEXTS_A[0], TEXTS_B, top_k=np.int64(2)) == ranked[:2]
    assert ce.rank(TEXTS_A[0], TEXTS_B, top_k=10) == ranked


SURROGATE = "ab\ud800c"  # a lone surrogate at character 2
BAD_ARGUMENTS = [  # (matcher, method, args, kwargs, error, message): every message names the argument
    ("cross_encoder", "predict", (None,), {}, TypeError,
     "pairs: expected a (text_a, text_b) pair or an iterable of pairs, got None"),
    ("cross_encoder", "predict", ("just one text",), {}, TypeError,
     "pairs: expected a (text_a, text_b) pair or an iterable of pairs, got 'just one text'"),
    ("cross_encoder", "predict", (["a", "b", "c"],), {}, TypeError, "pairs[0]: expected a (text_a, text_b) pair, got 'a'"),
    ("cross_encoder", "predict", ([("a", "b"), ("a", "b", "c")],), {}, TypeError,
     "pairs[1]: expected a (text_a, text_b) pair, got a tuple of 3"),
    ("cross_encoder", "predict", ([("a", "b"), ("c", None)],), {}, TypeError, "pairs[1][1]: expected a string, got None"),
    ("cross_encoder", "predict", (("a", 3),), {}, TypeError, "pairs[1]: expected a string, got 3"),
    ("cross_encoder", "predict", ([("a", SURROGATE)],), {}, ValueError,
     "pairs[0][1]: not valid Unicode text: a lone surrogate \\ud800 at character 2"),
    ("cross_encoder", "predict", ([("a", "b")],), {"batch_size": 0}, ValueError,
     "batch_size: expected an integer >= 1, got 0"),
    ("cross_encoder", "predict", ([("a", "b")],), {"batch_size": -1}, ValueError,
     "batch_size: expected an integer >= 1, got -1"),
    ("cross_encoder", "predict", ([("a", "b")],), {"batch_size": "8"}, TypeError,
     "batch_size: expected an integer >= 1, got '8'"),
    ("sbert", "encode", (None,), {}, TypeError, "texts: expected a string or an iterable of strings, got None"),
    ("sbert", "encode", (["a", 7],), {}, TypeError, "texts[1]: expected a string, got 7"),
    ("sbert", "encode", (SURROGATE,), {}, ValueError,
     "texts: not valid Unicode text: a lone surrogate \\ud800 at character 2"),
    ("sbert", "encode", (["a", SURROGATE],), {}, ValueError,
     "texts[1]: not valid Unicode text: a lone surrogate \\ud800 at character 2"),
    ("sbert", "encode", (["a"],), {"batch_size": True}, TypeError, "batch_size: expected an integer >= 1, got True"),
    ("sbert", "rank", (None, ["a"]), {}, TypeError, "query: expected a string, got None"),
    ("sbert", "rank", ("q", "a string, not a list"), {}, TypeError,
     "candidates: expected an iterable of strings, got 'a string, not a list'"),
    ("sbert", "rank", ("q", ["a", None]), {}, TypeError, "candidates[1]: expected a string, got None"),
    ("sbert", "rank", ("q", ["a"]), {"top_k": -1}, ValueError, "top_k: expected None or an integer >= 1, got -1"),
    ("sbert", "rank", ("q", ["a"]), {"top_k": 0}, ValueError, "top_k: expected None or an integer >= 1, got 0"),
    ("sbert", "rank", ("q", ["a"]), {"top_k": 1.5}, TypeError, "top_k: expected None or an integer >= 1, got 1.5"),
    ("sbert", "rank", ("q", ["a"]), {"top_k": True}, TypeError, "top_k: expected None or an integer >= 1, got True"),
]


@pytest.mark.parametrize("kind, method, args, kwargs, error, message", BAD_ARGUMENTS,
                         ids=[f"{m}-{msg.split(':')[0]}-{i}" for i, (_, m, _, _, _, msg, ) in enumerate(BAD_ARGUMENTS)])
def test_bad_arguments_are_refused_naming_the_argument_and_the_item(matchers, kind, method, args, kwargs, error,
                                                                    message):
    with pytest.raises(error) as e:
        getattr(matchers[kind], method)(*args, **kwargs)
    assert str(e.value) == message


def test_a_lone_surrogate_is_refused_in_the_servers_words(matchers):
    """The server's message for the same text (serve.signatures.check_text), after its location."""
    from serve.signatures import ApiError, Limits, check_text

    with pytest.raises(ApiError) as served:
        check_text(SURROGATE, "instances[0].text_a", Limits())
    with pytest.raises(ValueError) as api:
        matchers["sbert"].encode([SURROGATE])
    assert str(api.value).split(": ", 1)[1] == served.value.message.split(": ", 1)[1]


def test_load_refuses_bad_arguments(model_dirs):  # noqa: F811
    with pytest.raises(TypeError, match=r"^path: expected a directory or a checkpoint name \(a str or a path\), got None$"):
        textmatch.load(None)
    with pytest.raises(ValueError, match=r"^backend: expected one of 'auto', 'onnx', 'openvino', 'tf', got 'keras'$"):
        textmatch.load(model_dirs["sbert"], backend="keras")
    with pytest.raises(ValueError, match=r"^threads: expected None or an integer >= 1, got 0$"):
        textmatch.load(model_dirs["sbert"], threads=0)


# ----------------------------------------------------------------------------- bare checkpoints
MINILM_FIXTURE = Path(__file__).parent / "fixtures" / "minilm_reference.npz"


@pytest.fixture(scope="module")
def random_encoder():
    from tests.test_checkpoints import random_encoder

    return random_encoder(seed=5)


def _checkpoint(encoder, kind, directory):
    """`encoder` written as a HuggingFace or Google TF1 checkpoint, or inside a masked-LM model directory
    (what --task pretrain writes): each is a model.init value, hence a `load` value."""
    from pretrain.model import MaskedLM
    from tests.test_checkpoints import VOCAB, google_arrays, hf_arrays, write_hf, write_tf1

    if kind == "hf":
        write_hf(directory, hf_arrays(encoder))
    elif kind == "tf1":
        write_tf1(directory, google_arrays(encoder))
    else:
        (directory.parent / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
        mlm = MaskedLM(encoder)
        mlm(mlm.dummy_inputs())
        save_model_dir(mlm, directory, PairTokenizer(directory.parent / "vocab.txt", lowercase=True), max_seq_len=16)
    return VOCAB


@pytest.mark.parametrize("kind", ["hf", "tf1", "mlm"])
def test_a_bare_checkpoint_encodes_mean_pooled_normalised_vectors(random_encoder, kind, tmp_path):
    """The reference: the original encoder on hand-built ids ([CLS] w.. [SEP], no tokenizer), mean of the
    last layer over the text's tokens, divided by its norm; ranked by cosine."""
    encoder = random_encoder
    vocab = _checkpoint(encoder, kind, tmp_path / kind)
    m = textmatch.load(tmp_path / kind)
    assert m.kind == "encoder" and m.labels == [] and not m.has_classifier
    texts = ["w5 w17 w40", "w88", "w3 w3 w9 w61 w70 w2"]

    def reference(text):
        ids = np.asarray([[2] + [vocab.index(w) for w in text.split()] + [3]], np.int32)
        h = np.asarray(encoder({"input_ids": ids, "attention_mask": np.ones_like(ids)})["last_hidden_state"])[0]
        v = h.mean(axis=0)
        return v / np.linalg.norm(v)

    want = np.stack([reference(t) for t in texts])
    np.testing.assert_allclose(m.encode(texts), want, atol=1e-5)
    np.testing.assert_allclose(m.encode(texts[0]), want[0], atol=1e-5)
    cos = want[1:] @ want[0]
    ranked = m.rank(texts[0], texts[1:])
    assert [i for i, _, _ in ranked] == list(np.argsort(-cos, kind="stable"))
    np.testing.assert_allclose([s for _, _, s in ranked], np.sort(cos)[::-1], atol=1e-5)
    with pytest.raises(textmatch.BackendError, match="a bare checkpoint has no classifier: fine-tune it first with "
                                                     f"--task finetune --set model.init={tmp_path / kind}"):
        m.predict(("w5", "w17"))
    with pytest.raises(textmatch.BackendError, match="int8 needs an export directory"):
        textmatch.load(tmp_path / kind, int8=True)


@pytest.fixture(scope="module")
def minilm():
    return textmatch.load("minilm")


def test_load_minilm_encodes_as_sentence_transformers(minilm):
    """all-MiniLM-L6-v2's sentence-transformers embedding is its mean-pooled last layer, L2-normalised: the
    fixture's PyTorch `mean_pooled` of the two single sentences (tools/make_minilm_fixture.py), normalised."""
    ref = np.load(MINILM_FIXTURE)
    pooled = ref["mean_pooled"][:2]  # rows 0-1: single sentences, [CLS] s [SEP]
    want = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    got = minilm.encode(list(ref["sentences"][:2]))
    assert got.shape == (2, 384)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert minilm.backend.max_len == 256  # sentence-transformers' max_seq_length of the model
    with pytest.raises(textmatch.BackendError, match="^minilm: a bare checkpoint has no classifier"):
        minilm.predict(("how old are you", "what is your age"))


def test_the_module_docstring_examples_run(minilm, monkeypatch):
    """textmatch's docstring, run as a doctest (its fine-tuned-model lines are skipped); `load("minilm")`
    is the fixture's, loaded once."""
    import doctest

    monkeypatch.setattr(textmatch, "load", lambda path, *a, **k: minilm if path == "minilm" else pytest.fail(path))
    result = doctest.testmod(textmatch, optionflags=doctest.ELLIPSIS, raise_on_error=False)
    assert result.attempted >= 4 and result.failed == 0


# ----------------------------------------------------------------------------- the import path
def test_a_module_named_like_a_project_package_is_named_at_import(tmp_path):
    """A `config.py` beside the user's script comes before the repository on the import path (Python puts
    the script's directory first): `import textmatch` says which module hides which package, instead of
    failing later in the project's code. (No TensorFlow: the check runs before any project import.)"""
    import os
    import subprocess
    import sys

    (tmp_path / "config.py").write_text("SETTING = 1\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(textmatch.ROOT)}
    r = subprocess.run([sys.executable, "-c", "import textmatch"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == (
        f"ImportError: textmatch needs its package 'config' ({textmatch.ROOT / 'config'}), but "
        f"{tmp_path / 'config.py'} comes first on the import path: rename that module or run from another directory")
