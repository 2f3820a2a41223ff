"""pretrain task (issue 4): masking statistics, whole-word masking, reproducible dynamic masks,
the loss on selected positions only, tied output weights, a tiny run whose MLM loss falls and
whose model directory fine-tunes, and read_sentences."""

import json

import numpy as np
import pytest
import tensorflow as tf

import run_tasks
from pretrain.model import MaskedLM, mask_tokens, masked_lm_loss

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIALS = (PAD, UNK, CLS, SEP, MASK)


def _batch(V=30, B=64, T=128, seed=0):
    """Random ids in [5, V) with [CLS] .. [SEP] and padding after a random length."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, V, size=(B, T)).astype(np.int32)
    lengths = rng.integers(10, T + 1, size=B)
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int32)
    ids[:, 0] = CLS
    ids[np.arange(B), lengths - 1] = SEP
    ids[mask == 0] = PAD
    ids[3, 5] = UNK  # specials inside the text too
    ids[7, 4] = MASK
    maskable = (mask == 1) & ~np.isin(ids, SPECIALS)
    return ids, mask, maskable


def _draw(ids, maskable, seed, V=30, word_starts=None):
    m, l = mask_tokens(tf.constant(ids), tf.constant(maskable), tf.constant(seed, tf.int64), V, MASK,
                       word_starts=None if word_starts is None else tf.constant(word_starts))
    return m.numpy(), l.numpy()


# ----------------------------------------------------------------------------- masking statistics
def test_masking_statistics_over_many_draws():
    V = 30
    ids, mask, maskable = _batch(V)
    n_maskable = n_sel = n_mask = n_rand = n_kept = 0
    for seed in range(8):
        masked, labels = _draw(ids, maskable, [seed, 7 * seed + 1], V)
        sel = labels >= 0
        # Never a special token or padding; labels -1 off the selected positions.
        assert not sel[~maskable].any()
        assert (labels[~sel] == -1).all()
        np.testing.assert_array_equal(labels[sel], ids[sel])
        np.testing.assert_array_equal(masked[~sel], ids[~sel])  # unselected tokens untouched
        assert ((masked >= 0) & (masked < V)).all()
        n_maskable += int(maskable.sum())
        n_sel += int(sel.sum())
        n_mask += int((masked[sel] == MASK).sum())
        n_kept += int((masked[sel] == ids[sel]).sum())
        n_rand += int(((masked[sel] != MASK) & (masked[sel] != ids[sel])).sum())
    assert n_sel / n_maskable == pytest.approx(0.15, abs=0.01)
    # The 10% "random" draws uniformly over [0, V): with prob 1/V it hits the original id (looks kept)
    # and with prob 1/V it hits [MASK] (looks masked; originals are never [MASK]).
    assert n_mask / n_sel == pytest.approx(0.8 + 0.1 / V, abs=0.02)
    assert n_kept / n_sel == pytest.approx(0.1 + 0.1 / V, abs=0.02)
    assert n_rand / n_sel == pytest.approx(0.1 * (1 - 2 / V), abs=0.02)
    assert n_mask + n_kept + n_rand == n_sel


def test_mask_rate_is_configurable():
    ids, _, maskable = _batch()
    _, labels = mask_tokens(tf.constant(ids), tf.constant(maskable), tf.constant([3, 4], tf.int64), 30, MASK,
                            rate=0.4)
    assert (labels.numpy() >= 0).sum() / maskable.sum() == pytest.approx(0.4, abs=0.02)


def test_batch_transform_never_selects_specials_or_padding():
    from modeling.encoder import BertEncoder

    enc = BertEncoder(vocab_size=30, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                      max_position=128, name="encoder")
    model = MaskedLM(enc, special_ids=SPECIALS, mask_id=MASK)
    ids, mask, maskable = _batch()
    x, labels = model.batch_transform({"input_ids": tf.constant(ids), "attention_mask": tf.constant(mask)},
                                      tf.constant([1, 2], tf.int64))
    sel = labels.numpy() >= 0
    assert sel.any() and not sel[~maskable].any()
    assert not sel[ids == UNK].any() and not sel[ids == MASK].any() and not sel[mask == 0].any()
    np.testing.assert_array_equal(x["attention_mask"].numpy(), mask)


# ----------------------------------------------------------------------------- whole-word masking
def test_whole_word_masking_selects_all_pieces_of_a_word_or_none():
    rng = np.random.default_rng(1)
    ids, mask, maskable = _batch(seed=1)
    B, T = ids.shape
    starts = np.zeros_like(ids)
    word_id = -np.ones_like(ids)  # which word each maskable piece belongs to
    for b in range(B):
        starts[b, 0] = 1  # [CLS] looks like a word start in MaskedLM.featurize
        t, w = 1, 0
        real = np.flatnonzero(mask[b])
        while t < len(real) - 1:
            n = int(rng.integers(1, 4))  # 1-3 pieces
            starts[b, t] = 1
            word_id[b, t:min(t + n, len(real) - 1)] = w
            t, w = t + n, w + 1
        starts[b, len(real) - 1] = 1  # [SEP]
    maskable_ww = maskable & (word_id >= 0)
    n_words = n_sel_words = 0
    for seed in range(4):
        _, labels = _draw(ids, maskable_ww, [seed, 99], word_starts=starts)
        sel = labels >= 0
        assert not sel[~maskable_ww].any()
        for b in range(B):
            for w in np.unique(word_id[b][word_id[b] >= 0]):
                pieces = (word_id[b] == w) & maskable_ww[b]
                if not pieces.any():
                    continue
                chosen = sel[b][pieces]
                assert chosen.all() or not chosen.any(), (b, w, chosen)
                n_words += 1
                n_sel_words += bool(chosen.all())
    assert n_sel_words / n_words == pytest.approx(0.15, abs=0.015)


def test_featurize_marks_word_starts_for_whole_word_masking(tmp_path):
    from modeling.encoder import BertEncoder
    from modeling.tokenization import PairTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##believ", "##able", "story", "a"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = PairTokenizer(tmp_path / "vocab.txt")
    enc = BertEncoder(vocab_size=len(vocab), hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                      max_position=32, name="encoder")
    model = MaskedLM(enc, whole_word=True)
    feats = model.featurize(tok, ["a unbelievable story"], None, 16)
    assert tok.decode_tokens(feats["input_ids"][0]) == ["[CLS]", "a", "un", "##believ", "##able", "story", "[SEP]"]
    assert feats["word_starts"] == [[1, 1, 1, 0, 0, 1, 1]]


# ----------------------------------------------------------------------------- reproducible dynamic masks
def test_same_seed_same_mask_different_seed_different_mask():
    ids, _, maskable = _batch()
    a = _draw(ids, maskable, [5, 0])
    b = _draw(ids, maskable, [5, 0])
    c = _draw(ids, maskable, [5, 1])
    d = _draw(ids, maskable, [6, 0])
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert (a[1] >= 0).tolist() != (c[1] >= 0).tolist()
    assert (a[1] >= 0).tolist() != (d[1] >= 0).tolist()


def test_pipeline_masks_change_per_epoch_and_replay_on_resume():
    """Dynamic masking in tf.data: a new mask each epoch, the same one when an epoch is rebuilt
    (and when it is resumed part-way with skip_batches)."""
    from modeling.encoder import BertEncoder
    from training.pipeline import make_dataset

    enc = BertEncoder(vocab_size=30, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                      max_position=128, name="encoder")
    model = MaskedLM(enc, special_ids=SPECIALS, mask_id=MASK)
    rng = np.random.default_rng(0)
    feats = {"input_ids": [[CLS] + rng.integers(5, 30, size=12).tolist() + [SEP] for _ in range(32)]}

    def epoch(e, skip=0):
        ds = make_dataset(feats, None, 8, shuffle=True, seed=42, epoch=e, drop_remainder=True,
                          skip_batches=skip, transform=model.batch_transform)
        return [(x["input_ids"].numpy(), y.numpy()) for x, y in ds]

    e0, e0_again, e1, e0_resumed = epoch(0), epoch(0), epoch(1), epoch(0, skip=2)
    assert len(e0) == 4 and len(e0_resumed) == 2
    for (xa, ya), (xb, yb) in zip(e0, e0_again):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    for (xa, ya), (xb, yb) in zip(e0[2:], e0_resumed):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    # Epoch 1: other batches and other masks. Compare per example: which tokens of a given
    # sentence are selected must differ somewhere.
    def selection(batches):
        out = {}
        for x, y in batches:
            for row_x, row_y in zip(x, y):
                orig = np.where(row_y >= 0, row_y, row_x)
                out[tuple(orig.tolist())] = tuple((row_y >= 0).tolist())
        return out

    s0, s1 = selection(e0), selection(e1)
    common = set(s0) & set(s1)
    assert len(common) >= 8
    assert any(s0[k] != s1[k] for k in common)


# ----------------------------------------------------------------------------- loss and tied weights
def test_masked_lm_loss_counts_only_selected_positions():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
    labels = np.array([[-1, 3, -1, -1, 6], [-1, -1, 0, -1, -1]], np.int32)
    sel = labels >= 0

    def ce(row, y):
        row = row.astype(np.float64)
        return -(row[y] - np.log(np.exp(row).sum()))

    expected = np.mean([ce(logits[b, t], labels[b, t]) for b, t in zip(*np.nonzero(sel))])
    got = float(masked_lm_loss(tf.constant(labels), tf.constant(logits)))
    assert got == pytest.approx(expected, rel=1e-5)
    changed = logits.copy()
    changed[~sel] = rng.normal(size=changed[~sel].shape) * 50
    assert float(masked_lm_loss(tf.constant(labels), tf.constant(changed))) == pytest.approx(got, rel=1e-6)
    changed[0, 1, 0] += 5.0  # a selected position: the loss moves
    assert float(masked_lm_loss(tf.constant(labels), tf.constant(changed))) != pytest.approx(got, rel=1e-4)
    assert float(masked_lm_loss(tf.constant(-np.ones_like(labels)), tf.constant(logits))) == 0.0


def test_output_weights_are_tied_to_the_word_embeddings():
    from modeling.encoder import BertEncoder

    V, H = 30, 16
    enc = BertEncoder(vocab_size=V, hidden_size=H, num_layers=1, num_heads=2, intermediate_size=32,
                      max_position=32, hidden_dropout=0.0, attention_dropout=0.0, name="encoder")
    model = MaskedLM(enc, special_ids=SPECIALS, mask_id=MASK, name="mlm")
    x = {"input_ids": tf.constant([[CLS, 5, 6, 7, SEP]]), "token_type_ids": tf.zeros([1, 5], tf.int32),
         "attention_mask": tf.ones([1, 5], tf.int32)}
    before = model(x).numpy()  # [1, 5, V]
    assert before.shape == (1, 5, V)

    # No output matrix of its own: the only [V, *] / [*, V] variables are the table and the bias.
    vocab_shaped = [v for v in model.weights if V in tuple(v.shape)]
    assert {v.path for v in vocab_shaped} == {enc.word_embeddings.embeddings.path, model.output_bias.path}
    assert tuple(model.output_bias.shape) == (V,)

    # Perturb the embedding row of a token absent from the input: the encoder's output does not
    # change, the logits of that token move by h . delta, all others stay.
    h = model.transform_norm(model.transform(enc(x)["last_hidden_state"])).numpy()  # [1, 5, H]
    v = 20
    delta = np.random.default_rng(0).normal(size=H).astype(np.float32)
    table = enc.word_embeddings.embeddings
    table.assign(tf.tensor_scatter_nd_add(table, [[v]], delta[None]))
    after = model(x).numpy()
    np.testing.assert_allclose(after[..., v] - before[..., v], h @ delta, atol=1e-4)
    others = np.arange(V) != v
    np.testing.assert_allclose(after[..., others], before[..., others], atol=1e-5)
    assert np.abs(h @ delta).max() > 1e-2


# ----------------------------------------------------------------------------- end to end
TINY = ["model.init=null", "model.vocab_lang=en", "model.vocab_min_freq=1", "model.hidden_size=32",
        "model.num_heads=4", "model.intermediate_size=64", "model.num_layers=2", "model.max_position=64",
        "train.batch_size=16", "train.verbose=0"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny MLM pre-training run (2 epochs x 14 steps) and a short finetune from its model directory."""
    from data import make_sample

    root = tmp_path_factory.mktemp("pretrain_e2e")
    files = make_sample(root / "data", n_train=128, n_valid=32, n_test=32)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        # max_seq_len 8: every sample sentence is longer, one batch width, one trace of the step.
        assert run_tasks.main(["--task", "pretrain", "--out", str(root / "pretrain"), "--set", *TINY,
                               f"data.text=[{files['train']}]", "train.epochs=2", "train.max_seq_len=8",
                               "train.learning_rate=1e-3", "train.patience=0"]) == 0
        # Fine-tune from it with a tiny learning rate: the weights stay close to the pre-trained ones.
        assert run_tasks.main(["--task", "finetune", "--out", str(root / "finetune"), "--set",
                               f"model.init={root / 'pretrain' / 'model'}", "model.dropout=0.0",
                               f"data.train={files['train']}", f"data.valid={files['valid']}",
                               "train.batch_size=16", "train.max_seq_len=16", "train.epochs=1",
                               "train.steps_per_epoch=2", "train.learning_rate=1e-6", "train.verbose=0"]) == 0
    return root


