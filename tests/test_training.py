"""The training loop: replicas, schedule, metrics, pipeline, resume, failures, tasks.

Kept tiny for 2 busy CPU cores (see tests/tiny_runs.py).
"""

import hashlib
import json
import logging
import math
import re
import signal
import threading
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from config import TrainConfig, load_config
from tests.tiny_runs import NLI_LABELS, make_data, micro_model, popen_cli, tiny_model, tiny_overrides, write_nli
from training.metrics import classification_metrics
from training.optim import WarmupLinearDecay, build_optimizer
from training.pipeline import make_dataset
from training.trainer import Trainer, TrainingError, TrainingInterrupted

import run_tasks


def _two_cpus():
    return len(tf.config.list_logical_devices("CPU")) >= 2


needs_two_cpus = pytest.mark.skipif(not _two_cpus(), reason="conftest could not split the CPU into 2 devices")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """64 train / 16 valid sample pairs and a deterministic vocab.txt."""
    return make_data(tmp_path_factory.mktemp("data"), n_train=64, n_valid=16)


@pytest.fixture(scope="module")
def tokenizer(data):
    from modeling.tokenization import PairTokenizer

    return PairTokenizer(data["vocab"])


def _split(path, tokenizer, name, max_len=16, labels=("0", "1")):
    from data import read_pairs
    from training.inputs import tokenize

    pairs = read_pairs(path)
    return tokenize(_Featurizer, tokenizer, pairs, list(labels), max_len, name)


class _Featurizer:  # CrossEncoder.featurize without building a model
    @staticmethod
    def featurize(tokenizer, a, b, max_len):
        return tokenizer.encode_pairs(a, b, max_len)


@pytest.fixture(scope="module")
def train_split(data, tokenizer):
    return _split(data["train"], tokenizer, "train")


def _cfg(argv_extra=(), data=None, out=None, vocab=None):
    ov = tiny_overrides(data, vocab, *argv_extra) + ["task=finetune"]
    if out is not None:
        ov.append(f"out={out}")
    return load_config(run_tasks.ROOT / "config" / "finetune.yaml", ov)


def _maxdiff(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


# ============================================================================ replicas
@needs_two_cpus
def test_one_vs_two_replicas_same_step_with_binding_clip(train_split, tokenizer):
    """Global batch 16 as 16 x 1 and 8 x 2 replicas: same loss and same weights after a step.

    clip_norm=0.01 binds (the global gradient norm is far above it), so this only
    holds if the gradients are summed over replicas BEFORE clipping (the trainer's
    all-reduce + ReducedAdamW). Checked while writing this test: letting Keras clip
    each replica's share and sum afterwards (plain AdamW, no trainer all-reduce)
    moves the weights ~4e-4 away from the 1-replica result, 40x the tolerance.
    """
    clip = 0.01
    keras.utils.set_random_seed(0)
    source = tiny_model(tokenizer.vocab_size, dropout=0.0, num_layers=1)
    ds = make_dataset(train_split.features, train_split.labels, batch_size=16, shuffle=False, drop_remainder=True)
    x0, y0 = next(iter(ds))

    with tf.GradientTape() as tape:
        loss0 = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.cast(y0, tf.int32), logits=source(x0, training=True)))
    grad_norm = float(tf.linalg.global_norm(tape.gradient(loss0, source.trainable_variables)))
    assert grad_norm > 5 * clip, f"clipping would not bind: global grad norm {grad_norm}"

    def one_step(strategy, per_replica_batch):
        cfg = TrainConfig(batch_size=per_replica_batch, learning_rate=1e-3, warmup_ratio=0.01,
                          clip_norm=clip, weight_decay=0.01)
        with strategy.scope():
            model = tiny_model(tokenizer.vocab_size, dropout=0.0, num_layers=1)
            model.set_weights(source.get_weights())
            opt = build_optimizer(cfg, total_steps=100)  # warm-up 1 step
            opt.build(model.trainable_variables)
            opt.iterations.assign(1)  # lr(0) is 0 (warm-up): start where lr == peak
        trainer = Trainer(cfg, strategy, "unused")
        assert trainer.global_batch == 16
        step = trainer._make_train_step(model, opt)
        x, y = next(iter(strategy.experimental_distribute_dataset(ds.take(1))))
        loss, _ = step(x, y)
        return float(loss), model.get_weights()

    loss1, w1 = one_step(tf.distribute.get_strategy(), 16)
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert mirrored.num_replicas_in_sync == 2
    loss2, w2 = one_step(mirrored, 8)

    assert loss1 == pytest.approx(float(loss0), abs=1e-5)
    assert loss2 == pytest.approx(loss1, abs=1e-5)
    moved = _maxdiff(w1, source.get_weights())
    assert moved > 1e-4, "the step did not change the weights"
    assert _maxdiff(w1, w2) < 1e-5


# ============================================================================ schedule
def test_warmup_linear_decay_by_hand():
    s = WarmupLinearDecay(peak=2e-3, total_steps=100, warmup_steps=10)
    lr = lambda step: float(s(step))  # noqa: E731
    assert lr(0) == 0.0
    assert lr(5) == pytest.approx(1e-3)  # half-way up
    assert lr(10) == pytest.approx(2e-3)  # peak at the end of warm-up
    assert lr(55) == pytest.approx(1e-3)  # half-way down: (100 - 55) / 90
    assert lr(91) == pytest.approx(2e-3 * 9 / 90)
    assert lr(100) == 0.0 and lr(150) == 0.0  # 0 at (and after) the end
    assert WarmupLinearDecay(**s.get_config()).get_config() == s.get_config()
    opt = build_optimizer(TrainConfig(learning_rate=1.0, warmup_ratio=0.1), total_steps=50)
    assert opt.learning_rate.numpy() == 0.0  # iterations 0
    opt.iterations.assign(5)
    assert float(opt.learning_rate) == pytest.approx(1.0)


