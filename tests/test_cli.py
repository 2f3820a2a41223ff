"""run_tasks.py: help, one-line errors and exit codes, the checks of input paths before TensorFlow
is imported, a start-up without TensorFlow's and transformers' noise, evaluate / predict on a trained
tiny model, the run's config.yaml. In-process (run_tasks.main) except where the exit code or the
absence of a traceback is the point; those subprocesses are started together with the module's first
test so that their start-up (importing TensorFlow) overlaps the in-process tests.
"""

import io
import json
import subprocess
import sys

import pytest

import run_tasks
from config import load_config
from runtime.logs import filtered_stderr
from tests.tiny_runs import PYTHON, RUN_TASKS, make_data, popen_cli, tiny_overrides

FINETUNE_YAML = run_tasks.ROOT / "config" / "finetune.yaml"


# ============================================================================ subprocess errors
def _error_cases(tmp):
    data = make_data(tmp / "data", n_train=32, n_valid=16)
    (tmp / "empty").mkdir()
    base = tiny_overrides(data, data["vocab"])
    return {
        "missing_file": ["--task", "finetune", "--out", tmp / "missing_run", "--set", *base,
                         f"data.train={tmp / 'no_such_train.csv'}"],
        "bad_key": ["--task", "finetune", "--out", tmp / "bad_key_run", "--set", "train.epoch=3"],
        "bad_checkpoint": ["--task", "finetune", "--out", tmp / "bad_ckpt_run", "--set", *base,
                           f"model.init={tmp / 'empty'}"],
        "bad_key_debug": ["--task", "finetune", "--out", tmp / "debug_run", "--debug", "--set", "train.epoch=3"],
    }


ERROR_TESTS = ("test_error_missing_data_file", "test_error_bad_config_key", "test_error_incompatible_checkpoint",
               "test_debug_shows_the_traceback")


@pytest.fixture(scope="module", autouse=True)
def error_runs(request, tmp_path_factory):
    """name -> (tmp dir, Popen), started at once if any error test is selected."""
    if not any(item.name in ERROR_TESTS for item in request.session.items):
        yield {}
        return
    tmp = tmp_path_factory.mktemp("errors")
    procs = {name: popen_cli(args, cwd=tmp) for name, args in _error_cases(tmp).items()}
    yield {name: (tmp, p) for name, p in procs.items()}
    for p in procs.values():
        if p.poll() is None:
            p.kill()
            p.wait()


def _result(error_runs, name):
    tmp, p = error_runs[name]
    try:
        out, err = p.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        p.kill()
        raise
    return tmp, p.returncode, out, err


def _one_error_line(err):
    """The run failed with exactly one `error: ...` line, the last one, and no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    return errors[0]


# ============================================================================ trained model
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny finetune run (in-process): (run dir, data files, the --set overrides)."""
    tmp = tmp_path_factory.mktemp("trained")
    data = make_data(tmp / "data", n_train=64, n_valid=16)
    sets = tiny_overrides(data, data["vocab"], "train.epochs=1", "train.steps_per_epoch=2", "train.seed=5")
    run = tmp / "run"
    assert run_tasks.main(["--task", "finetune", "--out", str(run), "--set", *sets]) == 0
    return run, data, sets


# ============================================================================ help / argparse
def test_help_lists_every_task_and_the_main_keys(capsys):
    with pytest.raises(SystemExit) as e:
        run_tasks.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for task, spec in run_tasks.TASKS.items():
        assert task in out and spec[3] in out
    for key in ("--task", "--config", "--set", "--out", "--debug", "model.init", "model.num_layers", "data.train",
                "data.valid", "data.test", "data.format", "train.epochs", "train.batch_size", "train.learning_rate",
                "train.max_seq_len", "train.seed", "train.strategy", "train.cpu_replicas"):
        assert key in out, key