def test_pretrain_loss_falls_and_model_dir_is_mlm(pretrained):
    m = json.loads((pretrained / "pretrain" / "metrics.json").read_text())
    hist = m["training"]["history"]
    assert [h["epoch"] for h in hist] == [1, 2]
    assert hist[1]["loss"] < hist[0]["loss"], hist
    assert m["training"]["selection_metric"] == "loss" and m["training"]["steps"] == 2 * 14
    v = m["valid"]
    assert v["masked_tokens"] > 0 and 0 <= v["mlm_accuracy"] <= 1
    assert v["perplexity"] == pytest.approx(np.exp(v["loss"]), rel=1e-6)
    vocab_size = len((pretrained / "pretrain" / "model" / "vocab.txt").read_text().splitlines())
    assert v["loss"] < np.log(vocab_size)  # better than uniform guessing
    assert m["pretrain"]["sentences"] == 252 and m["pretrain"]["whole_word"] is False
    meta = json.loads((pretrained / "pretrain" / "model" / "model.json").read_text())
    assert meta["kind"] == "mlm" and meta["model"]["config"]["encoder"]["num_layers"] == 2


def test_pretrained_model_dir_loads_in_finetune(pretrained):
    from modeling.model_dir import load_model_dir

    ft = pretrained / "finetune"
    m = json.loads((ft / "metrics.json").read_text())
    assert 0 <= m["valid"]["accuracy"] <= 1 and m["training"]["steps"] == 2
    assert (ft / "model" / "vocab.txt").read_bytes() == (pretrained / "pretrain" / "model" / "vocab.txt").read_bytes()
    meta = json.loads((ft / "model" / "model.json").read_text())
    assert meta["kind"] == "cross_encoder"
    assert {k: meta["model"]["config"]["encoder"][k] for k in ("num_layers", "hidden_size")} == \
        {"num_layers": 2, "hidden_size": 32}
    # The encoder started from the pre-trained weights (2 steps at lr 1e-6 barely move them).
    pre = load_model_dir(pretrained / "pretrain" / "model").model.encoder
    post = load_model_dir(ft / "model").model.encoder
    for a, b in ((pre.word_embeddings.embeddings, post.word_embeddings.embeddings),
                 (pre.encoder_layers[1].attention.query.kernel, post.encoder_layers[1].attention.query.kernel)):
        assert np.abs(a.numpy() - b.numpy()).max() < 1e-3