@needs_two_cpus
@pytest.mark.parametrize("replicas", [1, 2])
def test_head_lr_multiplier_scales_only_the_head(train_split, tokenizer, replicas):
    """Adam's first step moves every weight by ~lr (m / sqrt(v) = sign(g)); with
    `head_lr_multiplier=10` the classifier moves by 10 lr and the encoder by lr,
    also through MirroredStrategy's per-device updates."""
    lr = 1e-3
    cfg = TrainConfig(batch_size=16 // replicas, learning_rate=lr, warmup_ratio=0.0, clip_norm=None,
                      weight_decay=0.0, head_lr_multiplier=10.0)
    strategy = (tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]) if replicas == 2
                else tf.distribute.get_strategy())
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = tiny_model(tokenizer.vocab_size, dropout=0.0, num_layers=1)
        before = {v.path: v.numpy() for v in model.trainable_variables}
        opt = build_optimizer(cfg, total_steps=100, model=model)
    step = Trainer(cfg, strategy, "unused")._make_train_step(model, opt)
    ds = make_dataset(train_split.features, train_split.labels, batch_size=16, drop_remainder=True)
    step(*next(iter(strategy.experimental_distribute_dataset(ds.take(1)))))
    moved = {v.path: float(np.max(np.abs(v.numpy() - before[v.path]))) for v in model.trainable_variables}
    head = [p for p in moved if "classifier" in p]
    encoder = [p for p in moved if "/encoder/" in p and "embeddings" not in p]
    assert head and encoder
    for p in head:
        assert moved[p] == pytest.approx(10 * lr, rel=1e-2), p  # eps/sqrt(v) shortens small steps a little
    # Weights with tiny gradients (attention at init) move less: eps dominates there.
    assert max(moved[p] for p in encoder) == pytest.approx(lr, rel=1e-2)


def test_build_optimizer_under_float16_loss_scaling_builds_once_and_scales_the_head(tokenizer):
    model = tiny_model(tokenizer.vocab_size, dropout=0.0, num_layers=1)
    cfg = TrainConfig(head_lr_multiplier=10.0)
    plain = build_optimizer(cfg, total_steps=10, model=model)
    scaled = build_optimizer(TrainConfig(head_lr_multiplier=10.0, mixed_precision="mixed_float16"),
                             total_steps=10, model=model)
    assert isinstance(scaled, keras.optimizers.LossScaleOptimizer)
    assert len(scaled.inner_optimizer.variables) == len(plain.variables)  # slots created once
    assert scaled.inner_optimizer._lr_factors == plain._lr_factors and set(plain._lr_factors.values()) == {10.0}


def test_no_warmup_starts_at_peak():
    assert float(WarmupLinearDecay(peak=1.0, total_steps=10, warmup_steps=0)(0)) == pytest.approx(1.0)


# ============================================================================ metrics
def _auc_by_pairs(y, score):
    pos, neg = score[y == 1], score[y == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_binary_metrics_by_hand():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    p1 = np.array([0.9, 0.6, 0.3, 0.7, 0.2, 0.3, 0.55, 0.8])  # one tie (0.3 / 0.3)
    probs = np.stack([1 - p1, p1], axis=1)
    m = classification_metrics(y, probs, ["0", "1"])
    # pred = [1,1,0,1,0,0,1,1]: TP 3, FN 1, FP 2, TN 2
    assert m["n"] == 8
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 2))
    # 16 pos/neg pairs: 0.9 -> 4, 0.6 -> 3, 0.3 -> 1 + tie 0.5, 0.8 -> 4
    assert m["auc"] == pytest.approx(12.5 / 16) == pytest.approx(_auc_by_pairs(y, p1))
    assert m["confusion_matrix"] == {"labels": ["0", "1"], "matrix": [[2, 2], [1, 3]]}
    assert "macro_f1" not in m

    # the same data with the class order reversed: "1" is still the positive class
    m2 = classification_metrics(1 - y, probs[:, ::-1], ["1", "0"])
    assert (m2["f1"], m2["auc"], m2["accuracy"]) == pytest.approx((m["f1"], m["auc"], m["accuracy"]))

    one_class = classification_metrics(np.ones(4, int), probs[:4], ["0", "1"])
    assert math.isnan(one_class["auc"]) and one_class["accuracy"] == pytest.approx(3 / 4)


