"""Multi-worker training: two `run_tasks.py --task finetune` worker processes on 127.0.0.1 with
TF_CONFIG and `train.strategy=multiworker` (MultiWorkerMirroredStrategy on CPU).

Two clusters start together with the module (their TensorFlow start-up overlaps):

- `clean`: each worker in its own working directory with the same relative `--out run`, i.e. two
  hosts without a shared filesystem. Only the chief may write the run directory.
- `crash`: both workers share one absolute `--out` (a shared filesystem, where the resume
  checkpoints live). Worker 1 is SIGKILLed once the chief saved a checkpoint mid-training; a
  dead peer blocks the chief in its next collective (TensorFlow's health checks are off), so the
  chief is killed too, as a job manager would. Both are then restarted with the same command.

The reference is an uninterrupted single-process run in the test process with the same global
batch (16 = 8 per worker x 2 workers), data order and seed: every worker must end with its
weights (summed per-worker gradients = the global-batch gradient), and the workers with each
other's exactly. `tests/multiworker_worker.py` saves each worker's final weights, since only the
chief writes a model directory. Every wait is time-boxed: a hang fails the test.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import run_tasks
from tests.multiworker_worker import recording
from tests.tiny_runs import PYTHON, cli_env, make_data, tiny_overrides
from tests.test_training import _ckpt_step  # the `checkpoint` state file's latest step

WORKER = Path(__file__).with_name("multiworker_worker.py")
STEPS_PER_EPOCH, EPOCHS = 4, 2  # 64 pairs / global batch 16
PLANNED = STEPS_PER_EPOCH * EPOCHS
TIMEOUT = 240  # per phase; a hang fails instead of blocking CI
SETS = ("model.num_layers=2", "model.dropout=0", "train.learning_rate=1e-3", f"train.epochs={EPOCHS}",
        "train.save_every=2", "train.seed=11", "train.patience=0")


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Cluster:
    """Two workers of one run; `start()` picks fresh ports (a restart must not reuse them)."""

    def __init__(self, root, name, data, out_of):
        self.root, self.name, self.data, self.out_of = Path(root), name, data, out_of
        self.procs, self.launches = [], 0

    def cwd(self, i):
        d = self.root / f"{self.name}-cwd{i}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def dump(self, i):
        return self.root / f"{self.name}-{self.launches}-worker{i}.npz"

    def start(self):
        self.launches += 1
        hosts = [f"127.0.0.1:{p}" for p in _free_ports(2)]
        sets = tiny_overrides(self.data, self.data["vocab"], *SETS, "train.batch_size=8",
                              "train.strategy=multiworker")
        self.procs = []
        for i in range(2):
            tf_config = {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}}
            env = dict(cli_env(), TF_CONFIG=json.dumps(tf_config), MW_DUMP=str(self.dump(i)))
            cmd = [str(PYTHON), str(WORKER), "--task", "finetune", "--out", str(self.out_of(i)), "--set", *sets]
            self.procs.append(subprocess.Popen(cmd, cwd=self.cwd(i), env=env, stdin=subprocess.DEVNULL,
                                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        return self.procs

    def finish(self, deadline):
        """(returncode, stdout, stderr) per worker; kills everything past the deadline."""
        out = []
        for p in self.procs:
            try:
                o, e = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill()
                o, e = p.communicate()
                e += "\n[test] TIMEOUT: killed"
            out.append((p.returncode, o, e))
        return out

    def kill(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()


class Runs(threading.Thread):
    """Drives both clusters in the background while the test trains the reference in-process."""

    def __init__(self, root):
        super().__init__(daemon=True)
        self.root = Path(root)
        self.data = make_data(self.root / "data", n_train=64, n_valid=16)
        self.shared = self.root / "shared-run"
        self.clean = Cluster(self.root, "clean", self.data, lambda i: "run")
        self.crash = Cluster(self.root, "crash", self.data, lambda i: self.shared)
        self.out, self.error = {}, None

    def run(self):
        try:
            deadline = time.monotonic() + TIMEOUT
            self.clean.start()
            first = self.crash.start()
            killed_after = None
            while time.monotonic() < deadline and all(p.poll() is None for p in first):
                step = _ckpt_step(self.shared / "backup")
                if step is not None and step >= 2:
                    killed_after = step
                    first[1].send_signal(signal.SIGKILL)
                    first[1].wait(timeout=30)
                    first[0].send_signal(signal.SIGKILL)  # blocked in a collective with a dead peer
                    break
                time.sleep(0.02)
            self.out["killed_after"] = killed_after
            self.out["crashed"] = self.crash.finish(deadline)
            self.out["after_crash"] = (_ckpt_step(self.shared / "backup"), (self.shared / "metrics.json").exists())
            self.out["clean"] = self.clean.finish(deadline)
            self.crash.start()
            self.out["resumed"] = self.crash.finish(time.monotonic() + TIMEOUT)
        except BaseException as e:  # reported by the test
            self.error = e
        finally:
            self.clean.kill()
            self.crash.kill()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    r = Runs(tmp_path_factory.mktemp("multiworker"))
    r.start()
    yield r
    r.clean.kill()
    r.crash.kill()
    r.join(timeout=30)


@pytest.fixture(scope="module")
def reference(runs, tmp_path_factory):
    """Final weights of the same run in one process, one replica, global batch 16 (no TF_CONFIG)."""
    from training import trainer

    fitted = []
    mp = pytest.MonkeyPatch()
    mp.setattr(trainer.Trainer, "fit", recording(trainer.Trainer.fit, fitted))
    try:
        out = tmp_path_factory.mktemp("reference") / "run"
        sets = tiny_overrides(runs.data, runs.data["vocab"], *SETS, "train.batch_size=16")
        assert run_tasks.main(["--task", "finetune", "--out", str(out), "--set", *sets]) == 0
    finally:
        mp.undo()
    metrics = json.loads((out / "metrics.json").read_text())
    return [np.asarray(w) for w in fitted[-1].get_weights()], metrics


def _results(runs):
    runs.join(timeout=2 * TIMEOUT + 60)
    assert not runs.is_alive(), "worker processes still running"
    if runs.error:
        raise runs.error
    return runs.out


def _ok(result):
    rc, _, err = result
    assert rc == 0 and "Traceback" not in err, err[-3000:]


def _weights(path):
    with np.load(path) as z:
        return [z[f"arr_{i}"] for i in range(len(z.files))]


def _maxdiff(a, b):
    assert len(a) == len(b)
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


def test_workers_end_with_identical_weights_and_only_the_chief_writes(runs, reference):
    out = _results(runs)
    for r in out["clean"]:
        _ok(r)
    ref_weights, ref_metrics = reference
    w0, w1 = (_weights(runs.clean.dump(i)) for i in range(2))
    assert _maxdiff(w0, w1) == 0.0  # synchronous training: bit-identical replicas
    assert _maxdiff(w0, ref_weights) < 1e-5  # = one process with the global batch (lr 1e-3: weights move ~1e-2)

    chief, other = runs.clean.cwd(0) / "run", runs.clean.cwd(1)
    assert sorted(p.name for p in chief.iterdir()) == [".cache", "config.yaml", "inputs.json", "metrics.json", "model",
                                                      "predictions", "tensorboard"]
    assert sorted(p.name for p in (chief / "model").iterdir()) == ["README.md", "model.json", "model.weights.h5",
                                                                   "vocab.txt"]
    assert list(other.iterdir()) == []  # no run directory, no token cache, nothing
    assert "not the chief worker" in out["clean"][1][1]

    m = json.loads((chief / "metrics.json").read_text())
    assert m["training"]["replicas"] == 2 and m["training"]["global_batch"] == 16
    assert m["training"]["steps"] == ref_metrics["training"]["steps"] == PLANNED
    for key in ("accuracy", "f1", "auc"):
        assert m["valid"][key] == pytest.approx(ref_metrics["valid"][key], abs=1e-6), key


def test_a_crashed_run_restarts_and_resumes_to_the_planned_steps(runs, reference):
    out = _results(runs)
    killed_after = out["killed_after"]
    assert killed_after is not None, "the crash run ended before its first checkpoint"
    assert [rc for rc, _, _ in out["crashed"]] == [-signal.SIGKILL] * 2
    saved, finished = out["after_crash"]
    assert 2 <= saved < PLANNED and not finished  # killed mid-training, after a checkpoint

    for r in out["resumed"]:
        _ok(r)
    for _, _, err in out["resumed"]:  # both workers restore the chief's checkpoint
        assert re.search(rf"resumed from \S+shared-run/backup/ckpt-{saved} at step {saved}\b", err), err[-3000:]
    m = json.loads((runs.shared / "metrics.json").read_text())
    assert m["training"]["steps"] == PLANNED and len(m["training"]["history"]) == EPOCHS
    assert not (runs.shared / "backup").exists()

    ref_weights, ref_metrics = reference
    w0, w1 = (_weights(runs.crash.dump(i)) for i in range(2))
    assert _maxdiff(w0, w1) == 0.0
    assert _maxdiff(w0, ref_weights) < 1e-5  # as if never interrupted
    for key in ("accuracy", "f1", "auc"):
        assert m["valid"][key] == pytest.approx(ref_metrics["valid"][key], abs=1e-6), key