# ----------------------------------------------------------------------------- read_sentences
def _cfg(text, **data):
    from config import RunConfig

    cfg = RunConfig(task="pretrain")
    cfg.data.text = [str(t) for t in text]
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return cfg


def test_read_sentences_plain_text_and_pair_files_deduplicated(tmp_path):
    from pretrain.task import read_sentences
    from tests.tiny_runs import write_csv

    plain = tmp_path / "a.txt"
    lines = [f"sentence number {i}" for i in range(8)]
    plain.write_text("\n".join(lines[:5] + ["", "  sentence number 1  ", lines[0]] + lines[5:]) + "\n",
                     encoding="utf-8")
    pairs = write_csv(tmp_path / "b.csv", [("sentence number 2", "pair left", "1"),
                                           ("pair right", "sentence number 9", "0"),
                                           ("another one", "pair left", "1")])
    got = read_sentences(_cfg([plain, pairs]))
    # first-seen order; both columns of the pair file, a before b per file; blank lines dropped
    assert got == lines + ["pair right", "another one", "pair left", "sentence number 9"]
    assert len(got) == len(set(got)) == 12
    assert read_sentences(_cfg([plain, pairs], max_rows=10)) == got[:10]


def test_read_sentences_missing_file_and_too_few(tmp_path):
    from data import DataError
    from pretrain.task import read_sentences

    missing = tmp_path / "nope.txt"
    with pytest.raises(DataError, match="nope.txt: not found"):
        read_sentences(_cfg([missing]))
    small = tmp_path / "small.txt"
    small.write_text("one\ntwo\none\n")
    with pytest.raises(DataError, match="only 2 distinct sentences"):
        read_sentences(_cfg([small]))


