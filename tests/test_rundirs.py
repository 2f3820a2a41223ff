"""Issue 27: run directories, the run lock, config files and what a loader says about a file it cannot use.

Outputs never land on a run's files, inside a model / export / index directory or on the task's own
inputs; one `--out` directory takes one run at a time (a lock file); a model.json, vocab.txt or export
directory that cannot be used is refused naming the file and the key. In-process and cheap: the tiny
model directory of test_reliability.py's `work` fixture, no training.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from types import SimpleNamespace

import pytest

import run_tasks
from tests.test_cli import _one_error_line
from training.rundir import RunError, run_lock
from tests.test_reliability import _damaged, _edit_meta, _main, work  # noqa: F401  (work: sample data, a tiny model directory)


# ============================================================================ files a loader cannot use
@pytest.mark.parametrize("labels,got", [(None, "null"), (["0"], '["0"]'), ("01", '"01"'), ([0, 1], "[0, 1]")])
def test_model_json_labels_that_do_not_name_the_classes_are_refused_naming_file_and_key(work, capsys, labels, got):
    from modeling.model_dir import CheckpointError, read_meta

    d = _damaged(work, f"labels-{got}", lambda d: _edit_meta(d, labels=labels))
    message = f'{d / "model.json"}: "labels" must be a list of its 2 class names (strings), in order, got {got}'
    with pytest.raises(CheckpointError) as e:
        read_meta(d)
    assert str(e.value) == message
    rc, _, err = _main(capsys, "--task", "predict", "--set", f"model.init={d}", f"data.test={work['data']['valid']}")
    assert rc == 1 and _one_error_line(err) == f"error: {message}"  # was: 'NoneType' object is not iterable


def test_a_binary_vocab_txt_is_refused_naming_it(tmp_path):
    from modeling.tokenization import PairTokenizer, TokenizerError

    vocab = tmp_path / "vocab.txt"
    vocab.write_bytes(b"[PAD]\n[UNK]\n\xff\xfe\x00binary")
    with pytest.raises(TokenizerError) as e:
        PairTokenizer(vocab)
    assert str(e.value) == (f"{vocab}: not a UTF-8 vocabulary file (byte 0xff at offset 12); "
                            "vocab.txt holds one token per line")


def _export_copy(d):
    """What an export directory keeps of its model directory: model.json and vocab.txt, no weights."""
    (d / "model.weights.h5").unlink()
    (d / "saved_model").mkdir()
    (d / "parity.json").write_text(json.dumps({"ok": True, "model": "runs/mine/model", "kind": "cross_encoder"}))


@pytest.mark.parametrize("task,key", [("export", "export.model"), ("distill", "distill.teacher"),
                                      ("virt", "virt.teacher")])
def test_an_export_directory_given_as_a_model_directory_says_what_it_is_and_where_the_model_is(
        work, capsys, tmp_path, task, key):
    d = _damaged(work, "export", _export_copy)
    sets = [f"{key}={d}", f"data.train={work['data']['train']}", f"data.valid={work['data']['valid']}",
            f"model.vocab={work['data']['vocab']}", "model.init=null", "train.max_seq_len=16"]
    rc, _, err = _main(capsys, "--task", task, "--out", tmp_path / "out", "--set", *sets)
    assert rc == 1
    assert _one_error_line(err) == (f"error: {d} is an export directory (parity.json, saved_model/), not a model "
                                    f"directory: give the model directory it was exported from "
                                    f"({d / 'parity.json'} names it: runs/mine/model)")


def test_too_few_examples_for_the_global_batch_names_the_cpu_replicas():
    from training.trainer import Trainer, TrainingError

    trainer = Trainer.__new__(Trainer)
    trainer.cfg, trainer.replicas = SimpleNamespace(batch_size=16, cpu_replicas=1000), 1000
    with pytest.raises(TrainingError) as e:
        trainer._budget(range(64))
    assert str(e.value) == ("train has 64 examples, fewer than one global batch (16000 = train.batch_size=16 x 1000 "
                            "replicas (train.cpu_replicas=1000)); lower train.batch_size or train.cpu_replicas")


# ============================================================================ where an output may go
def _run_dir(work):
    """A finished training run around a copy of the tiny model directory (no TensorFlow needed to judge it)."""
    from config import load_config, save_config

    run = work["root"] / "rundirs" / "run"
    if not run.exists():
        shutil.copytree(work["model"], run / "model")
        save_config(load_config(None, ["task=finetune"]), run / "config.yaml")
        (run / "metrics.json").write_text('{"valid": {"accuracy": 0.9}}')
    return run


@pytest.mark.parametrize("case", ["predict over a run's metrics.json", "predict into the model directory",
                                  "predict over its data.test", "evaluate inside the model directory",
                                  "export into a directory holding export.model"])
def test_no_output_lands_on_a_run_a_model_directory_or_the_tasks_own_inputs(work, capsys, tmp_path, case):
    run = _run_dir(work)
    test = tmp_path / "test.csv"
    shutil.copyfile(work["data"]["valid"], test)
    model = run / "model"
    task, out, sets, message = {
        "predict over a run's metrics.json": (
            "predict", run / "metrics.json", [f"model.init={model}", f"data.test={test}"],
            f"{run / 'metrics.json'} belongs to a training run ({run / 'config.yaml'}): --task predict would "
            "overwrite it; choose another --out"),
        "predict into the model directory": (
            "predict", model / "model.json", [f"model.init={model}", f"data.test={test}"],
            f"{model / 'model.json'} is inside a model directory ({model}, model.json), which is written and "
            "replaced as a whole: choose an --out outside it"),
        "predict over its data.test": (
            "predict", test, [f"model.init={model}", f"data.test={test}"],
            f"--out {test} is data.test ({test}), an input of --task predict: writing there would destroy it; "
            "choose another --out"),
        "evaluate inside the model directory": (
            "evaluate", model / "eval", [f"model.init={work['model']}", f"data.test={test}"],
            f"{model / 'eval'} is inside a model directory ({model}, model.json), which is written and replaced "
            "as a whole: choose an --out outside it"),
        "export into a directory holding export.model": (
            "export", work["root"] / "rundirs", [f"export.model={model}"],
            f"--out {work['root'] / 'rundirs'} holds export.model ({model}), an input of --task export: writing "
            "there would destroy it; choose another --out"),
    }[case]
    kept = {p: p.read_bytes() for p in [*run.rglob("*"), test] if p.is_file()}
    rc, _, err = _main(capsys, "--task", task, "--out", out, "--set", *sets)
    assert rc == 1 and _one_error_line(err) == f"error: {message}"
    assert {p: p.read_bytes() for p in [*run.rglob("*"), test] if p.is_file()} == kept
    assert not (model / "eval").exists()


# ============================================================================ one run per directory
def _cfg(task="finetune", out=None, *sets):
    from config import load_config

    return load_config(None, [f"task={task}", f"out={out}", *sets])


def _lock(out, **held):
    import socket

    out.mkdir(parents=True, exist_ok=True)
    record = {"pid": os.getppid(), "host": socket.gethostname(), "started": "2027-01-01T10:00:00",
              "command": "python run_tasks.py --task finetune --set train.learning_rate=1e-3", **held}
    (out / "run.lock").write_text(json.dumps(record))
    return record


def test_a_second_run_in_a_directory_in_use_is_refused_naming_the_first(work, capsys, tmp_path):
    out = tmp_path / "run"
    held = _lock(out)  # the first run: a live process (pytest's parent) on this host
    (out / "config.yaml").write_text("train: {learning_rate: 0.001}\n")
    sets = [f"data.train={work['data']['train']}", f"data.valid={work['data']['valid']}"]
    rc, _, err = _main(capsys, "--task", "finetune", "--out", out, "--set", *sets)
    assert rc == 1
    assert _one_error_line(err) == (
        f"error: {out} is in use by another run (pid {held['pid']} on {held['host']}, started 2027-01-01T10:00:00: "
        f"{held['command']}); wait for it to end or choose another --out (lock file {out / 'run.lock'})")
    assert json.loads((out / "run.lock").read_text()) == held and sorted(p.name for p in out.iterdir()) == [
        "config.yaml", "run.lock"]

    other = _lock(out, host="gpu7", pid=1234)
    with pytest.raises(RunError) as e, run_lock(_cfg("finetune", out), "second"):
        pass
    assert str(e.value) == (f"{out} is in use by a run on another host (pid 1234 on gpu7, started 2027-01-01T10:00:00: "
                            f"{other['command']}); if that run has ended, delete {out / 'run.lock'} and start again")


def test_the_lock_is_released_however_the_run_ends_and_a_dead_runs_lock_is_taken_over(tmp_path, caplog):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "run"
    _lock(out, pid=dead.pid)
    with run_lock(_cfg("finetune", out), "python run_tasks.py --task finetune"):
        held = json.loads((out / "run.lock").read_text())
        assert (held["pid"], held["command"]) == (os.getpid(), "python run_tasks.py --task finetune")
        with run_lock(_cfg("finetune", out), "nested"):  # re-entrant in one process: kept until the outer ends
            pass
        assert (out / "run.lock").exists()
    assert "taking over the lock of a run that is no longer running" in caplog.text
    assert not (out / "run.lock").exists() and out.is_dir()  # the directory existed: kept

    fresh = tmp_path / "a" / "b"
    for stop in (KeyboardInterrupt, ValueError):
        with pytest.raises(stop), run_lock(_cfg("finetune", fresh), "x"):
            assert (fresh / "run.lock").exists()
            raise stop()
        assert not (tmp_path / "a").exists()  # created for the lock alone: removed again
    with pytest.raises(SystemExit) as e, run_lock(_cfg("finetune", fresh), "x"), run_tasks.terminate_as_exit():
        os.kill(os.getpid(), signal.SIGTERM)
    assert e.value.code == 143 and not (tmp_path / "a").exists()


def test_only_the_chief_of_a_multi_worker_run_takes_the_lock(tmp_path, monkeypatch):
    out = tmp_path / "run"
    held = _lock(out)
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:1"]},
                                                "task": {"type": "worker", "index": 1}}))
    with run_lock(_cfg("finetune", out, "train.strategy=multiworker"), "worker 1"):
        pass  # not refused by the chief's lock, and takes none
    assert json.loads((out / "run.lock").read_text()) == held


def test_a_refused_run_leaves_no_directory_behind(work, capsys, tmp_path):
    out = tmp_path / "new" / "run"
    rc, _, err = _main(capsys, "--task", "finetune", "--out", out, "--set", f"data.train={tmp_path / 'nope.csv'}")
    assert rc == 1 and _one_error_line(err) == f"error: {tmp_path / 'nope.csv'}: file not found"
    assert list(tmp_path.iterdir()) == []