def test_multiclass_macro_f1_by_hand():
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    probs = np.eye(3)[pred] * 0.8 + 0.2 / 3
    m = classification_metrics(y, probs, ["a", "b", "c"])
    # per class F1: a 1/(1+.5(1+1)) = .5, b 2/(2+.5*1) = .8, c 1/(1+.5*1) = 2/3
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert "f1" not in m and "auc" not in m
    assert m["confusion_matrix"]["matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


# ============================================================================ pipeline
def _features():
    rng = np.random.default_rng(0)
    lengths = [3, 9, 5, 2, 7, 4, 8, 6, 3, 5, 10, 4, 6, 2, 9, 7, 3, 8, 5, 6, 4, 7]  # 22 examples
    ids = [list(rng.integers(5, 50, n)) for n in lengths]
    return {"input_ids": ids, "token_type_ids": [[0] * n for n in lengths],
            "x_ids": [list(range(5, 5 + (n % 4) + 1)) for n in lengths],
            "idx": np.arange(len(lengths))}, np.arange(len(lengths)) % 2, lengths


def _idx(ds):
    return [b[0]["idx"].numpy().tolist() for b in ds]


def test_pipeline_padding_and_masks():
    feats, labels, lengths = _features()
    batches = list(make_dataset(feats, labels, batch_size=4, shuffle=False, bucket=False))
    assert [len(b[1]) for b in batches] == [4, 4, 4, 4, 4, 2]
    for x, y in batches:
        idx = x["idx"].numpy()
        assert x["input_ids"].shape[1] == max(lengths[i] for i in idx)  # padded per batch
        assert set(x) == {"input_ids", "attention_mask", "token_type_ids", "x_ids", "x_mask", "idx"}
        want = np.array([[1] * lengths[i] + [0] * (x["input_ids"].shape[1] - lengths[i]) for i in idx])
        np.testing.assert_array_equal(x["attention_mask"].numpy(), want)
        np.testing.assert_array_equal(x["input_ids"].numpy() != 0, want == 1)
        np.testing.assert_array_equal(x["x_mask"].numpy(), (x["x_ids"].numpy() > 0).astype(int))
        np.testing.assert_array_equal(y.numpy(), labels[idx])
    assert sorted(i for b in _idx(batches) for i in b) == list(range(22))


def test_pipeline_order_is_a_function_of_seed_and_epoch():
    feats, labels, _ = _features()
    run = lambda **kw: _idx(make_dataset(feats, labels, batch_size=4, shuffle=True, **kw))  # noqa: E731
    assert run(seed=1, epoch=0) == run(seed=1, epoch=0)
    assert run(seed=1, epoch=0) != run(seed=1, epoch=1)
    assert run(seed=1, epoch=0) != run(seed=2, epoch=0)
    assert run(seed=1, epoch=3, bucket=False) == run(seed=1, epoch=3, bucket=False)


@pytest.mark.parametrize("bucket", [True, False])
def test_pipeline_skip_batches_resumes_exactly(bucket):
    feats, labels, _ = _features()
    kw = dict(batch_size=4, shuffle=True, seed=5, epoch=2, drop_remainder=True, bucket=bucket)
    full = list(make_dataset(feats, labels, **kw))
    assert len(full) == 5 and all(len(y) == 4 for _, y in full)  # 22 // 4, remainder dropped
    for k in (1, 3):
        resumed = list(make_dataset(feats, labels, skip_batches=k, **kw))
        assert _idx(full[:k]) + _idx(resumed) == _idx(full)
        for (xa, ya), (xb, yb) in zip(full[k:], resumed):
            for key in xa:
                np.testing.assert_array_equal(xa[key].numpy(), xb[key].numpy())
            np.testing.assert_array_equal(ya.numpy(), yb.numpy())


def test_pipeline_drop_remainder():
    feats, labels, _ = _features()
    for bucket in (True, False):
        kept = make_dataset(feats, labels, batch_size=8, shuffle=True, drop_remainder=True, bucket=bucket)
        assert [len(b) for b in _idx(kept)] == [8, 8]
        allb = make_dataset(feats, labels, batch_size=8, shuffle=True, drop_remainder=False, bucket=bucket)
        assert sorted(len(b) for b in _idx(allb)) == [6, 8, 8]


def test_pipeline_drop_remainder_does_not_always_drop_the_longest():
    feats, labels, lengths = _features()
    feats["input_ids"][0] = list(range(5, 105))  # one 100-token example (its own bucket)
    seen = set()
    for epoch in range(8):  # fixed: P(never seen) = (2/22)^8
        for b in _idx(make_dataset(feats, labels, batch_size=4, shuffle=True, epoch=epoch, drop_remainder=True)):
            seen.update(b)
    assert 0 in seen


# ============================================================================ the loop (micro model)
class _StopAt:
    """Stands in for trainer._StopFlag: 'receives SIGTERM' during step `at`."""

    def __init__(self, at):
        self.at, self.calls = at, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @property
    def signum(self):  # read once per step, after the step
        self.calls += 1
        return signal.SIGTERM if self.calls >= self.at else None


def _fit(run_dir, split, vocab_size, monkeypatch, dropout=0.0, stop_at=None, epochs=2, valid=None, evaluate=None,
         model=None, **cfg_kw):
    """Trainer.fit of a micro model (cheap to trace), as train_task would run it: 64 examples = 4 steps/epoch."""
    import training.trainer as trainer_mod

    cfg = TrainConfig(**{**dict(batch_size=16, epochs=epochs, learning_rate=1e-2, warmup_ratio=0.0, seed=3,
                                verbose=0, save_every=2, patience=0), **cfg_kw})
    keras.utils.set_random_seed(cfg.seed)  # as train_task does, in every process
    model = model or micro_model(vocab_size, dropout=dropout)
    monkeypatch.setattr(trainer_mod, "_StopFlag", lambda: _StopAt(stop_at or 10 ** 9))
    trainer = Trainer(cfg, tf.distribute.get_strategy(), run_dir)
    result = trainer.fit(model, split, valid, evaluate, metric="f1")
    return model, result


def _resume_case(tmp_path, split, vocab_size, monkeypatch, dropout):
    ref, ref_result = _fit(tmp_path / "ref", split, vocab_size, monkeypatch, dropout=dropout)
    with pytest.raises(TrainingInterrupted, match="at step 3; run the same command again to resume"):
        _fit(tmp_path / "run", split, vocab_size, monkeypatch, dropout=dropout, stop_at=3)
    assert tf.train.latest_checkpoint(str(tmp_path / "run" / "backup")).endswith("ckpt-3")
    resumed, result = _fit(tmp_path / "run", split, vocab_size, monkeypatch, dropout=dropout)
    assert result.steps == ref_result.steps == 8
    return _maxdiff(resumed.get_weights(), ref.get_weights())


def test_in_process_resume_is_exact_without_dropout(tmp_path, train_split, tokenizer, monkeypatch):
    assert _resume_case(tmp_path, train_split, tokenizer.vocab_size, monkeypatch, dropout=0.0) == 0.0


def test_in_process_resume_is_exact_with_dropout(tmp_path, train_split, tokenizer, monkeypatch):
    assert _resume_case(tmp_path, train_split, tokenizer.vocab_size, monkeypatch, dropout=0.3) == 0.0


def test_in_process_resume_at_epoch_boundary_keeps_validation(tmp_path, train_split, tokenizer, monkeypatch):
    evaluate = lambda model, split: {"f1": 0.5}  # noqa: E731
    with pytest.raises(TrainingInterrupted, match="at step 4"):  # the last step of epoch 1
        _fit(tmp_path / "run", train_split, tokenizer.vocab_size, monkeypatch, stop_at=4,
             valid=train_split, evaluate=evaluate)
    _, result = _fit(tmp_path / "run", train_split, tokenizer.vocab_size, monkeypatch,
                     valid=train_split, evaluate=evaluate)
    assert result.steps == 8
    assert [h["epoch"] for h in result.history] == [1, 2]


def test_en_vocab_is_the_same_when_a_run_restarts(tmp_path, data):
    from data import read_pairs
    from training.inputs import init_encoder

    cfg = _cfg(data=data)
    cfg.model.vocab = None
    pairs = read_pairs(data["train"])
    texts = pairs.text_a + pairs.text_b
    seen = set()
    for _ in range(4):  # four "restarts" of the same run
        init_encoder(cfg.model, texts, tmp_path, num_layers=1)
        seen.add((tmp_path / "vocab.txt").read_text())
    assert len(seen) == 1


def test_epoch_line_shows_the_mean_loss_of_the_epoch(tmp_path, train_split, tokenizer, monkeypatch, capsys):
    """verbose=2 prints one line per epoch; its loss is the mean of that epoch's step losses
    (Keras 3's Progbar alone would print the last step's, which misled an MRPC diagnosis)."""
    losses = []
    original = Trainer._make_train_step

    def recording(self, model, optimizer):
        step = original(self, model, optimizer)

        def run(x, y):
            loss, terms = step(x, y)
            losses.append(float(loss))
            return loss, terms
        return run

    monkeypatch.setattr(Trainer, "_make_train_step", recording)
    _fit(tmp_path / "run", train_split, tokenizer.vocab_size, monkeypatch, epochs=2, verbose=2)
    printed = [float(m) for m in re.findall(r"4/4 - .* loss: ([0-9.]+)", capsys.readouterr().out)]
    assert len(losses) == 8 and len(printed) == 2
    assert len(set(losses[:4])) > 1, "steps with equal losses cannot tell a mean from the last value"
    assert printed == pytest.approx([np.mean(losses[:4]), np.mean(losses[4:])], abs=1e-4)


def test_nan_loss_names_the_step_and_keeps_the_checkpoint(tmp_path, train_split, tokenizer, monkeypatch):
    model = micro_model(tokenizer.vocab_size)
    calls = tf.Variable(0, dtype=tf.int64, trainable=False)
    original = type(model).loss_terms

    def nan_at_step_3(self, x, y, y_pred):
        terms = original(self, x, y, y_pred)
        n = calls.assign_add(1)
        return {k: tf.where(n >= 3, tf.constant(np.nan, v.dtype), v) for k, v in terms.items()}

    monkeypatch.setattr(type(model), "loss_terms", nan_at_step_3)
    with pytest.raises(TrainingError) as e:
        _fit(tmp_path / "run", train_split, tokenizer.vocab_size, monkeypatch, model=model)
    backup = tmp_path / "run" / "backup"
    msg = str(e.value)
    assert not isinstance(e.value, TrainingInterrupted)
    assert "loss became nan at step 3 (epoch 1)" in msg
    assert f"the last good checkpoint is kept in {backup}" in msg
    latest = tf.train.latest_checkpoint(str(backup))
    assert latest and latest.endswith("ckpt-2")  # step 3 was never saved
    reader = tf.train.load_checkpoint(latest)
    values = [reader.get_tensor(k) for k in reader.get_variable_to_shape_map() if k.startswith("model/")]
    assert values and all(np.all(np.isfinite(v)) for v in values if np.issubdtype(v.dtype, np.floating))


def test_fit_hands_a_scheduled_model_the_optimizer_step_and_the_planned_steps(tmp_path, train_split, tokenizer,
                                                                             monkeypatch):
    # virt.weight_schedule reads the step through `follow_steps` (VirtTraining); 64 examples = 4 steps x 2 epochs.
    seen = []
    model = micro_model(tokenizer.vocab_size)
    model.follow_steps = lambda step, total: seen.append((step, total))
    _fit(tmp_path, train_split, tokenizer.vocab_size, monkeypatch, model=model)
    assert len(seen) == 1 and seen[0][1] == 8
    assert int(seen[0][0].numpy()) == 8  # the optimizer's own counter, after the 8 steps


def test_early_stopping_when_the_metric_cannot_improve(tmp_path, data, train_split, tokenizer, monkeypatch):
    from training.trainer import evaluator

    valid = _split(data["valid"], tokenizer, "valid")
    saved = []
    model = micro_model(tokenizer.vocab_size)
    cfg = TrainConfig(batch_size=16, epochs=5, learning_rate=0.0, patience=1, verbose=0, seed=3)
    import training.trainer as trainer_mod

    monkeypatch.setattr(trainer_mod, "_StopFlag", lambda: _StopAt(10 ** 9))
    result = Trainer(cfg, tf.distribute.get_strategy(), tmp_path).fit(
        model, train_split, valid, evaluator(["0", "1"], 64), lambda m, metrics: saved.append(metrics), metric="f1")
    assert [h["epoch"] for h in result.history] == [1, 2]  # of 5 planned
    assert result.steps == 8 and result.best_epoch == 1 and len(saved) == 1
    assert result.history[0]["f1"] == result.history[1]["f1"]
    assert json.loads((tmp_path / "backup" / "state.json").read_text())["bad_epochs"] == 1


# ============================================================================ data / tasks
def test_held_out_validation_is_seeded_and_disjoint(data, caplog):
    from training.inputs import load_splits

    def splits(seed):
        cfg = _cfg([f"train.seed={seed}"])
        cfg.data.train = data["train"]
        return load_splits(cfg)

    with caplog.at_level(logging.INFO, logger="training.inputs"):
        a = splits(1)
    assert "no data.valid: holding out a seeded 10% of train (6 pairs)" in caplog.text
    b, c = splits(1), splits(2)
    assert len(a.valid) == 6 and len(a.train) == 58
    assert a.valid.lines == b.valid.lines and a.train.lines == b.train.lines
    assert a.valid.lines != c.valid.lines
    assert not set(a.valid.lines) & set(a.train.lines)
    assert sorted(a.valid.lines + a.train.lines) == list(range(2, 66))


NLI_SETS = ("data.text_a=premise", "data.text_b=hypothesis", "data.label=gold", "train.epochs=1",
            "train.steps_per_epoch=2", "train.mixed_precision=mixed_bfloat16")


@pytest.fixture(scope="module")
def nli_run(tmp_path_factory, data):
    """A finished tiny run on string labels (3 classes). It also serves as THE mixed-precision
    run (mixed_bfloat16), to keep the file within its time budget."""
    root = tmp_path_factory.mktemp("nli")
    files = {"train": write_nli(root / "train.csv", 48, seed=1), "valid": write_nli(root / "valid.csv", 12, seed=2),
             "vocab": data["vocab"]}
    assert keras.mixed_precision.global_policy().name == "float32"
    args = ["--task", "finetune", "--out", str(root / "run"), "--set", *tiny_overrides(files, files["vocab"], *NLI_SETS)]
    assert run_tasks.main(args) == 0
    return root, files


def test_string_labels_order_metrics_and_predict(nli_run, capsys):
    root, files = nli_run
    run = root / "run"
    meta = json.loads((run / "model" / "model.json").read_text())
    assert meta["labels"] == sorted(NLI_LABELS) == ["CONTRADICTION", "ENTAILMENT", "NEUTRAL"]
    m = json.loads((run / "metrics.json").read_text())
    assert "macro_f1" in m["valid"] and "f1" not in m["valid"] and "auc" not in m["valid"]
    assert m["training"]["selection_metric"] == "accuracy"  # the default train.metric (f1 would select macro_f1)
    assert m["valid"]["confusion_matrix"]["labels"] == meta["labels"]

    out = root / "pred.csv"
    assert run_tasks.main(["--task", "predict", "--out", str(out), "--set", f"model.init={run / 'model'}",
                           f"data.test={files['valid']}", "data.text_a=premise", "data.text_b=hypothesis"]) == 0
    rows = out.read_text().splitlines()
    assert rows[0] == "text_a,text_b,label,p_CONTRADICTION,p_ENTAILMENT,p_NEUTRAL"
    assert len(rows) == 13
    for row in rows[1:]:
        *_, label, p1, p2, p3 = row.split(",")
        assert label in NLI_LABELS
        assert float(p1) + float(p2) + float(p3) == pytest.approx(1.0, abs=1e-5)


def test_refuses_to_overwrite_a_finished_run(nli_run, capsys):
    root, files = nli_run
    metrics = root / "run" / "metrics.json"
    before, mtime = metrics.read_bytes(), metrics.stat().st_mtime_ns
    capsys.readouterr()
    rc = run_tasks.main(["--task", "finetune", "--out", str(root / "run"), "--set",
                         *tiny_overrides(files, files["vocab"], *NLI_SETS)])
    err = capsys.readouterr().err
    assert rc == 1
    assert f"error: {root / 'run'} already holds a finished run (metrics.json); choose another --out" in err
    assert metrics.read_bytes() == before and metrics.stat().st_mtime_ns == mtime


def test_mixed_bfloat16_run_and_policy_restored(nli_run):
    root, _ = nli_run  # trained with train.mixed_precision=mixed_bfloat16
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after the run
    m = json.loads((root / "run" / "metrics.json").read_text())
    assert m["training"]["steps"] == 2  # every step's loss was finite, or fit would have raised
    assert all(np.isfinite(m["valid"][k]) for k in ("accuracy", "macro_f1"))
    meta = json.loads((root / "run" / "model" / "model.json").read_text())
    assert '"mixed_bfloat16"' in json.dumps(meta["model"])  # the layers really ran under the mixed policy
    assert meta["model"]["config"]["encoder"]  # the architecture is saved


@needs_two_cpus
def test_make_strategy_cpu_replicas():
    from training.strategy import make_strategy

    s = make_strategy(TrainConfig(cpu_replicas=2))
    assert isinstance(s, tf.distribute.MirroredStrategy) and s.num_replicas_in_sync == 2
    with pytest.raises(RuntimeError, match="cpu_replicas=3"):
        make_strategy(TrainConfig(cpu_replicas=3))


# ============================================================================ resume (subprocesses)
SIGNAL_MSG = r"error: stopped by signal 15 at step (\d+); run the same command again to resume"
RESUME_TEST = "test_resume_after_sigterm_then_sigkill"


def _ckpt_step(backup):
    """The step of the latest checkpoint in a backup dir (read from the `checkpoint` state file)."""
    try:
        text = (Path(backup) / "checkpoint").read_text()
    except OSError:
        return None
    m = re.search(r'^model_checkpoint_path: ".*?ckpt-(\d+)"', text, re.M)
    return int(m.group(1)) if m else None


class _ResumeChain(threading.Thread):
    """Drives the subprocesses of test_resume_after_sigterm_then_sigkill in the background, so
    that their start-up (importing TensorFlow, ~3 x 10 s) overlaps the in-process tests:

    save_every=3 never falls on an epoch's last step (16, 32), so a SIGKILL cannot leave the
    step-level checkpoint taken before an epoch's validation (the epoch-boundary bug, see
    test_in_process_resume_at_epoch_boundary_keeps_validation); the epoch-end checkpoints are
    written after validation.

    p1: SIGTERM once its first checkpoint exists.  p2: the same command, SIGKILL once it saved a
    checkpoint newer than p1's.  p3: the same command, to the end. Only subprocesses run here
    (no TensorFlow in this thread); the test asserts on `self.out` and trains the uninterrupted
    reference in-process (cheaper than a 4th process)."""

    def __init__(self, root):
        super().__init__(daemon=True)
        self.root = Path(root)
        self.data = make_data(self.root / "data", n_train=256, n_valid=32)  # 16 steps/epoch
        self.sets = tiny_overrides(self.data, self.data["vocab"], "model.dropout=0", "train.epochs=2",
                                   "train.save_every=3", "train.seed=7", "train.patience=0")
        self.run_dir, self.backup = self.root / "run", self.root / "run" / "backup"
        self.out, self.error, self.procs = {}, None, []

    def start_cli(self, out):
        p = popen_cli(["--task", "finetune", "--out", out, "--set", *self.sets], cwd=self.root)
        self.procs.append(p)
        return p

    def signal_when_saved(self, proc, signum, newer_than=0, timeout=300):
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            step = _ckpt_step(self.backup)
            if step is not None and step > newer_than:
                proc.send_signal(signum)
                return
            time.sleep(0.02)

    def run(self):
        try:
            p1 = self.start_cli(self.run_dir)
            self.signal_when_saved(p1, signal.SIGTERM)
            self.out["p1"] = self.finish(p1)
            self.out["after_p1"] = (_ckpt_step(self.backup), (self.run_dir / "metrics.json").exists())
            m = re.search(SIGNAL_MSG, self.out["p1"][1])
            stopped_at = int(m.group(1)) if m else 0
            p2 = self.start_cli(self.run_dir)
            self.signal_when_saved(p2, signal.SIGKILL, newer_than=stopped_at)
            self.out["p2"] = self.finish(p2)
            self.out["after_p2"] = _ckpt_step(self.backup)
            p3 = self.start_cli(self.run_dir)
            self.out["p3"] = self.finish(p3)
        except BaseException as e:  # reported by the test
            self.error = e
        finally:
            self.kill_all()

    @staticmethod
    def finish(proc):
        _, err = proc.communicate(timeout=300)
        return proc.returncode, err

    def kill_all(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.fixture(scope="module", autouse=True)
def resume_chain(request, tmp_path_factory):
    """Started with the module's first test, only if the resume test is selected."""
    if not any(item.name == RESUME_TEST for item in request.session.items):
        yield None
        return
    chain = _ResumeChain(tmp_path_factory.mktemp("resume"))
    chain.start()
    yield chain
    chain.kill_all()
    chain.join(timeout=30)


def test_resume_after_sigterm_then_sigkill(resume_chain):
    """Real signals on a real process: SIGTERM -> checkpoint, one-line message, exit 143; the
    restart resumes there; SIGKILL it after a newer checkpoint; the next restart resumes from
    that one and finishes at the planned step count (2 epochs x 16) with the same metrics as an
    uninterrupted run. model.dropout=0 here, because with dropout a resumed run is NOT exact
    (test_in_process_resume_is_exact_with_dropout)."""
    chain = resume_chain
    assert run_tasks.main(["--task", "finetune", "--out", str(chain.root / "ref"), "--set", *chain.sets]) == 0
    chain.join(timeout=600)
    assert not chain.is_alive(), "subprocesses still running after 600 s"
    if chain.error:
        raise chain.error
    planned, steps_per_epoch = 32, 16
    out = chain.out

    rc1, err1 = out["p1"]
    assert rc1 == 143, err1[-3000:]
    m = re.search(SIGNAL_MSG, err1)
    assert m and "Traceback" not in err1, err1[-3000:]
    stopped_at = int(m.group(1))
    assert 3 <= stopped_at < planned
    assert out["after_p1"] == (stopped_at, False)  # checkpoint at the stop, no metrics.json yet

    rc2, err2 = out["p2"]
    assert rc2 == -signal.SIGKILL, err2[-3000:]
    assert re.search(rf"resumed from \S+ckpt-{stopped_at} at step {stopped_at}\b", err2), err2[-3000:]
    killed_at = out["after_p2"]
    assert stopped_at < killed_at < planned
    print(f"SIGTERM handled at step {stopped_at}; SIGKILL after the checkpoint of step {killed_at}")

    rc3, err3 = out["p3"]
    assert rc3 == 0, err3[-3000:]
    assert re.search(rf"resumed from \S+ckpt-{killed_at} at step {killed_at}\b", err3), err3[-3000:]

    got = json.loads((chain.run_dir / "metrics.json").read_text())
    ref = json.loads((chain.root / "ref" / "metrics.json").read_text())
    assert got["training"]["steps"] == ref["training"]["steps"] == planned
    assert not chain.backup.exists()  # removed once the run finished
    for key in ("accuracy", "auc", "f1"):
        assert got["valid"][key] == pytest.approx(ref["valid"][key], abs=1e-6), key
    assert got["training"]["best_epoch"] == ref["training"]["best_epoch"]
    assert len(got["training"]["history"]) == len(ref["training"]["history"]) == 2
    for a, b in zip(got["training"]["history"], ref["training"]["history"]):
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], abs=1e-6) for k in a)


