"""distill task (issue 5): the KD loss unit by hand, cached vs online teacher, the on-disk
teacher-logit cache, intermediate-layer distillation, and the task end to end (tiny)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import run_tasks
from distill.losses import kd_loss, kd_terms, soft_kl
from distill.model import DistillTraining
from tests.tiny_runs import tiny_model

# max_seq_len 16: every sample pair is longer, so all batches have one width and each
# tf.function is traced once (tracing dominates these tiny runs).
TINY = ["model.init=null", "model.vocab_lang=en", "model.vocab_min_freq=1", "model.hidden_size=32",
        "model.num_heads=4", "model.intermediate_size=64", "model.max_position=64",
        "train.batch_size=16", "train.max_seq_len=16", "train.epochs=1", "train.verbose=0"]


# ----------------------------------------------------------------------------- the loss unit by hand
def _softmax(row, t=1.0):
    e = [math.exp(x / t) for x in row]
    return [x / sum(e) for x in e]


def _kd_by_hand(labels, s, t, alpha, T):
    ce = sum(-math.log(_softmax(r)[y]) for r, y in zip(s, labels)) / len(s)
    kl = 0.0
    for rs, rt in zip(s, t):
        ps, pt = _softmax(rs, T), _softmax(rt, T)
        kl += sum(a * math.log(a / b) for a, b in zip(pt, ps))
    kl /= len(s)
    return alpha * ce + (1 - alpha) * T * T * kl


@pytest.mark.parametrize("labels,s,t", [
    ([1, 0], [[0.5, -0.3], [1.2, 0.4]], [[2.0, -1.0], [0.1, 0.3]]),
    ([2, 0], [[0.5, -0.3, 1.0], [1.2, 0.4, -2.0]], [[2.0, -1.0, 0.0], [0.1, 0.3, 3.0]]),
])
def test_kd_loss_by_hand(labels, s, t):
    expected = _kd_by_hand(labels, s, t, alpha=0.2, T=10.0)
    got = float(kd_loss(tf.constant(labels), tf.constant(s), tf.constant(t), alpha=0.2, temperature=10.0))
    assert got == pytest.approx(expected, rel=1e-5)
    terms = kd_terms(tf.constant(labels), tf.constant(s), tf.constant(t), 0.2, 10.0)
    assert set(terms) == {"ce", "kd"}
    assert float(terms["ce"]) + float(terms["kd"]) == pytest.approx(got, rel=1e-6)


def test_kd_loss_docstring_value():
    got = float(kd_loss(tf.constant([1]), tf.constant([[0., 1.]]), tf.constant([[0., 2.]]), 0.2, 10.))
    assert got == pytest.approx(0.1619476, abs=1e-5)


def test_alpha_one_is_plain_ce_and_equal_logits_give_zero_kl():
    labels = tf.constant([1, 0])
    s = tf.constant([[0.5, -0.3, 1.0], [1.2, 0.4, -2.0]])
    t = tf.constant([[9.0, -1.0, 0.0], [0.1, 7.3, 3.0]])
    ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=s))
    assert float(kd_loss(labels, s, t, alpha=1.0, temperature=10.0)) == pytest.approx(float(ce), rel=1e-6)
    assert float(soft_kl(s, s, 10.0)) == pytest.approx(0.0, abs=1e-7)
    assert float(kd_terms(labels, s, s, 0.2, 10.0)["kd"]) == pytest.approx(0.0, abs=1e-5)


def test_hard_weight_restricts_the_label_term_to_the_marked_rows():
    """Transfer rows (weight 0, label the placeholder -1) add the soft term only; the label term is the
    batch mean of weight x CE, gold rows weighing N / N_gold = 3 / 2: worked by hand from the two rows."""
    labels, s, t = [1, 0, -1], [[0.5, -0.3], [1.2, 0.4], [-2.0, 3.0]], [[2.0, -1.0], [0.1, 0.3], [0.0, 0.0]]
    w = tf.constant([1.5, 1.5, 0.0])
    terms = kd_terms(tf.constant(labels), tf.constant(s), tf.constant(t), 0.5, 2.0, hard_weight=w)
    log_p = lambda z: z - np.log(np.exp(z).sum())  # noqa: E731
    ce_first_two = -(log_p(np.array(s[0]))[1] + log_p(np.array(s[1]))[0]) / 2
    assert float(terms["ce"]) == pytest.approx(0.5 * ce_first_two, rel=1e-5)
    all_rows = kd_terms(tf.constant([1, 0, 1]), tf.constant(s), tf.constant(t), 0.5, 2.0)
    assert float(terms["kd"]) == pytest.approx(float(all_rows["kd"]), rel=1e-6)  # every row's soft target


def test_with_swapped_pairs_appends_b_a_and_marks_the_originals():
    from data.readers import PairData
    from distill.task import with_swapped_pairs
    from training.inputs import Splits

    train = PairData(text_a=["a1", "a2"], text_b=["b1", "b2"], labels=["1", "0"], lines=[2, 3], path="t.csv")
    splits, hard = with_swapped_pairs(Splits(train=train, valid=None, test=None, label_names=["0", "1"]))
    assert splits.train.text_a == ["a1", "a2", "b1", "b2"] and splits.train.text_b == ["b1", "b2", "a1", "a2"]
    assert splits.train.labels == ["1", "0", None, None] and splits.train.lines == [2, 3, 2, 3]
    assert hard.tolist() == [2.0, 2.0, 0.0, 0.0]
    assert train.text_a == ["a1", "a2"] and train.labels == ["1", "0"]  # the caller's split is untouched


# ----------------------------------------------------------------------------- cached vs online
def _batch(vocab_size, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab_size, size=(4, 10)).astype(np.int32)
    ids[:, 0], ids[:, 5] = 2, 3
    mask = np.ones_like(ids)
    mask[2:, 8:] = 0
    ids[mask == 0] = 0
    types = np.zeros_like(ids)
    types[:, 6:] = 1
    x = {"input_ids": tf.constant(ids), "token_type_ids": tf.constant(types), "attention_mask": tf.constant(mask)}
    return x, tf.constant([0, 1, 1, 0])


def test_online_and_cached_give_the_same_first_step_loss():
    V = 40
    teacher = tiny_model(V, num_layers=2)
    s1, s2 = tiny_model(V, num_layers=1), tiny_model(V, num_layers=1)
    s2.set_weights(s1.get_weights())
    x, y = _batch(V)
    # Freshly initialised logits are ~0, so KL at T=10 would be float noise: give the teacher opinions.
    teacher(x, training=False)
    teacher.classifier.kernel.assign(teacher.classifier.kernel * 300.0)

    cached = DistillTraining(s1, None, label_weight=0.2, temperature=10.0)
    xc = dict(x, teacher_logits=teacher(x, training=False))
    terms_c = cached.loss_terms(xc, y, cached(xc, training=True))

    online = DistillTraining(s2, teacher, label_weight=0.2, temperature=10.0)
    y_pred = online(x, training=True)
    assert "teacher_logits" in y_pred
    terms_o = online.loss_terms(x, y, y_pred)

    assert set(terms_c) == set(terms_o) == {"ce", "kd"}
    for k in terms_c:
        assert float(terms_c[k]) == pytest.approx(float(terms_o[k]), abs=1e-5)
    assert float(terms_c["kd"]) > 1e-6  # a real soft term, not two zeros
    # The teacher is frozen; only the student (what is deployed) trains.
    assert not teacher.trainable and online.deployable is s2
    assert {id(v) for v in online.trainable_variables} == {id(v) for v in s2.trainable_variables}


# ----------------------------------------------------------------------------- teacher-logit cache
@pytest.fixture(scope="module")
def saved_teacher(tmp_path_factory):
    from data import build_vocab
    from modeling.model_dir import load_model_dir, save_model_dir
    from modeling.tokenization import PairTokenizer

    root = tmp_path_factory.mktemp("teacher")
    texts = ["how do i open an account", "close my card", "reset the password now", "book a flight to rome"]
    tok = PairTokenizer(build_vocab(texts, root / "vocab.txt", lang="zh", min_freq=1))
    save_model_dir(tiny_model(tok.vocab_size, num_layers=1), root / "model", tok, labels=["0", "1"], max_seq_len=24)
    return load_model_dir(root / "model")


def test_cached_teacher_logits_writes_then_reads_and_key_follows_texts(saved_teacher, tmp_path, monkeypatch):
    import distill.task as task

    cache = tmp_path / "cache"
    a, b = ["open an account", "close my card", "reset password"], ["open account", "close card", "book rome"]
    first = task.cached_teacher_logits(saved_teacher, a, b, max_len=24, batch_size=2, cache=cache)
    files = sorted((tmp_path / "cache").glob("*.npy"))
    assert len(files) == 1 and first.shape == (3, 2) and first.dtype == np.float32
    np.testing.assert_array_equal(np.load(files[0]), first)
    # The logits are the teacher's own.
    feats = saved_teacher.model.featurize(saved_teacher.tokenizer, a, b, 24)
    from training.pipeline import make_dataset
    direct = np.concatenate([saved_teacher.model(x, training=False).numpy()
                             for x in make_dataset(feats, batch_size=8, bucket=False)])
    np.testing.assert_allclose(first, direct, atol=1e-5)

    # Second call: read from disk, the teacher is not run.
    def boom(*args, **kwargs):
        raise AssertionError("teacher was run although its logits are cached")

    monkeypatch.setattr(task, "predict_outputs", boom)
    again = task.cached_teacher_logits(saved_teacher, a, b, max_len=24, batch_size=2, cache=cache)
    np.testing.assert_array_equal(again, first)

    # A changed text (or a changed length) is a new key: computed again, a second file.
    monkeypatch.undo()
    task.cached_teacher_logits(saved_teacher, a[:2] + ["reset password!"], b, max_len=24, batch_size=2, cache=cache)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2
    task.cached_teacher_logits(saved_teacher, a, b, max_len=16, batch_size=2, cache=cache)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 3


def test_transfer_logits_are_cached_and_read_on_the_second_run(saved_teacher, tmp_path, monkeypatch):
    """Transfer pairs' teacher logits go through the same cache, in a file of their own."""
    import distill.task as task

    pairs = (["open an account", "reset password"], ["close card", "book rome"])
    first, facts = task.transfer_logits(saved_teacher, pairs, 24, 2, tmp_path)
    assert facts["teacher_logits_cache"] == str(next(tmp_path.glob("*.npy"))) and facts["teacher_seconds"] >= 0
    np.testing.assert_array_equal(first, task.cached_teacher_logits(saved_teacher, *pairs, 24, 2, tmp_path / "x"))

    def boom(*args, **kwargs):
        raise AssertionError("teacher was run although its logits are cached")

    monkeypatch.setattr(task, "predict_outputs", boom)
    again, facts2 = task.transfer_logits(saved_teacher, pairs, 24, 2, tmp_path)
    np.testing.assert_array_equal(again, first)
    assert facts2["teacher_logits_cache"] == facts["teacher_logits_cache"]


