"""The one training loop every task uses; tasks differ only by model and loss.

Per step: forward + loss terms (optionally XLA-compiled) on each replica ->
gradients summed once over replicas -> AdamW clipped on the global norm.
Per epoch: evaluate on the validation split, keep the best model, stop early.

Resume is exact: every epoch's order is a function of (seed, epoch), the
checkpoint holds model, optimizer (its step counter) and dropout seed state,
and a restarted run skips the batches already done in the interrupted epoch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from common.files import write_json
from runtime.progress import progress_bar
from training.metrics import (better, best_threshold, classification_metrics, cosine_metrics, same_meaning,
                              with_uncertainty)
from training.optim import build_optimizer
from training.pipeline import example_lengths, make_dataset, num_batches
from training.strategy import is_chief

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, too little data, ...)."""


class TrainingInterrupted(TrainingError):
    """SIGTERM/SIGINT arrived; a checkpoint was written and the run can resume."""


@dataclass
class Split:
    """Tokenised examples of one split: ragged features and integer labels."""

    name: str
    features: dict
    labels: np.ndarray | None
    texts: tuple = ()  # (texts_a, texts_b), kept for reports

    def __len__(self):
        return len(next(iter(self.features.values())))


@dataclass
class FitResult:
    best_epoch: int | None
    best_metrics: dict | None
    history: list = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    planned_steps: int = 0  # steps per epoch x epochs of the schedule (early stopping may run fewer)


