"""sbert and embed tasks (issue 6): loss units by hand, threshold choice, targets, saved vs
in-memory embeddings, the embed task (file and stdin), and the sbert task end to end (tiny)."""

import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf

import run_tasks
from data import read_texts
from senbert.losses import cosine, cosine_loss, mnrl_loss, softmax_loss
from training.metrics import best_threshold
from training.trainer import evaluator
from training.trainer import Split

# max_seq_len 8: every sample sentence is longer, so all batches have one width and each
# tf.function (train step, evaluation) is traced once; tracing dominates these tiny runs.
TINY = ["model.init=null", "model.vocab_lang=en", "model.vocab_min_freq=1", "model.hidden_size=32",
        "model.num_heads=4", "model.intermediate_size=64", "model.max_position=64", "model.num_layers=1",
        "train.batch_size=16", "train.max_seq_len=8", "train.epochs=1", "train.verbose=0",
        "train.steps_per_epoch=3"]


# ----------------------------------------------------------------------------- loss units by hand
def test_cosine_loss_by_hand():
    u = tf.constant([[1.0, 0.0], [1.0, 1.0], [3.0, 4.0]])
    v = tf.constant([[0.0, 1.0], [2.0, 2.0], [4.0, 3.0]])
    np.testing.assert_allclose(cosine(u, v).numpy(), [0.0, 1.0, 0.96], atol=1e-6)
    # (0 - 0.5)^2, (1 - 1)^2, (0.96 - 0)^2
    expected = (0.25 + 0.0 + 0.96 ** 2) / 3
    assert float(cosine_loss(u, v, tf.constant([0.5, 1.0, 0.0]))) == pytest.approx(expected, rel=1e-5)


def _ce(row, target):
    return -math.log(math.exp(row[target]) / sum(math.exp(x) for x in row))


def test_mnrl_loss_two_by_two_by_hand_and_positive_masking():
    u = tf.constant([[1.0, 0.0], [0.0, 2.0]])  # normalised inside: [1, 0], [0, 1]
    v = tf.constant([[3.0, 0.0], [0.6, 0.8]])  # [1, 0], [0.6, 0.8]
    scale = 2.0
    # cos(u_i, v_j) = [[1, 0.6], [0, 0.8]]; row i's answer is column i.
    row0, row1 = _ce([2.0, 1.2], 0), _ce([0.0, 1.6], 1)
    assert float(mnrl_loss(u, v, scale)) == pytest.approx((row0 + row1) / 2, rel=1e-5)
    # Only positive pairs are anchors, the others' v stay in the batch as negatives.
    assert float(mnrl_loss(u, v, scale, positive=tf.constant([1, 0]))) == pytest.approx(row0, rel=1e-5)
    assert float(mnrl_loss(u, v, scale, positive=tf.constant([0, 1]))) == pytest.approx(row1, rel=1e-5)
    assert float(mnrl_loss(u, v, scale, positive=tf.constant([0, 0]))) == 0.0


def test_mnrl_loss_identity_batch_is_near_zero():
    rng = np.random.default_rng(0)
    u = rng.normal(size=(8, 64)).astype(np.float32)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    assert float(mnrl_loss(tf.constant(u), tf.constant(u), scale=200.0)) < 1e-4
    # The same batch with the answers shuffled is a hard one.
    assert float(mnrl_loss(tf.constant(u), tf.constant(u[::-1].copy()), scale=200.0)) > 10.0


def test_softmax_loss_is_cross_entropy():
    logits = [[0.2, -1.0, 0.5], [1.5, 0.3, -0.2]]
    expected = (_ce(logits[0], 2) + _ce(logits[1], 0)) / 2
    assert float(softmax_loss(tf.constant([2, 0]), tf.constant(logits))) == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------- threshold, targets, evaluator