def test_unknown_or_missing_task_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as e:
        run_tasks.main(["--task", "no-such-task"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'no-such-task'" in err and "usage:" in err
    with pytest.raises(SystemExit) as e:
        run_tasks.main([])
    assert e.value.code == 2 and "--task" in capsys.readouterr().err


# ============================================================================ evaluate / predict
def test_evaluate_prints_accuracy_and_confusion_matrix(trained, tmp_path, capsys):
    run, data, _ = trained
    capsys.readouterr()
    assert run_tasks.main(["--task", "evaluate", "--out", str(tmp_path / "eval"), "--set",
                           f"model.init={run / 'model'}", f"data.test={data['valid']}"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{data['valid']} (n=16): ") and " f1 " in out[0]
    assert out[1] == "confusion matrix (rows = true, columns = predicted):"
    assert out[2].split() == ["0", "1"]
    rows = [line.split() for line in out[3:5]]
    assert [r[0] for r in rows] == ["0", "1"]
    matrix = [[int(c) for c in r[1:]] for r in rows]
    assert sum(map(sum, matrix)) == 16
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["eval"]["confusion_matrix"]["matrix"] == matrix
    accuracy = (matrix[0][0] + matrix[1][1]) / 16
    assert saved["eval"]["accuracy"] == pytest.approx(accuracy)
    lo, hi = saved["eval"]["ci95"]["accuracy"]  # the bootstrap interval, printed next to the value
    assert lo <= accuracy <= hi and f"accuracy {accuracy:.4f} [{lo:.4f}, {hi:.4f}]" in out[0]


def _check_csv(text, n, texts=None):
    import csv

    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["text_a", "text_b", "label", "p_0", "p_1"]
    assert len(rows) == n + 1
    for row in rows[1:]:
        p0, p1 = float(row[3]), float(row[4])
        assert p0 + p1 == pytest.approx(1.0, abs=2e-6)
        assert row[2] == ("1" if p1 > p0 else "0")
    if texts:
        assert [tuple(r[:2]) for r in rows[1:]] == texts
    return rows


def test_predict_csv_from_a_file(trained, tmp_path):
    from data import read_pairs

    run, data, _ = trained
    out = tmp_path / "pred.csv"
    assert run_tasks.main(["--task", "predict", "--out", str(out), "--set", f"model.init={run / 'model'}",
                           f"data.test={data['valid']}"]) == 0
    pairs = read_pairs(data["valid"])
    _check_csv(out.read_text(), 16, list(zip(pairs.text_a, pairs.text_b)))


def test_predict_from_stdin_to_stdout_and_jsonl(trained, tmp_path, monkeypatch, capsys):
    run, _, _ = trained
    lines = "How do I reset my PIN?\tHow can I change my PIN code?\n\nwhere is my card\tis my card lost, comma\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    capsys.readouterr()
    assert run_tasks.main(["--task", "predict", "--set", f"model.init={run / 'model'}"]) == 0
    _check_csv(capsys.readouterr().out, 2, [("How do I reset my PIN?", "How can I change my PIN code?"),
                                            ("where is my card", "is my card lost, comma")])

    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    out = tmp_path / "pred.jsonl"
    assert run_tasks.main(["--task", "predict", "--out", str(out), "--set", f"model.init={run / 'model'}"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text_b"] for r in records] == ["How can I change my PIN code?", "is my card lost, comma"]
    for r in records:
        assert set(r) == {"text_a", "text_b", "label", "probs"} and set(r["probs"]) == {"0", "1"}
        assert sum(r["probs"].values()) == pytest.approx(1.0, abs=2e-6)
        assert r["label"] == max(r["probs"], key=r["probs"].get)


def test_predict_bad_stdin_line_is_a_one_line_error(trained, monkeypatch, capsys):
    run, _, _ = trained
    monkeypatch.setattr(sys, "stdin", io.StringIO("a\tb\nno tab here\n"))
    capsys.readouterr()
    assert run_tasks.main(["--task", "predict", "--set", f"model.init={run / 'model'}"]) == 1
    assert capsys.readouterr().err.strip() == "error: <stdin>:2: expected 'text_a<TAB>text_b'"


def test_run_dir_config_yaml_round_trips(trained):
    run, _, sets = trained
    saved = load_config(run / "config.yaml")
    expected = load_config(FINETUNE_YAML, sets + ["task=finetune", f"out={run}"])
    assert saved == expected
    assert saved.model.init is None and saved.train.steps_per_epoch == 2 and saved.out == str(run)


# ============================================================================ subprocess errors
def test_error_missing_data_file(error_runs):
    tmp, rc, _, err = _result(error_runs, "missing_file")
    assert rc == 1
    line = _one_error_line(err)
    assert str(tmp / "no_such_train.csv") in line and "not found" in line
    assert not (tmp / "missing_run").exists()  # found before the run directory (and its config.yaml) exists


def test_error_bad_config_key(error_runs):
    tmp, rc, _, err = _result(error_runs, "bad_key")
    assert rc == 1
    assert _one_error_line(err) == "error: unknown key 'train.epoch' (did you mean 'train.epochs'?)"
    assert not (tmp / "bad_key_run").exists()  # nothing written for a config error


def test_error_incompatible_checkpoint(error_runs):
    tmp, rc, _, err = _result(error_runs, "bad_checkpoint")
    assert rc == 1
    line = _one_error_line(err)
    assert f"error: {tmp / 'empty'}: not a checkpoint directory" in line


def test_debug_shows_the_traceback(error_runs):
    _, rc, _, err = _result(error_runs, "bad_key_debug")
    assert rc == 1
    assert "Traceback (most recent call last)" in err
    assert "ConfigError: unknown key 'train.epoch'" in err


# ============================================================================ input paths, before TensorFlow
@pytest.mark.parametrize("task, sets, message", [
    ("finetune", ["data.train={tmp}/nope.csv"], "{tmp}/nope.csv: file not found"),
    ("finetune", ["data.valid={tmp}/nope.csv"], "{tmp}/nope.csv: file not found"),
    ("finetune", ["model.init={tmp}/nope"], "{tmp}/nope: checkpoint directory not found"),
    ("sbert", ["model.init=null", "model.vocab={tmp}/vocab.txt"], "{tmp}/vocab.txt: vocabulary file not found"),
    ("distill", ["distill.teacher={tmp}"], "{tmp}: not a model directory (no model.json)"),
    ("virt", ["virt.baseline={tmp}/nope"], "{tmp}/nope: not a model directory (no model.json)"),
    ("pretrain", ["data.text=[{tmp}/nope.txt]"], "{tmp}/nope.txt: not found"),
    ("evaluate", ["model.init={tmp}/nope"], "{tmp}/nope: not a model directory (no model.json)"),
    ("predict", ["model.init={tmp}/nope"], "{tmp}/nope: no such directory"),
    ("embed", ["model.init={tmp}", "data.test={tmp}/texts.txt"], "{tmp}: not a model directory (no model.json)"),
    ("export", ["export.model={tmp}/nope"], "{tmp}/nope: no such model directory"),
    ("serve", ["serve.model={tmp}/nope"], "{tmp}/nope: no such directory"),
    ("index", ["index.model={tmp}", "index.corpus={tmp}/nope.txt"], "{tmp}/nope.txt: file not found"),
    ("search", ["search.index={tmp}"],
     "{tmp}: not an index directory (no index.json; build one with --task index)"),
])
def test_a_missing_input_is_reported_before_anything_is_written(tmp_path, capsys, task, sets, message):
    out = tmp_path / "out"
    code = run_tasks.main(["--task", task, "--out", str(out), "--set", *(s.format(tmp=tmp_path) for s in sets)])
    assert code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: " + message.format(tmp=tmp_path)
    assert not out.exists()


def test_values_that_are_not_paths_pass_the_input_check(tmp_path):
    from training.rundir import check_inputs

    for task, sets in (("distill", ["distill.baseline=auto", "model.init=minilm"]),
                       ("finetune", ["model.init=owner/model-on-the-hub"]),
                       ("predict", ["model.init=" + str(tmp_path)]),  # data.test unset: stdin
                       ("search", ["search.rerank=virt"])):
        check_inputs(run_tasks.task_inputs(load_config(FINETUNE_YAML, sets + [f"task={task}"])))


def test_a_missing_data_file_fails_without_importing_tensorflow(tmp_path):
    """The whole run before the error is config + preflight: no TensorFlow start-up, nothing written."""
    code = ("import sys, run_tasks; rc = run_tasks.main(['--task', 'finetune', '--set', 'data.train=nope.csv']); "
            "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'; sys.exit(rc)")
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([str(PYTHON), "-c", code], cwd=tmp_path, env={**env, "PYTHONPATH": str(run_tasks.ROOT)},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr[-3000:]
    assert _one_error_line(r.stderr) == "error: nope.csv: file not found"
    assert list(tmp_path.iterdir()) == []  # no runs/ directory, no config.yaml


# ============================================================================ start-up noise
NOISE = ("cuInit", "cudart_stub", "Could not find cuda drivers", "absl::InitializeLog", "PyTorch was not found")


def test_filtered_stderr_drops_the_start_up_lines_only(capfd):
    import os

    with filtered_stderr():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
                    b"I0000 00:00:1.0 1 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not "
                    b"be used.\n"
                    b"E0000 00:00:1.0 1 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n"
                    b"W0000 00:00:1.0 1 some_op.cc:1] a real warning\n")
        print("a Python warning", file=sys.stderr)
    lines = capfd.readouterr().err.splitlines()  # (capfd takes sys.stderr apart from fd 2: order not kept)
    assert sorted(lines) == ["W0000 00:00:1.0 1 some_op.cc:1] a real warning", "a Python warning"]
    with filtered_stderr():  # a cuInit failure where a driver was found is a real error
        os.write(2, b"E0000 00:00:1.0 1 cuda_platform.cc:52] failed call to cuInit: CUDA_ERROR_NO_DEVICE\n")
    assert "cuInit" in capfd.readouterr().err


def test_a_command_prints_no_start_up_noise(trained, tmp_path):
    """predict in a fresh process (TensorFlow, transformers' tokenizer, a model run), started as a user's
    shell would: none of TensorFlow's CUDA lines nor transformers' PyTorch notice."""
    run, data, _ = trained
    env = {k: v for k, v in __import__("os").environ.items()
           if k not in ("PYTHONPATH", "TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES")
           and not k.startswith("TRANSFORMERS_")}
    r = subprocess.run([str(PYTHON), str(RUN_TASKS), "--task", "predict", "--out", str(tmp_path / "p.csv"), "--set",
                        f"model.init={run / 'model'}", f"data.test={data['valid']}"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "p.csv").is_file()
    assert [line for line in r.stderr.splitlines() if any(n in line for n in NOISE)] == [], r.stderr[-3000:]
