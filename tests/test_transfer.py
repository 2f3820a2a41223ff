"""Teacher-labelled transfer pairs (issue 29, training/transfer.py): the hard-label mask worked by hand
(one device and two replicas), the sources against numpy brute force, determinism, the unlabelled file,
the teacher-logit cache, and distill / virt end to end with every source on."""

import json
import types

import numpy as np
import pytest
import tensorflow as tf

import run_tasks
from data.readers import DataError, PairData
from distill.losses import kd_terms
from modeling.task_model import cross_entropy
from training import transfer as tr
from training.inputs import Splits


def _ce_rows(labels, logits):
    z = np.asarray(logits, np.float64)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return np.array([-log_p[i, y] for i, y in enumerate(labels)])


def _kl_rows(s, t, T):
    def log_softmax(z):
        z = np.asarray(z, np.float64) / T
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    ls, lt = log_softmax(s), log_softmax(t)
    return (np.exp(lt) * (lt - ls)).sum(axis=1)


# ----------------------------------------------------------------------------- the mask, by hand
S = [[0.5, -0.3, 1.0], [1.2, 0.4, -2.0], [-2.0, 3.0, 0.1], [0.3, 0.3, 0.9]]
TL = [[2.0, -1.0, 0.0], [0.1, 0.3, 3.0], [0.0, 0.0, 1.0], [1.5, -0.5, 0.2]]
GOLD = [2, 0]  # rows 0, 1 are gold; rows 2, 3 are transfer pairs (label NO_LABEL)


def _by_hand(alpha, T, weight):
    """alpha * (1/B) sum_gold w CE + (1 - alpha) T^2 (1/B) sum_all KL: the transfer rows' CE dropped."""
    ce = _ce_rows(GOLD, S[:2])
    return alpha * (weight * ce).sum() / 4 + (1 - alpha) * T * T * _kl_rows(S, TL, T).mean()


def test_transfer_rows_add_the_soft_term_only_and_their_label_is_never_read():
    labels = tf.constant(GOLD + [tr.NO_LABEL, tr.NO_LABEL])
    w = tf.constant([2.0, 2.0, 0.0, 0.0])  # N / N_gold = 4 / 2
    terms = kd_terms(labels, tf.constant(S), tf.constant(TL), 0.3, 2.0, hard_weight=w)
    assert float(terms["ce"] + terms["kd"]) == pytest.approx(_by_hand(0.3, 2.0, 2.0), rel=1e-5)
    # The gold rows' term is their mean CE, the scale it has without transfer pairs.
    assert float(terms["ce"]) == pytest.approx(0.3 * _ce_rows(GOLD, S[:2]).mean(), rel=1e-5)
    # The placeholder is out of every class range: read by a CE, it fails instead of training on a guess.
    with pytest.raises(tf.errors.InvalidArgumentError):
        cross_entropy(labels, tf.constant(S))


def test_virt_loss_terms_drop_the_ce_of_transfer_rows():
    from virt.model import VirtTraining

    me = types.SimpleNamespace(interaction_weight=3.0, kd_weight=0.5, weight_schedule="constant", _step=0,
                               _total_steps=1)
    x = {"hard_weight": tf.constant([2.0, 2.0, 0.0, 0.0])}
    y_pred = {"logits": tf.constant(S), "virt": tf.constant(0.25), "kd": tf.constant(0.7)}
    terms = VirtTraining.loss_terms(me, x, tf.constant(GOLD + [tr.NO_LABEL] * 2), y_pred)
    assert float(terms["ce"]) == pytest.approx((2.0 * _ce_rows(GOLD, S[:2])).sum() / 4, rel=1e-5)
    assert float(terms["virt"]) == pytest.approx(0.75) and float(terms["kd"]) == pytest.approx(0.35)


def test_the_mask_under_two_replicas_gives_the_global_batch_loss():
    """MirroredStrategy: each replica's terms / 2, summed, are the one-device terms of the global batch."""
    devices = tf.config.list_logical_devices("CPU")
    if len(devices) < 2:
        pytest.skip("needs the 2 logical CPUs of conftest.py")
    strategy = tf.distribute.MirroredStrategy([d.name for d in devices[:2]])
    labels = np.array(GOLD + [tr.NO_LABEL] * 2, np.int32)
    # Rows 0 and 2 on one replica, 1 and 3 on the other: a gold and a transfer row each... and the
    # uneven split too (both gold rows on replica 0).
    for order in ([0, 2, 1, 3], [0, 1, 2, 3]):
        x = {"s": np.array(S, np.float32)[order], "t": np.array(TL, np.float32)[order],
             "w": np.array([2.0, 2.0, 0.0, 0.0], np.float32)[order]}
        ds = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices((x, labels[order])).batch(4))

        def step(xb, yb):
            terms = kd_terms(yb, xb["s"], xb["t"], 0.3, 2.0, hard_weight=xb["w"])
            return (terms["ce"] + terms["kd"]) / strategy.num_replicas_in_sync

        per = strategy.run(step, args=next(iter(ds)))
        total = float(strategy.reduce(tf.distribute.ReduceOp.SUM, per, axis=None))
        assert total == pytest.approx(_by_hand(0.3, 2.0, 2.0), rel=1e-5)