def test_best_threshold_by_hand():
    acc, f1, t = best_threshold(np.array([0.1, 0.4, 0.6, 0.9]), np.array([False, False, True, True]))
    assert (acc, f1) == (1.0, 1.0) and t == pytest.approx(0.5)
    # Not separable: 0.2 and 0.6 both give 4/5; the tie goes to the higher F1 (6/7 at 0.2, 4/5 at 0.6).
    acc, f1, t = best_threshold(np.array([0.1, 0.3, 0.5, 0.7, 0.9]),
                                np.array([False, True, False, True, True]))
    assert acc == pytest.approx(0.8) and f1 == pytest.approx(6 / 7) and t == pytest.approx(0.2)
    # All positive: a threshold below every cosine.
    acc, _, t = best_threshold(np.array([0.3, 0.5]), np.array([True, True]))
    assert acc == 1.0 and t < 0.3


def _fake_predictions(monkeypatch):
    import training.trainer as trainer

    monkeypatch.setattr(trainer, "predict_outputs", lambda model, feats, bs: {"cosine": np.asarray(feats["cos"])})


def test_evaluator_test_split_reuses_the_valid_threshold(monkeypatch):
    _fake_predictions(monkeypatch)
    evaluate = evaluator(["0", "1"], 8)
    valid = Split("valid", {"cos": [0.1, 0.4, 0.6, 0.9]}, np.array([0, 0, 1, 1]))
    test = Split("test", {"cos": [0.1, 0.2, 0.3, 0.45]}, np.array([0, 0, 1, 1]))  # own best: 0.25
    mv = evaluate(None, valid)
    assert mv["cosine_threshold"] == pytest.approx(0.5)
    assert mv["cosine_accuracy"] == 1.0 and mv["cosine_f1"] == 1.0 and mv["cosine_auc"] == 1.0
    mt = evaluate(None, test)
    assert mt["cosine_threshold"] == pytest.approx(0.5)  # the valid one, not 0.25
    assert mt["cosine_accuracy"] == 0.5 and mt["cosine_f1"] == 0.0 and mt["cosine_auc"] == 1.0
    assert "spearman" not in mv and "accuracy" not in mv  # no classifier, no classifier metrics


def test_evaluator_reports_spearman_for_graded_labels(monkeypatch):
    _fake_predictions(monkeypatch)
    names = [str(i) for i in range(6)]
    evaluate = evaluator(names, 8)
    labels = np.array([0, 1, 2, 3, 4, 5, 5, 0])
    m = evaluate(None, Split("valid", {"cos": [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.9, 0.0]}, labels))
    assert m["spearman"] == pytest.approx(1.0)  # cosine ranks pairs as their grades (ties included)
    m = evaluate(None, Split("valid", {"cos": [0.9, 0.7, 0.5, 0.3, 0.1, 0.0, 0.0, 0.9]}, labels))
    assert m["spearman"] == pytest.approx(-1.0)


def test_graded_cosine_metrics_treat_high_grades_as_positive(monkeypatch):
    _fake_predictions(monkeypatch)
    names = [str(i) for i in range(6)]
    evaluate = evaluator(names, 8)
    labels = np.array([0, 1, 2, 3, 4, 5])
    m = evaluate(None, Split("valid", {"cos": [0.0, 0.1, 0.3, 0.5, 0.7, 0.95]}, labels))
    # A cosine that ranks every pair by its grade separates low from high grades perfectly.
    assert m["cosine_auc"] == 1.0 and m["cosine_accuracy"] == 1.0


def test_read_texts_ids_and_blank_lines(tmp_path):
    from data import DataError

    f = tmp_path / "texts.txt"
    f.write_text("first text\n\nq7\tsecond text\nthird\n", encoding="utf-8")
    assert read_texts(str(f)) == (["1", "q7", "4"], ["first text", "second text", "third"])
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(DataError, match="empty.txt: no texts"):
        read_texts(str(tmp_path / "empty.txt"))