def test_epochs_null_follows_the_data_size_rule():
    from config.schema import TrainConfig
    from training.trainer import epochs_for

    auto = TrainConfig(epochs=None, auto_steps=1500)
    # ceil(1500 / steps per epoch), clipped to 3..10: worked by hand
    assert [epochs_for(auto, s) for s in (62, 102, 156, 200, 625, 3125)] == [10, 10, 10, 8, 3, 3]
    assert epochs_for(TrainConfig(epochs=2, auto_steps=1500), 62) == 2  # an explicit value wins
    # Under 10 batches an epoch, more than 10 epochs so the schedule reaches 100 steps: ceil(100 / s)
    assert [epochs_for(auto, s) for s in (10, 8, 3, 1)] == [10, 13, 34, 100]


def test_patience_null_scales_with_the_schedule():
    from config.schema import TrainConfig
    from training.trainer import patience_for

    # max(2, ceil(epochs / 5)): unchanged (2) up to 10 epochs, 7 of a 34-epoch schedule of 3-step epochs
    assert [patience_for(TrainConfig(patience=None), e) for e in (2, 3, 10, 11, 13, 34)] == [2, 2, 2, 3, 3, 7]
    assert patience_for(TrainConfig(patience=0), 34) == 0 and patience_for(TrainConfig(patience=5), 3) == 5