def test_with_transfer_weights_and_placeholder_labels():
    train = PairData(["a1", "a2", "a3"], ["b1", "b2", "b3"], ["1", "0", "1"], [2, 3, 4], "t.csv")
    splits, w = tr.with_transfer(Splits(train, None, None, ["0", "1"]), tr.pair_data(["x"], ["y"]))
    assert splits.train.labels == ["1", "0", "1", None] and w.tolist() == pytest.approx([4 / 3] * 3 + [0.0])
    from training.inputs import tokenize

    class Model:
        def featurize(self, tok, a, b, n):
            return {"input_ids": [[1]] * len(a)}
    assert tokenize(Model(), None, splits.train, ["0", "1"], 8, "train").labels.tolist() == [1, 0, 1, tr.NO_LABEL]


# ----------------------------------------------------------------------------- the sources
TEXT_A = ["t0", "t1", "t2", "t3", "t1", "t5", "t6"]
TEXT_B = ["t1", "t2", "t3", "t4", "t5", "t0", "t0"]


def test_random_repairs_never_reproduce_a_training_pair():
    pairs = set(zip(TEXT_A, TEXT_B)) | set(zip(TEXT_B, TEXT_A))
    idx = tr.random_repairs(TEXT_A, TEXT_B, 200, np.random.default_rng(0))
    assert len(idx) == 200
    got = [(TEXT_A[i], TEXT_B[j]) for i, j in idx]
    assert not [p for p in got if p in pairs or p[0] == p[1]]
    assert len(set(got)) > 10  # random, not one pair


def test_hard_repairs_are_the_true_nearest_neighbours():
    rng = np.random.default_rng(1)
    vec = {t: rng.normal(size=5) for t in set(TEXT_A + TEXT_B)}
    embed = lambda texts: np.stack([vec[t] for t in texts])  # noqa: E731
    got = tr.hard_repairs(TEXT_A, TEXT_B, embed)
    pairs = set(zip(TEXT_A, TEXT_B)) | set(zip(TEXT_B, TEXT_A))
    cos = lambda u, v: u @ v / np.linalg.norm(u) / np.linalg.norm(v)  # noqa: E731
    want = []
    for queries, keys, a_side in ((TEXT_A, TEXT_B, True), (TEXT_B, TEXT_A, False)):
        for q in dict.fromkeys(queries):
            ok = [k for k in dict.fromkeys(keys) if k != q and (q, k) not in pairs]
            best = max(ok, key=lambda k: cos(vec[q], vec[k]))
            want.append((q, best) if a_side else (best, q))
    assert got == want
    assert not [p for p in got if p in pairs]


def _vocab_tokens(n):
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" if i % 3 else f"##w{i}" for i in range(n - 5)]


def test_embedding_neighbours_are_the_true_neighbours_of_the_same_kind():
    rng = np.random.default_rng(2)
    tokens = _vocab_tokens(40)
    m = rng.normal(size=(40, 6))
    got = tr.embedding_neighbours(m, [7, 9, 2, 12], 4, tokens)
    assert set(got) == {7, 9, 12}  # [CLS] (2) is never replaced
    e = m / np.linalg.norm(m, axis=1, keepdims=True)
    for i, nb in got.items():
        cand = [j for j in range(5, 40) if j != i and tokens[j].startswith("##") == tokens[i].startswith("##")]
        want = sorted(cand, key=lambda j: -(e[i] @ e[j]))[:4]
        assert nb == want
    rng2 = np.random.default_rng(0)
    out = tr.replace_pieces([7, 9, 2, 12] * 50, got, 0.5, rng2)
    changed = [(a, b) for a, b in zip([7, 9, 2, 12] * 50, out) if a != b]
    assert changed and all(b in got[a] for a, b in changed)
    assert 60 < len(changed) < 100  # about p x 150 replaceable pieces (2 is never)
    assert tr.replace_pieces([7, 9, 12], got, 1.0, rng2) != [7, 9, 12]


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory):
    from data import build_vocab
    from modeling.encoder import BertEncoder
    from modeling.tokenization import PairTokenizer

    texts = ["how do i open an account", "close my card today", "reset the password now", "book a flight to rome",
             "open a new account", "cancel my card", "change the password", "a flight to paris"]
    tok = PairTokenizer(build_vocab(texts, tmp_path_factory.mktemp("v") / "vocab.txt", lang="en", min_freq=1))
    enc = BertEncoder(vocab_size=tok.vocab_size, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                      max_position=32, hidden_dropout=0.0, attention_dropout=0.0, name="encoder")
    enc({"input_ids": tf.constant([[2, 5, 3]]), "attention_mask": tf.constant([[1, 1, 1]])})
    train = PairData(texts[:4], texts[4:], ["1", "0", "1", "0"], [2, 3, 4, 5], "train.csv")
    return tok, enc, train