class _StopFlag:
    """Turns SIGTERM/SIGINT into a flag the loop checks after each step."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


AUTO_EPOCHS = (3, 10)  # train.epochs=null: the fewest and most epochs the rule may pick
MIN_STEPS = 100  # fewer optimizer steps than this left a quick-start model at constant outputs (docs/defaults.md)


def epochs_for(cfg, steps_per_epoch):
    """`train.epochs`, or when null a data-size rule: enough epochs for about `train.auto_steps`
    optimizer steps, between 3 and 10, and more than 10 when that is needed for `MIN_STEPS` steps
    (files of fewer than about 10 batches). Small sets then get the long schedules they need (the
    VIRT paper: 30 epochs on 2.5k-9k pairs, 5 on large sets) and large sets are not overtrained;
    model selection on valid and `train.patience` keep the best epoch either way. The measurements
    behind the numbers are in docs/defaults.md."""
    if cfg.epochs is not None:
        return cfg.epochs
    lo, hi = AUTO_EPOCHS
    hi = max(hi, math.ceil(MIN_STEPS / steps_per_epoch))
    epochs = min(hi, max(lo, math.ceil(cfg.auto_steps / steps_per_epoch)))
    log.info("train.epochs=null: %d epochs of %d steps (train.auto_steps=%d, within %d..%d)",
             epochs, steps_per_epoch, cfg.auto_steps, lo, hi)
    return epochs


def patience_for(cfg, epochs):
    """`train.patience`, or when null the larger of 2 epochs and a fifth of the schedule: short epochs
    of a small file (3 steps each) must not stop a run at chance before it has started to learn."""
    if cfg.patience is not None:
        return cfg.patience
    return max(2, math.ceil(epochs / 5))


def schedule_warnings(result, cfg):
    """Why a finished schedule may have left the model undertrained (shown in the log and the summary)."""
    if result.planned_steps >= MIN_STEPS:
        return []
    how = ("train.epochs=null (the data-size rule)" if cfg.epochs is not None
           else "a smaller train.batch_size or more training pairs")
    return [f"the schedule had {result.planned_steps} optimizer steps, fewer than {MIN_STEPS}: a model trained "
            f"this briefly may score every pair alike; try {how}"]


def predict_outputs(model, features, batch_size, fn=None, progress=False):
    """Run `fn` (default: the model's named outputs, `{name: array}` as its kind's `predict_outputs`
    names them: `probs` and/or `cosine`) over features in length-sorted batches, in input order
    (`progress`: a progress bar on stderr once it takes more than a few seconds)."""
    fn = fn or model.outputs_fn()
    order = np.argsort(example_lengths(features), kind="stable")
    sorted_feats = {k: ([v[i] for i in order] if isinstance(v, list) else np.asarray(v)[order])
                    for k, v in features.items()}
    outs = []
    with progress_bar(len(order), "scoring", "pair") if progress else contextlib.nullcontext() as bar:
        for x in make_dataset(sorted_feats, batch_size=batch_size, bucket=False):
            outs.append(fn(x))
            if bar is not None:
                bar.update(len(next(iter(x.values()))))
    if isinstance(outs[0], dict):
        merged = {k: np.concatenate([o[k].numpy() for o in outs]) for k in outs[0]}
        return {k: _unsort(v, order) for k, v in merged.items()}
    return _unsort(np.concatenate([o.numpy() for o in outs]), order)



def evaluator(label_names, batch_size, threshold=None):
    """Metrics of a model of any kind on a split, from its named outputs: classification metrics of
    `probs` (a classifier), and of `cosine` against a threshold (a bi-encoder's rule; its only one
    without a classifier). The threshold is `threshold` (a run's recorded one) when given, else chosen
    on the `valid` split (on the first split seen when none is valid) and reused for the others.
    `final` (the run's report, not the per-epoch selection) adds the classifier's intervals and
    per-pair outputs (`training.metrics.with_uncertainty`)."""
    state = {"threshold": threshold}

    def evaluate(model, split, final=False):
        out = predict_outputs(model, split.features, batch_size)
        metrics = {}
        if "probs" in out:
            metrics = classification_metrics(split.labels, out["probs"], label_names)
            if final:
                metrics = with_uncertainty(metrics, split.labels, out["probs"], label_names)
        if "cosine" in out:
            if threshold is None and (split.name == "valid" or state["threshold"] is None):
                state["threshold"] = best_threshold(out["cosine"], same_meaning(split.labels, label_names))[2]
            cosine = cosine_metrics(split.labels, out["cosine"], label_names, state["threshold"])
            metrics.update({k: v for k, v in cosine.items() if k not in metrics})  # a classifier's n, matrix
        return metrics
    return evaluate


def _unsort(values, order):
    out = np.empty_like(values)
    out[order] = values
    return out


class Trainer:
    """Fits a task model (`modeling.task_model.PairModel`) under a tf.distribute strategy."""

    def __init__(self, train_cfg, strategy, run_dir):
        self.cfg = train_cfg
        self.strategy = strategy
        self.run_dir = Path(run_dir)
        self.chief = is_chief(strategy)
        self.replicas = strategy.num_replicas_in_sync

    @property
    def global_batch(self):
        return self.cfg.batch_size * self.replicas

    # ------------------------------------------------------------------ step
    def _make_train_step(self, model, optimizer):
        replicas = self.replicas
        loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

        @tf.function(jit_compile=self.cfg.jit_compile, reduce_retracing=True)
        def forward_backward(x, y):
            with tf.GradientTape() as tape:
                y_pred = model(x, training=True)
                terms = model.loss_terms(x, y, y_pred)
                loss = tf.add_n([tf.cast(t, tf.float32) for t in terms.values()])
                # Each replica holds 1/R of the global batch: the summed gradients
                # are then those of the global-batch mean.
                scaled = loss / replicas
                if loss_scaled:
                    scaled = optimizer.scale_loss(scaled)
            grads = tape.gradient(scaled, model.trainable_variables)
            return loss, terms, grads

        def replica_step(x, y):
            loss, terms, grads = forward_backward(x, y)
            pairs = [(g, v) for g, v in zip(grads, model.trainable_variables) if g is not None]
            grads = [g for g, _ in pairs]
            if replicas > 1:
                grads = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
            optimizer.apply(grads, [v for _, v in pairs])
            return loss, terms

        @tf.function(reduce_retracing=True)
        def train_step(x, y):
            loss, terms = self.strategy.run(replica_step, args=(x, y))
            mean = lambda t: self.strategy.reduce(tf.distribute.ReduceOp.MEAN, t, axis=None)  # noqa: E731
            return mean(loss), {k: mean(v) for k, v in terms.items()}

        return train_step

    # ------------------------------------------------------------------ fit
    def fit(self, model, train, valid=None, evaluate=None, save_best=None, metric=None):
        """Train `model` on `train`; after each epoch `evaluate(model, valid) -> dict`,
        and `save_best(model, metrics)` when `metric` improved. Returns a FitResult."""
        cfg = self.cfg
        steps_per_epoch, epochs = self._budget(train)
        with self.strategy.scope():
            optimizer = build_optimizer(cfg, steps_per_epoch * epochs, model)
        if hasattr(model, "follow_steps"):  # loss weights on a schedule (virt.weight_schedule) read the step
            model.follow_steps(optimizer.iterations, steps_per_epoch * epochs)
        train_step = self._make_train_step(model, optimizer)
        backup = _Backup(self, model, optimizer)
        state = backup.restore(steps_per_epoch)
        progress = _Progress(cfg, self.run_dir if self.chief else None, steps_per_epoch, epochs)
        selection = _Selection(metric or cfg.metric, patience_for(cfg, epochs), state, save_best if self.chief else None)
        save_every = max(1, min(steps_per_epoch, getattr(cfg, "save_every", 0) or 200))
        start = time.time()
        step = _value(optimizer.iterations)
        log.info("training: %d examples, global batch %d (%d x %d replicas), %d steps/epoch, %d epochs",
                 len(train), self.global_batch, cfg.batch_size, self.replicas, steps_per_epoch, epochs)
        with _StopFlag() as stop, _removed_after(backup.worker_dir):
            for epoch in range(state["epochs_done"], epochs):
                if selection.stopped:
                    break
                done = min(max(step - epoch * steps_per_epoch, 0), steps_per_epoch)
                progress.start_epoch(epoch, done)
                for x, y in self._batches(model, train, epoch, done, steps_per_epoch):
                    loss, terms = train_step(x, y)
                    step += 1
                    _check_finite(float(loss), step, epoch, backup.restore_dir)
                    progress.step(step, float(loss), terms, float(keras.ops.convert_to_numpy(optimizer.learning_rate)))
                    if stop.signum is not None:
                        backup.save(state)
                        raise TrainingInterrupted(f"stopped by signal {stop.signum} at step {step}; "
                                                  f"run the same command again to resume")
                    if step % save_every == 0:
                        backup.save(state)
                metrics = evaluate(model, valid) if valid is not None and evaluate is not None else None
                if metrics is not None:
                    progress.validated(valid.name, metrics, epoch, step)
                selection.end_epoch(model, epoch, step, metrics)
                state["epochs_done"] = epoch + 1
                backup.save(state)
                if selection.stopped:
                    log.info("early stopping: %s has not improved for %d epochs", selection.metric,
                             state["bad_epochs"])
                    break
        progress.close()
        best = next((h for h in state["history"] if h["epoch"] == state["best_epoch"]), None)
        return FitResult(state["best_epoch"], best, state["history"], step, time.time() - start,
                         steps_per_epoch * epochs)

    def _budget(self, train):
        """`(steps per epoch, epochs)` for the training split: whole global batches, `train.steps_per_epoch`
        at the most, and `epochs_for`'s number of epochs."""
        if len(train) < self.global_batch:
            cpus = self.cfg.cpu_replicas  # name the key that multiplied the batch (issue 27: 1000 CPU replicas)
            per = f" x {self.replicas} replicas" + (f" (train.cpu_replicas={cpus})" if cpus else "") if self.replicas > 1 else ""
            raise TrainingError(f"train has {len(train)} examples, fewer than one global batch "
                                f"({self.global_batch} = train.batch_size={self.cfg.batch_size}{per}); "
                                f"lower train.batch_size" + (" or train.cpu_replicas" if cpus else ""))
        steps_per_epoch = num_batches(len(train), self.global_batch, drop_remainder=True)
        if self.cfg.steps_per_epoch:
            steps_per_epoch = min(steps_per_epoch, self.cfg.steps_per_epoch)
        return steps_per_epoch, epochs_for(self.cfg, steps_per_epoch)

    def _batches(self, model, train, epoch, done, steps_per_epoch):
        """The rest of `epoch`'s batches after the `done` ones, distributed over the replicas."""
        ds = make_dataset(train.features, train.labels, self.global_batch, shuffle=True, seed=self.cfg.seed,
                          epoch=epoch, drop_remainder=True, skip_batches=done,
                          transform=getattr(model, "batch_transform", None))
        return self.strategy.experimental_distribute_dataset(ds.take(steps_per_epoch - done))


class _Backup:
    """The resume checkpoints (model, optimizer, dropout seeds) and the loop's state beside them.

    Every worker resumes from the chief's backup (a shared directory: the same --out on a shared
    filesystem); the others save their copies (TensorFlow wants every worker to save) to a temp dir.
    """

    def __init__(self, trainer, model, optimizer):
        self.chief, self.optimizer = trainer.chief, optimizer
        self.restore_dir = trainer.run_dir / "backup"
        self.worker_dir = None if self.chief else Path(tempfile.mkdtemp(prefix="backup-worker-"))
        # Dropout seed states are not tracked by Keras; listed here so a resumed run draws the same masks.
        seeds = [v for v in model.variables if "seed_generator" in v.path]
        self.ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, seeds=seeds)
        self.manager = tf.train.CheckpointManager(self.ckpt, str(self.worker_dir or self.restore_dir), max_to_keep=2)
        self.state_file = self.restore_dir / "state.json"

    def restore(self, steps_per_epoch):
        """The loop's state: restored with the latest checkpoint, or a fresh run's."""
        # epochs_done: epochs trained *and* validated; a stop between the two validates on resume.
        state = {"best": None, "best_epoch": None, "bad_epochs": 0, "history": [], "epochs_done": 0}
        latest = tf.train.latest_checkpoint(str(self.restore_dir))
        if latest:
            self.ckpt.restore(latest).assert_existing_objects_matched()
            if self.state_file.is_file():
                state = json.loads(self.state_file.read_text())
            log.info("resumed from %s at step %d", latest, _value(self.optimizer.iterations))
        state.setdefault("epochs_done", _value(self.optimizer.iterations) // steps_per_epoch)
        return state

    def save(self, state):
        self.manager.save(checkpoint_number=_value(self.optimizer.iterations))
        if self.chief:
            # never a half-written state next to a good checkpoint
            write_json(self.state_file, state, indent=None, ensure_ascii=True, default=None)


def _check_finite(loss, step, epoch, restore_dir):
    """Stop on a NaN/inf loss before it is saved: the last checkpoint stays a good resume point."""
    if not math.isfinite(loss):
        kept = (f"the last good checkpoint is kept in {restore_dir}" if tf.train.latest_checkpoint(str(restore_dir))
                else "no checkpoint had been written yet")
        raise TrainingError(f"loss became {loss} at step {step} (epoch {epoch + 1}); {kept}. "
                            "Try a lower train.learning_rate or train.clip_norm.")


class _Progress:
    """What the loop shows: a progress bar per epoch (the epoch's mean losses and the learning rate),
    TensorBoard scalars every 10 steps and after each validation (`run_dir` None: no TensorBoard)."""

    def __init__(self, cfg, run_dir, steps_per_epoch, epochs):
        self.cfg, self.steps_per_epoch, self.epochs = cfg, steps_per_epoch, epochs
        self.writer = tf.summary.create_file_writer(str(run_dir / "tensorboard")) if run_dir else None

    def start_epoch(self, epoch, done):
        if self.cfg.verbose:
            print(f"Epoch {epoch + 1}/{self.epochs}", flush=True)
        self.epoch_start = epoch * self.steps_per_epoch
        self.bar = keras.utils.Progbar(self.steps_per_epoch, verbose=self.cfg.verbose, stateful_metrics=["lr"])
        self.bar.update(done)
        self.means = _RunningMeans()

    def step(self, step, loss, terms, lr):
        values = [("loss", loss)] + [(k, float(v)) for k, v in terms.items()] if len(terms) > 1 \
            else [("loss", loss)]
        # Keras 3's Progbar prints the last value it was given: give it the epoch's mean so far.
        shown = self.means.add(values)
        self.bar.stateful_metrics.update(k for k, _ in shown)
        self.bar.update(step - self.epoch_start, values=shown + [("lr", lr)])
        if self.writer and step % 10 == 0:
            self._scalars("train", values + [("lr", lr)], step)

    def validated(self, name, metrics, epoch, step):
        log.info("epoch %d %s: %s", epoch + 1, name, _fmt(metrics))
        if self.writer:
            self._scalars(name, [(k, v) for k, v in metrics.items() if isinstance(v, (int, float))], step)

    def _scalars(self, prefix, values, step):
        with self.writer.as_default(step=step):
            for k, v in values:
                tf.summary.scalar(f"{prefix}/{k}", v)

    def close(self):
        if self.writer:
            self.writer.flush()


class _Selection:
    """Model selection and early stopping on the validation `metric`, kept in the loop's `state`."""

    def __init__(self, metric, patience, state, save_best):
        self.metric, self.patience, self.state, self.save_best = metric, patience, state, save_best

    @property
    def stopped(self):
        return self.state["bad_epochs"] >= self.patience > 0

    def end_epoch(self, model, epoch, step, metrics):
        """Record `metrics` (None: no validation, every epoch is kept) and keep the model if it is the best."""
        state = self.state
        if metrics is None:
            if self.save_best:
                state.update(best_epoch=epoch + 1)
                self.save_best(model, {})
            return
        value = metrics[self.metric]
        state["history"].append({"epoch": epoch + 1, "step": step,
                                 **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}})
        if better(self.metric, value, state["best"]):
            state.update(best=value, best_epoch=epoch + 1, bad_epochs=0)
            if self.save_best:
                self.save_best(model, metrics)
        else:
            state["bad_epochs"] += 1


class _RunningMeans:
    """Mean of each named value over the steps seen so far in an epoch."""

    def __init__(self):
        self.sums, self.count = {}, 0

    def add(self, values):
        self.count += 1
        for k, v in values:
            self.sums[k] = self.sums.get(k, 0.0) + v
        return [(k, self.sums[k] / self.count) for k, _ in values]


def _value(variable):
    """An integer variable's value; `int()` fails on MultiWorkerMirroredStrategy's MirroredVariable."""
    return int(keras.ops.convert_to_numpy(variable))


@contextlib.contextmanager
def _removed_after(path):
    try:
        yield
    finally:
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)


def _fmt(metrics):
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float))


def finish_backup(run_dir):
    """Remove the resume checkpoints once a run has written its final outputs."""
    shutil.rmtree(Path(run_dir) / "backup", ignore_errors=True)