# ----------------------------------------------------------------------------- intermediate layers
def test_intermediate_distillation_projects_student_width_to_teacher_width():
    from crossenc.model import CrossEncoder
    from modeling.encoder import BertEncoder

    V = 40
    wide = BertEncoder(vocab_size=V, hidden_size=48, num_layers=2, num_heads=4, intermediate_size=64,
                       max_position=64, hidden_dropout=0.0, attention_dropout=0.0, name="encoder")
    teacher = CrossEncoder(wide, num_labels=2, dropout=0.0, name="cross_encoder")
    teacher(teacher.dummy_inputs())
    student = tiny_model(V, num_layers=1)  # hidden 32
    model = DistillTraining(student, teacher, intermediate=True)
    assert model.layer_map == [1]  # student layer 0 <- teacher layer 1 (same relative depth)
    # train_task builds the optimizer after an inference-mode dummy call: the projection must
    # already exist then (it was created lazily in the first training step: "Unknown variable").
    model(model.dummy_inputs())
    assert any(v is model.projection.kernel for v in model.trainable_variables)
    x, y = _batch(V)
    y_pred = model(x, training=True)
    assert "hidden" in y_pred and float(y_pred["hidden"]) > 0
    assert tuple(model.projection.kernel.shape) == (32, 48)
    terms = model.loss_terms(x, y, y_pred)
    assert set(terms) == {"ce", "kd", "hidden"}
    # The projection is trained with the student.
    ids = {id(v) for v in model.trainable_variables}
    assert id(model.projection.kernel) in ids
    # Gradients reach the student through the hidden-state term alone.
    with tf.GradientTape() as tape:
        h = model(x, training=True)["hidden"]
    g = tape.gradient(h, student.encoder.word_embeddings.embeddings)
    assert g is not None and float(tf.reduce_sum(tf.abs(tf.convert_to_tensor(g)))) > 0

    with pytest.raises(ValueError, match="layer_map"):
        DistillTraining(student, teacher, intermediate=True, layer_map=[5])
    with pytest.raises(ValueError, match="online"):
        DistillTraining(tiny_model(V, num_layers=1), None, intermediate=True)


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    """A tiny 2-layer teacher (finetune) and a 1-layer student distilled from it, with a baseline."""
    from data import make_sample

    root = tmp_path_factory.mktemp("distill_e2e")
    files = make_sample(root / "data", n_train=96, n_valid=32, n_test=32)
    data = [f"data.train={files['train']}", f"data.valid={files['valid']}", f"data.test={files['test']}",
            "train.steps_per_epoch=3"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root / "data")  # a run writes nothing outside its --out: checked below
        assert run_tasks.main(["--task", "finetune", "--out", str(root / "teacher"), "--set", *TINY, *data,
                               "model.num_layers=2", "model.dropout=0.0"]) == 0
        # train.cache_dir: the student's token ids and teacher logits go there, not under its --out
        assert run_tasks.main(["--task", "distill", "--out", str(root / "student"), "--set", *TINY, *data,
                               "model.num_layers=1", f"distill.teacher={root / 'teacher' / 'model'}",
                               f"distill.baseline={root / 'teacher' / 'model'}",
                               f"train.cache_dir={root / 'shared_cache'}"]) == 0
        assert list((root / "teacher" / ".cache" / "tokens").glob("*.npz"))  # the default: in the run
        assert list((root / "shared_cache" / "teacher_logits").glob("*.npy"))
        assert list((root / "shared_cache" / "tokens").glob("*.npz"))
        assert not (root / "student" / ".cache").exists()
        assert sorted(p.name for p in (root / "data").iterdir()) == ["test.csv", "train.csv", "valid.csv"]
    return root