def test_a_short_schedule_and_constant_predictions_are_reported():
    from types import SimpleNamespace

    from config.schema import TrainConfig
    from training.metrics import classification_metrics, constant_prediction_warnings
    from training.trainer import schedule_warnings

    # 18 steps (2 epochs of 9: the quick start's old default) warns and names the rule; 100 does not
    short = schedule_warnings(SimpleNamespace(planned_steps=18), TrainConfig(epochs=2))
    assert len(short) == 1 and "18 optimizer steps" in short[0] and "train.epochs=null" in short[0]
    assert schedule_warnings(SimpleNamespace(planned_steps=100), TrainConfig(epochs=2)) == []
    y = np.array([0, 1] * 50)
    # p_1 between 0.43 and 0.56 for every pair (what the user saw): spread 0.13 by construction
    p1 = np.linspace(0.43, 0.56, 100)
    flat = classification_metrics(y, np.stack([1 - p1, p1], 1), ["0", "1"])
    assert flat["spread"] == pytest.approx(np.percentile(p1, 95) - np.percentile(p1, 5))
    assert "nearly constant" in constant_prediction_warnings(flat)[0]
    one_class = classification_metrics(y, np.tile([0.9, 0.1], (100, 1)) + np.linspace(0, .3, 100)[:, None] * [-1, 1],
                                       ["0", "1"])
    assert "every valid pair is predicted as '0'" in constant_prediction_warnings(one_class)[0]
    good = classification_metrics(y, np.stack([1 - y * 0.9 - 0.05, y * 0.9 + 0.05], 1), ["0", "1"])
    assert good["spread"] == pytest.approx(0.9) and constant_prediction_warnings(good) == []