def test_whole_word_features_are_not_taken_from_a_plain_runs_token_cache(tmp_path, monkeypatch):
    from data import PairData, build_vocab
    from modeling.encoder import BertEncoder
    from modeling.tokenization import PairTokenizer
    from training.inputs import tokenize

    texts = ["a unbelievable story", "another story here"]
    tok = PairTokenizer(build_vocab(texts * 3, tmp_path / "vocab.txt", lang="zh", min_freq=1))

    def mlm(whole_word):
        enc = BertEncoder(vocab_size=tok.vocab_size, hidden_size=16, num_layers=1, num_heads=2,
                          intermediate_size=32, name="encoder")
        return MaskedLM(enc, whole_word=whole_word)

    pairs = PairData(texts, None, None, [1, 2])
    cache = tmp_path / "tokens"
    assert "word_starts" not in tokenize(mlm(False), tok, pairs, [], 16, "train", cache).features
    assert "word_starts" in tokenize(mlm(True), tok, pairs, [], 16, "train", cache).features


# ----------------------------------------------------------------------------- pair inputs
def test_read_text_pairs_deduplicates_rows_and_refuses_plain_text(tmp_path):
    from data import DataError
    from pretrain.task import read_text_pairs
    from tests.tiny_runs import write_csv

    rows = [(f"left {i}", f"right {i % 7}", str(i % 2)) for i in range(14)]
    pairs = write_csv(tmp_path / "p.csv", rows + [rows[3], ("left 3", "other", "0")])
    a, b = read_text_pairs(_cfg([pairs]))
    assert list(zip(a, b)) == [(x, y) for x, y, _ in rows] + [("left 3", "other")]  # labels unused, order kept
    plain = tmp_path / "t.txt"
    plain.write_text("one\ntwo\n")
    with pytest.raises(DataError, match="t.txt: pretrain.pairs=true needs pair files"):
        read_text_pairs(_cfg([pairs, plain]))