def test_distill_with_every_transfer_source_end_to_end(e2e):
    from tests.test_transfer import check_transfer_run, every_source

    data = [f"data.{k}={e2e / 'data' / (k + '.csv')}" for k in ("train", "valid", "test")]
    run = e2e / "transfer"
    assert run_tasks.main(["--task", "distill", "--out", str(run), "--set", *TINY, *data, *every_source(e2e),
                           "train.steps_per_epoch=3", "model.num_layers=1",
                           f"distill.teacher={e2e / 'teacher' / 'model'}", "distill.baseline=null"]) == 0
    m, t = check_transfer_run(run, e2e / "data" / "train.csv", 32, 32)
    # The transfer pairs' logits: a cache file of their own, in the run, one row per transfer pair.
    assert t["teacher_logits_cache"].startswith(str(run / ".cache" / "teacher_logits"))
    assert np.load(t["teacher_logits_cache"]).shape == (sum(t["pairs"].values()), 2)
    assert m["training"]["steps"] == 3


def test_distill_task_end_to_end(e2e):
    m = json.loads((e2e / "student" / "metrics.json").read_text())
    for split in ("valid", "test"):
        assert 0.0 <= m[split]["accuracy"] <= 1.0 and "f1" in m[split]
    assert set(m["teacher"]) == {"valid", "test", "model_dir"}
    assert m["teacher"]["model_dir"] == str(e2e / "teacher" / "model") == m["baseline"]["model_dir"]
    assert m["distill"] == {"label_weight": 0.5, "temperature": 2.0, "online": False, "intermediate": False,
                            "swap": False, "student_init": "teacher"}
    assert m["training"]["steps"] == 3
    # The run was in this process: its recorded peak memory is TensorFlow-sized (MB, not KB or bytes)
    # and cannot exceed this process's peak so far as the kernel counts it.
    hwm_mb = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                  if line.startswith("VmHWM:")) / 1024
    assert 200 < m["training"]["peak_rss_mb"] <= hwm_mb + 1

    meta = json.loads((e2e / "student" / "model" / "model.json").read_text())
    assert meta["kind"] == "cross_encoder" and meta["task"] == "distill"
    assert meta["model"]["config"]["encoder"]["num_layers"] == 1
    t_meta = json.loads((e2e / "teacher" / "model" / "model.json").read_text())
    assert t_meta["model"]["config"]["encoder"]["num_layers"] == 2
    # A random-init student tokenises exactly as its teacher.
    assert (e2e / "student" / "model" / "vocab.txt").read_bytes() == (e2e / "teacher" / "model" / "vocab.txt").read_bytes()

    # distill.baseline points at the teacher here: its scores on the same splits are the teacher's.
    t = json.loads((e2e / "teacher" / "metrics.json").read_text())
    for split in ("valid", "test"):
        assert m["baseline"][split]["accuracy"] == pytest.approx(t[split]["accuracy"])
        assert m["teacher"][split]["accuracy"] == pytest.approx(t[split]["accuracy"])
    # ... so the teacher does not lead its baseline: the run says so instead of reporting a gap closed.
    assert "gap_closed" not in m and any("does not lead the baseline" in w for w in m["warnings"])