def test_token_cache_is_keyed_by_the_tokenisation_version(tmp_path, monkeypatch):
    # Cached ids written before a change to the tokenisation must not be read after it
    # (stale ids once made a test's weights differ by 4e-4).
    import modeling.tokenization
    from modeling.tokenization import PairTokenizer
    from tests.tiny_runs import make_data, tiny_model
    from training import inputs

    tok = PairTokenizer(make_data(tmp_path / "data", n_train=16, n_valid=4)["vocab"])
    model = tiny_model(tok.vocab_size)
    inputs.cached_featurize(model, tok, ["open an account"], ["create an account"], 16, tmp_path / "tokens")
    monkeypatch.setattr(inputs, "IDS_VERSION", modeling.tokenization.IDS_VERSION + 1)
    inputs.cached_featurize(model, tok, ["open an account"], ["create an account"], 16, tmp_path / "tokens")
    assert len(list((tmp_path / "tokens").glob("*.npz"))) == 2


def test_token_cache_reads_a_file_written_before_common_cache(tmp_path, tokenizer):
    """A run directory's cache from before the move to common/cache.py is hit: same key, same layout.
    The key and the file are made here as the old training/inputs.py made them."""
    from modeling.tokenization import IDS_VERSION
    from training import inputs

    class Layout:  # featurize must not run: the cached ids are read
        @staticmethod
        def featurize(*args):
            raise AssertionError("featurized although cached")

    a, b = ["open an account", "close it"], ["create an account", "shut it"]
    h = hashlib.sha256()
    h.update(Path(tokenizer.vocab_file).read_bytes())
    h.update(f"{IDS_VERSION}|{tokenizer.lowercase}|16|Layout|False".encode())
    for x, y in zip(a, b):
        h.update(f"{x}\x1f{y}\x1e".encode())
    (tmp_path / "tokens").mkdir()
    np.savez(tmp_path / "tokens" / f"{h.hexdigest()[:24]}.npz", **{
        "input_ids.flat": np.array([101, 7, 102, 101, 8, 9, 102], np.int32), "input_ids.len": np.array([3, 4])})
    feats = inputs.cached_featurize(Layout(), tokenizer, a, b, 16, tmp_path / "tokens")
    assert feats == {"input_ids": [[101, 7, 102], [101, 8, 9, 102]]}

    class Counted:
        calls = 0

        def featurize(self, tok, x, y, max_len):
            Counted.calls += 1
            return tok.encode_pairs(x, y, max_len)

    # A miss computes and writes; the next call reads what was written, equal to the computed ids.
    computed = inputs.cached_featurize(Counted(), tokenizer, a[:1], b[:1], 16, tmp_path / "tokens")
    assert Counted.calls == 1 and len(list((tmp_path / "tokens").iterdir())) == 2
    assert inputs.cached_featurize(Counted(), tokenizer, a[:1], b[:1], 16, tmp_path / "tokens") == computed
    assert Counted.calls == 1