def _cfg(tmp_path, *sets):
    from config import load_config

    return load_config(None, ["task=distill", "train.max_seq_len=16", *sets])


def test_transfer_pairs_are_a_function_of_the_seed(tiny_student, tmp_path):
    tok, enc, train = tiny_student
    every = "transfer.sources=[swap,random,hard,replace]"
    build = lambda *s: tr.build_transfer(_cfg(tmp_path, every, "transfer.ratio=4", *s), train, (tok, enc))  # noqa: E731
    a, info = build()
    b, _ = build()
    c, _ = build("transfer.seed=1")
    assert info["pairs"] == {"swap": 4, "random": 4, "hard": 4, "replace": 4} and len(a) == 16
    assert (a.text_a, a.text_b) == (b.text_a, b.text_b)
    assert (a.text_a, a.text_b) != (c.text_a, c.text_b)
    assert a.labels == [None] * 16
    # hard: the mean-pooled embeddings of the encoder given, by numpy brute force elsewhere; here the
    # embedding function is the encoder's (mean over [CLS] t [SEP]).
    e = tr.mean_embeddings(enc, tok, ["open a new account"], 16, 4)
    ids = tok.encode_texts(["open a new account"], 16)[0]
    states = enc({"input_ids": tf.constant([ids]), "attention_mask": tf.ones((1, len(ids)), tf.int32)})
    np.testing.assert_allclose(e[0], states["last_hidden_state"][0].numpy().mean(0), atol=1e-5)
    # replace: both texts rewritten from neighbour pieces of the vocabulary (lower-cased words)
    replaced = a.text_a[12:]
    assert replaced != [train.text_a[i] for i in range(4)] or a.text_b[12:] != train.text_b


def test_ratio_cap_and_shares(tmp_path):
    t = _cfg(tmp_path, "transfer.sources=[swap,random]", "transfer.unlabeled=u.csv", "transfer.ratio=2",
             "transfer.max_pairs=10").transfer
    assert tr.shares(t, 100) == {"unlabeled": 4, "swap": 3, "random": 3}
    from config import ConfigError
    with pytest.raises(ConfigError, match="transfer.sources"):
        _cfg(tmp_path, "transfer.sources=[swop]")
    with pytest.raises(ConfigError, match="distill.swap"):
        _cfg(tmp_path, "transfer.sources=[random]", "distill.swap=true")
    with pytest.raises(ConfigError, match="virt.distill=false"):
        _cfg(tmp_path, "task=virt", "transfer.unlabeled=u.csv", "virt.distill=false")


def test_unlabeled_file_without_label_column_and_bad_files_named(tmp_path):
    good = tmp_path / "logs.csv"
    good.write_text("sentence1,sentence2\nhow do i pay,how to pay\nreset it,reset the password\nbook,a flight\n")
    cfg = _cfg(tmp_path, f"transfer.unlabeled={good}")
    pairs = tr.read_unlabeled(cfg)
    assert pairs.text_a == ["how do i pay", "reset it", "book"] and pairs.labels == [None] * 3
    for name, text, why in [("empty.csv", "", "empty"), ("cols.csv", "q1,q2\na,b\n", "sentence1"),
                            ("missing.csv", None, "")]:
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        with pytest.raises(DataError, match=f"transfer.unlabeled={path}") as e:
            tr.read_unlabeled(_cfg(tmp_path, f"transfer.unlabeled={path}"))
        assert why in str(e.value)


# ----------------------------------------------------------------------------- end to end
def every_source(root):
    """`--set` values turning every transfer source on (an unlabelled file of 3 pairs written in `root`)."""
    from tests.tiny_runs import write_csv

    unlabeled = write_csv(root / "logs.csv", [("how do i pay", "how to pay"), ("reset it", "reset the password"),
                                              ("a flight", "book a flight")], header=("sentence1", "sentence2"))
    return [f"transfer.unlabeled={unlabeled}", "transfer.sources=[swap,random,hard,replace]", "transfer.ratio=2"]


def check_transfer_run(run, train_file, n_valid, n_test):
    """A finished distill / virt run (tests/test_distill.py, tests/test_virt.py) with `every_source` on."""
    m = json.loads((run / "metrics.json").read_text())
    t = m["transfer"]
    assert t["sources"] == ["unlabeled", "swap", "random", "hard", "replace"]
    n_gold = len(open(train_file).read().splitlines()) - 1
    asked = tr.shares(types.SimpleNamespace(unlabeled="logs.csv", sources=t["sources"][1:], ratio=2, max_pairs=None),
                      n_gold)
    assert sum(asked.values()) == 2 * n_gold and asked["unlabeled"] > 3
    assert t["pairs"] == {**asked, "unlabeled": 3}  # ratio 2 in equal shares; the file has 3 pairs
    assert m["valid"]["n"] == n_valid and m["test"]["n"] == n_test  # valid / test never augmented
    meta = json.loads((run / "model" / "model.json").read_text())
    assert meta["transfer"] == t
    assert meta["data"]["files"]["train"]["rows"] == n_gold  # the contract names the gold file as read
    return m, t