# ----------------------------------------------------------------------------- saved == in memory
@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from data import build_vocab
    from modeling.tokenization import PairTokenizer

    root = tmp_path_factory.mktemp("sbert_vocab")
    texts = ["how do i open a savings account", "close my credit card please", "reset the login password",
             "book a flight to rome for tomorrow", "return the jacket after it ships"]
    return PairTokenizer(build_vocab(texts, root / "vocab.txt", lang="zh", min_freq=1))


TEXTS = ["open a savings account", "close my card", "reset the password", "book a flight to rome tomorrow"]


def _padded(tok, texts, max_len=24):
    from training.pipeline import make_dataset

    return next(iter(make_dataset({"input_ids": tok.encode_texts(texts, max_len)}, batch_size=len(texts),
                                  bucket=False)))


def _encoder(vocab_size):
    from modeling.encoder import BertEncoder

    return BertEncoder(vocab_size=vocab_size, hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64,
                       max_position=64, hidden_dropout=0.0, attention_dropout=0.0, name="encoder")


def _sbert(encoder, pooling, normalize):
    from senbert.model import SentenceBert

    model = SentenceBert(encoder, num_labels=2, objective="cosine", pooling=pooling, normalize=normalize,
                         dropout=0.0, name="sbert")
    model(model.dummy_inputs())
    return model


def test_saved_model_dir_embeddings_equal_in_memory(tok, tmp_path):
    from modeling.model_dir import load_model_dir, save_model_dir

    x = _padded(tok, TEXTS)
    assert int(tf.reduce_min(tf.reduce_sum(x["attention_mask"], 1))) < x["input_ids"].shape[1]  # real padding
    encoder, seen = _encoder(tok.vocab_size), {}
    for pooling in ("mean", "cls", "max"):
        for normalize in (True, False):
            model = _sbert(encoder, pooling, normalize)  # every combination shares the same encoder
            mem = model.encode(x["input_ids"], x["attention_mask"]).numpy()
            path = save_model_dir(model, tmp_path / f"{pooling}-{normalize}", tok, labels=["0", "1"], max_seq_len=24)
            meta = json.loads((path / "model.json").read_text())
            assert meta["kind"] == "sbert"
            assert meta["model"]["config"]["pooling"] == pooling and meta["model"]["config"]["normalize"] == normalize
            loaded = load_model_dir(path, expect_kind="sbert")
            assert (loaded.model.pooling, loaded.model.normalize) == (pooling, normalize)
            disk = loaded.model.encode(x["input_ids"], x["attention_mask"]).numpy()
            np.testing.assert_allclose(disk, mem, atol=1e-5)
            if normalize:
                np.testing.assert_allclose(np.linalg.norm(mem, axis=1), 1.0, atol=1e-5)
            seen[(pooling, normalize)] = mem
    # The settings really matter (the test would be vacuous otherwise).
    assert not np.allclose(seen[("mean", False)], seen[("cls", False)], atol=1e-3)
    assert not np.allclose(seen[("mean", False)], seen[("max", False)], atol=1e-3)
    assert not np.allclose(seen[("mean", False)], seen[("mean", True)], atol=1e-3)


# ----------------------------------------------------------------------------- embed task
@pytest.fixture(scope="module")
def sbert_dir(tok, tmp_path_factory):
    """A saved tiny sbert model (max pooling, normalised) and its in-memory embeddings of TEXTS."""
    from modeling.model_dir import save_model_dir

    path = tmp_path_factory.mktemp("sbert_dir") / "model"
    model = _sbert(_encoder(tok.vocab_size), "max", True)
    x = _padded(tok, TEXTS)
    save_model_dir(model, path, tok, labels=["0", "1"], max_seq_len=24)
    return path, model.encode(x["input_ids"], x["attention_mask"]).numpy()