def test_config_yaml_is_the_effective_config_and_a_resume_compares_the_given_one(tmp_path, data, monkeypatch):
    """config.yaml records what ran (the sample data's paths, decided after the given config); a resumed
    run is compared with the configuration as it was given, so the decisions do not refuse it."""
    import copy

    from config import load_config as load
    from training.inputs import load_splits
    from training.rundir import RunError, check_resume, start_run

    out = tmp_path / "run"
    given = _cfg(out=out)
    given.data.train = given.data.valid = None  # the generated sample data
    cfg = copy.deepcopy(given)
    load_splits(cfg)
    assert cfg.data.train is not None and cfg != given
    assert Path(cfg.data.train).parent == out / "sample_data"  # written under the run's --out, nowhere else
    start_run(cfg, out, given)
    assert load(out / "config.yaml") == cfg
    (out / "backup").mkdir()
    (out / "backup" / "checkpoint").write_text("")  # an interrupted run
    assert check_resume(copy.deepcopy(given), out)
    given.train.seed += 1
    with pytest.raises(RunError, match=r"train.seed: 42 -> 43"):
        check_resume(given, out)


def test_predict_progress_goes_to_stderr_and_only_when_slow(capsys):
    """predict writes its results to stdout: its progress bar must not mix with them."""
    from runtime.progress import progress_bar

    with progress_bar(4, "scoring", "pair", disable=False) as quick:  # done long before the delay: nothing
        for _ in range(4):
            quick.update(1)
    assert capsys.readouterr() == ("", "")
    with progress_bar(4, "scoring", "pair", delay=0.0, disable=False) as slow:
        for _ in range(4):
            time.sleep(0.12)  # tqdm redraws at most every 0.1 s
            slow.update(1)
    out, err = capsys.readouterr()
    assert out == "" and "scoring" in err and "4/4" in err


def test_selection_metric_default_and_multiclass_mapping():
    """accuracy by default (f1 kept near-constant early epochs on BQ and MRPC: docs/defaults.md); f1 and auc
    exist for two classes only and select macro-F1 otherwise."""
    from config import load_config
    from training.runner import TrainingTask

    def chosen(metric, labels):
        sets = [] if metric is None else [f"train.metric={metric}"]
        return TrainingTask(load_config(None, sets)).selection_metric(labels)

    three = ["a", "b", "c"]
    assert [chosen(None, ["0", "1"]), chosen(None, three)] == ["accuracy", "accuracy"]
    assert [chosen("f1", ["0", "1"]), chosen("f1", three), chosen("auc", three)] == ["f1", "macro_f1", "macro_f1"]