def test_pair_inputs_train_the_second_segment_embedding():
    # With single texts every token has segment 0, so segment 1's embedding gets no gradient and
    # stays random; pair inputs `[CLS] a [SEP] b [SEP]` give it one (and cross-text attention).
    from modeling.encoder import BertEncoder

    enc = BertEncoder(vocab_size=30, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                      max_position=64, name="encoder")
    model = MaskedLM(enc, special_ids=SPECIALS, mask_id=MASK, rate=0.5)
    ids, mask, _ = _batch(B=8, T=20)
    types = np.zeros_like(ids)
    types[:, 10:] = 1
    types[mask == 0] = 0

    def segment_grad(token_type_ids):
        x, y = model.batch_transform({"input_ids": tf.constant(ids), "attention_mask": tf.constant(mask),
                                      "token_type_ids": tf.constant(token_type_ids)}, tf.constant([3, 4], tf.int64))
        with tf.GradientTape() as tape:
            loss = masked_lm_loss(y, model(x, training=False))
        g = tape.gradient(loss, enc.token_type_embeddings.embeddings)
        return tf.convert_to_tensor(g).numpy()

    single, paired = segment_grad(np.zeros_like(ids)), segment_grad(types)
    assert np.abs(single[1]).max() == 0.0 and np.abs(single[0]).max() > 0
    assert np.abs(paired[1]).max() > 0 and np.abs(paired[0]).max() > 0


def test_pretrain_task_on_pairs(tmp_path):
    from data import make_sample

    files = make_sample(tmp_path / "data", n_train=64, n_valid=16, n_test=16)
    out = tmp_path / "pretrain_pairs"
    assert run_tasks.main(["--task", "pretrain", "--out", str(out), "--set", *TINY, "pretrain.pairs=true",
                           f"data.text=[{files['train']}]", "train.epochs=1", "train.max_seq_len=16"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["pretrain"]["pairs"] == 64 and m["pretrain"]["pairs_input"] is True
    assert m["valid"]["masked_tokens"] > 0 and m["training"]["steps"] == 3  # 58 train pairs / 16, remainder dropped
    # a missing data.text is a clear error, not a silent fall-back to single sentences
    assert run_tasks.main(["--task", "pretrain", "--out", str(tmp_path / "none"), "--set", *TINY,
                           "pretrain.pairs=true"]) != 0


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_masked_lm_trains_under_mixed_precision(policy):
    # `train.mixed_precision` on a pretrain run once failed in the first call (bf16 logits + fp32 bias).
    import keras

    from modeling.encoder import BertEncoder

    keras.mixed_precision.set_global_policy(policy)
    try:
        enc = BertEncoder(vocab_size=30, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                          max_position=64, name="encoder")
        model = MaskedLM(enc, special_ids=SPECIALS, mask_id=MASK, rate=0.5)
        ids, mask, _ = _batch(B=8, T=12)
        x, y = model.batch_transform({"input_ids": tf.constant(ids), "attention_mask": tf.constant(mask)},
                                     tf.constant([1, 2], tf.int64))
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = masked_lm_loss(y, logits)
        bias_grad, emb_grad = tape.gradient(loss, [model.output_bias, enc.word_embeddings.embeddings])
        assert logits.dtype == tf.float32 and model.output_bias.dtype == "float32"
        assert np.isfinite(float(loss)) and bias_grad is not None and emb_grad is not None
    finally:
        keras.mixed_precision.set_global_policy("float32")