def _check_embed_out(out, expected, ids):
    emb = np.load(out / "embeddings.npy")
    assert emb.dtype == np.float32 and emb.shape == (len(ids), 32)
    assert (out / "ids.txt").read_text().split("\n")[:-1] == ids
    np.testing.assert_allclose(emb, expected[:len(ids)], atol=1e-5)
    info = json.loads((out / "embeddings.json").read_text())
    assert (info["pooling"], info["normalize"], info["n"], info["dim"]) == ("max", True, len(ids), 32)


def test_embed_task_from_a_file(sbert_dir, tmp_path, monkeypatch):
    path, expected = sbert_dir
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "texts.txt"
    f.write_text("\n".join(TEXTS[:2]) + "\n\nx9\t" + TEXTS[2] + "\n", encoding="utf-8")
    out = tmp_path / "emb"
    assert run_tasks.main(["--task", "embed", "--out", str(out), "--set", f"model.init={path}",
                           f"data.test={f}"]) == 0
    _check_embed_out(out, expected, ["1", "2", "x9"])


def test_embed_task_from_stdin(sbert_dir, tmp_path, monkeypatch):
    """`read_texts('-')` reads file descriptor 0: point fd 0 at a file for the call."""
    path, expected = sbert_dir
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "stdin.txt"
    f.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    out = tmp_path / "emb"
    saved = os.dup(0)
    fd = os.open(f, os.O_RDONLY)
    try:
        os.dup2(fd, 0)
        rc = run_tasks.main(["--task", "embed", "--out", str(out), "--set", f"model.init={path}"])
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(fd)
    assert rc == 0
    _check_embed_out(out, expected, ["1", "2", "3", "4"])


# ----------------------------------------------------------------------------- sbert task end to end
@pytest.fixture(scope="module")
def sbert_runs(tmp_path_factory):
    from data import make_sample

    root = tmp_path_factory.mktemp("sbert_e2e")
    files = make_sample(root / "data", n_train=96, n_valid=32, n_test=32)
    data = [f"data.train={files['train']}", f"data.valid={files['valid']}", f"data.test={files['test']}"]
    runs = {"softmax": [], "cosine": ["sbert.pooling=max", "sbert.normalize=true"], "mnrl": ["sbert.pooling=cls"]}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for objective, extra in runs.items():
            assert run_tasks.main(["--task", "sbert", "--out", str(root / objective), "--set", *TINY, *data,
                                   f"sbert.objective={objective}", *extra]) == 0
    return root


@pytest.mark.parametrize("objective,pooling,normalize", [("softmax", "mean", False), ("cosine", "max", True),
                                                         ("mnrl", "cls", False)])
def test_sbert_task_end_to_end(sbert_runs, objective, pooling, normalize):
    run = sbert_runs / objective
    m = json.loads((run / "metrics.json").read_text())
    assert m["sbert"] == {"objective": objective, "pooling": pooling, "normalize": normalize}
    for split in ("valid", "test"):
        for k in ("cosine_accuracy", "cosine_f1", "cosine_threshold", "cosine_auc"):
            assert np.isfinite(m[split][k]), (split, k)
        assert 0 <= m[split]["cosine_accuracy"] <= 1 and 0 <= m[split]["cosine_auc"] <= 1
        assert ("accuracy" in m[split] and "f1" in m[split]) == (objective == "softmax")
        assert "spearman" not in m[split]
    assert m["test"]["cosine_threshold"] == m["valid"]["cosine_threshold"]
    assert m["training"]["selection_metric"] == ("accuracy" if objective == "softmax" else "cosine_accuracy")
    assert m["training"]["steps"] == 3

    meta = json.loads((run / "model" / "model.json").read_text())
    cfg = meta["model"]["config"]
    assert meta["kind"] == "sbert" and meta["task"] == "sbert"
    assert (cfg["objective"], cfg["pooling"], cfg["normalize"]) == (objective, pooling, normalize)
    assert cfg["encoder"]["num_layers"] == 1