def test_student_init_teacher_starts_from_the_teachers_first_layers(e2e, tmp_path):
    """distill.student_init=teacher: the student's encoder before training is the teacher's first k
    layers, weight for weight (checked against the teacher's own variables), with its vocabulary."""
    from config import load_config
    from crossenc.teacher import student_from_teacher
    from modeling.model_dir import load_model_dir
    from training.inputs import init_encoder

    teacher = load_model_dir(e2e / "teacher" / "model", expect_kind="cross_encoder")
    cfg = load_config(None, TINY + ["task=distill", "model.num_layers=1"])
    student_cfg = student_from_teacher(cfg.model, teacher)
    assert cfg.model.init is None  # the baseline's configuration is untouched
    encoder, tokenizer = init_encoder(student_cfg, ["unused"], tmp_path)
    assert encoder.num_layers == 1 and tokenizer.vocab_file.endswith("vocab.txt")
    teacher_w = {w.path.split("/", 1)[1]: w.numpy() for w in teacher.model.encoder.weights}
    student_w = {w.path.split("/", 1)[1]: w.numpy() for w in encoder.weights}
    assert student_w and set(student_w) <= set(teacher_w)
    assert any("layer_1" in k for k in teacher_w) and not any("layer_1" in k for k in student_w)
    for k, v in student_w.items():
        np.testing.assert_array_equal(v, teacher_w[k], err_msg=k)
    assert not list(tmp_path.iterdir())  # no vocabulary built: the teacher's is used


def test_distilled_student_loads_and_predicts(e2e):
    from modeling.model_dir import load_model_dir

    loaded = load_model_dir(e2e / "student" / "model", expect_kind="cross_encoder")
    assert loaded.model.encoder.num_layers == 1 and loaded.labels == ["0", "1"]
    x = loaded.model.featurize(loaded.tokenizer, ["open an account"], ["create an account"], 24)
    from training.trainer import predict_outputs
    p = predict_outputs(loaded.model, x, 8)["probs"]
    assert p.shape == (1, 2) and p.sum() == pytest.approx(1.0, abs=1e-5)
