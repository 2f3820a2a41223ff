"""Issue 17: bad values, label noise, foreign output directories and resumes that would mix runs
each stop with one line naming the key, file:line or directory -- before anything is written.

Cheap cases run in-process through `run_tasks.main`; the tiny finetune runs follow tests/tiny_runs.py.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys

import pytest

import run_tasks
from config import ConfigError, load_config
from tests.test_cli import _one_error_line
from tests.test_reliability import _damaged, _main, work  # noqa: F401  (work: sample data, a tiny model directory)
from tests.tiny_runs import tiny_overrides, write_csv


# ============================================================================ 4. ranges in the typed config
@pytest.mark.parametrize("override,message", [
    ("train.epochs=0", "train.epochs: must be >= 1 (or null), got 0"),
    ("train.epochs=-1", "train.epochs: must be >= 1 (or null), got -1"),
    ("train.batch_size=0", "train.batch_size: must be >= 1, got 0"),
    ("model.dropout=1.5", "model.dropout: must be >= 0 and < 1, got 1.5"),
    ("data.max_rows=-5", "data.max_rows: must be >= 1 (or null), got -5"),
    ("train.learning_rate=-1", "train.learning_rate: must be > 0, got -1.0"),
    ("train.max_seq_len=2", "train.max_seq_len: must be >= 5, got 2"),
    ("serve.port=99999", "serve.port: must be >= 1 and <= 65535, got 99999"),
    ("train.learning_rate=.nan", "train.learning_rate: expected a finite number, got nan"),
    ("distill.label_weight=1.5", "distill.label_weight: must be >= 0 and <= 1, got 1.5"),
    ("distill.temperature=0", "distill.temperature: must be > 0, got 0.0"),
    ("distill.intermediate_weight=-1", "distill.intermediate_weight: must be >= 0, got -1.0"),
    ("virt.interaction_weight=-0.5", "virt.interaction_weight: must be >= 0 (or null), got -0.5"),
    ("export.opset=13", "export.opset: must be >= 15, got 13"),
    ("export.max_seq_len=4", "export.max_seq_len: must be >= 5 (or null), got 4"),
    ("export.parity_samples=0", "export.parity_samples: must be >= 1, got 0"),
    ("export.parity_batch_size=0", "export.parity_batch_size: must be >= 1, got 0"),
    ("export.int8_min_agreement=1.5", "export.int8_min_agreement: must be >= 0 and <= 1, got 1.5"),
    ("export.int8_min_margin=-0.1", "export.int8_min_margin: must be >= 0 and <= 1, got -0.1"),
    ("export.int8_max_accuracy_drop=-1", "export.int8_max_accuracy_drop: must be >= 0, got -1.0"),
    ("index.batch_size=0", "index.batch_size: must be >= 1, got 0"),
    ("search.k=0", "search.k: must be >= 1, got 0"),
    ("pretrain.mask_rate=1", "pretrain.mask_rate: must be > 0 and < 1, got 1.0"),
    ("serve.max_wait_ms=-1", "serve.max_wait_ms: must be >= 0, got -1.0"),  # serve/task.py trusts these
    ("serve.max_k=0", "serve.max_k: must be >= 1, got 0"),
])
def test_out_of_range_value_names_the_key_and_the_range(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert str(e.value) == message


def test_every_default_and_task_yaml_is_in_range():
    for path in (run_tasks.ROOT / "config").glob("*.yaml"):
        load_config(path)
    load_config(None, ["data.max_rows=null", "train.clip_norm=null", "train.patience=0", "model.dropout=0"])
    load_config(None, ["distill.label_weight=0", "distill.label_weight=1", "virt.interaction_weight=0",
                       "export.max_seq_len=null", "export.int8_min_agreement=0", "export.int8_min_margin=0",
                       "export.int8_max_accuracy_drop=0"])


# ============================================================================ 4b. renamed keys (issue 19)
@pytest.fixture
def deprecations(monkeypatch, caplog):
    """The deprecation lines logged by load_config (each is logged once per process: start afresh)."""
    import config.schema

    monkeypatch.setattr(config.schema, "_WARNED", set())
    caplog.set_level(logging.WARNING, logger="config.schema")
    return lambda: [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]


@pytest.mark.parametrize("old,new,value", [("distill.alpha", "distill.label_weight", 0.3),
                                           ("virt.alpha", "virt.interaction_weight", 2.0)])
def test_old_key_is_read_as_the_new_one_with_one_deprecation_line(deprecations, tmp_path, old, new, value):
    section, key = old.split(".")
    f = tmp_path / "old.yaml"
    f.write_text(f"{section}:\n  {key}: {value}\n")
    line = f"{old} is deprecated: use {new} (same meaning)"
    for _ in range(2):  # a run reads its config more than once (preflight, then the task): one line
        assert getattr(load_config(f), section) == getattr(load_config(None, [f"{new}={value}"]), section)
    assert deprecations() == [f"{f}: {line}"]
    cfg = load_config(f, [f"{old}=0.5", f"{old}=0.5"])  # the override wins over the file, as any key
    assert getattr(cfg.distill if section == "distill" else cfg.virt, new.split(".")[1]) == 0.5
    assert deprecations() == [f"{f}: {line}", line]
    with pytest.raises(ConfigError, match=f"^{new}: must be >= 0"):  # a bad value names the key it is now
        load_config(None, [f"{old}=-1"])


def test_old_and_new_key_together_must_agree(deprecations, tmp_path):
    message = ("distill.alpha=0.3 and distill.label_weight=0.4 disagree; distill.alpha is the old name of "
               "distill.label_weight: give only distill.label_weight")
    with pytest.raises(ConfigError) as e:
        load_config(None, ["distill.alpha=0.3", "distill.label_weight=0.4"])
    assert str(e.value) == message
    f = tmp_path / "both.yaml"
    f.write_text("distill:\n  alpha: 0.3\n  label_weight: 0.4\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert str(e.value) == f"{f}: {message}"
    f.write_text("distill:\n  alpha: 0.3\n  label_weight: 0.3\n")  # the same value twice: no conflict
    assert load_config(f).distill.label_weight == 0.3
    # sources still layer: config/distill.yaml has the new key, an old-key override replaces it
    assert load_config(run_tasks.ROOT / "config" / "distill.yaml", ["distill.alpha=0.2"]).distill.label_weight == 0.2


def test_old_run_config_with_alpha_still_resumes_and_compares(deprecations, tmp_path):
    """A run directory written before the rename (config.yaml says `alpha`) resumes with the same settings
    and names the new key when they differ -- read without TensorFlow, as preflight reads it."""
    from config import save_config
    from training.rundir import RunError, check_resume, fingerprints

    cfg = load_config(run_tasks.ROOT / "config" / "virt.yaml", ["distill.label_weight=0.3", "virt.interaction_weight=10",
                                                                 f"out={tmp_path / 'run'}"])
    run = tmp_path / "run"
    save_config(cfg, run / "config.yaml")
    text = (run / "config.yaml").read_text()
    old = text.replace("  label_weight: 0.3\n", "  alpha: 0.3\n").replace("  interaction_weight: 10.0\n",
                                                                           "  alpha: 10.0\n")
    assert old.count("  alpha: ") == 2
    (run / "config.yaml").write_text(old)
    (run / "inputs.json").write_text(json.dumps(fingerprints(cfg)))
    (run / "backup").mkdir()
    (run / "backup" / "checkpoint").write_text("")
    assert check_resume(cfg, run) is True
    assert check_resume(cfg, run) is True  # preflight, then the task: one line per old key
    assert deprecations() == [f"{run / 'config.yaml'}: {k} is deprecated: use {n} (same meaning)"
                              for k, n in [("distill.alpha", "distill.label_weight"),
                                           ("virt.alpha", "virt.interaction_weight")]]
    other = load_config(run_tasks.ROOT / "config" / "virt.yaml", ["virt.interaction_weight=1", f"out={run}",
                                                                   "distill.label_weight=0.3"])
    with pytest.raises(RunError, match=r"other settings \(virt\.interaction_weight: 10\.0 -> 1\.0\)"):
        check_resume(other, run)


def test_export_opset_range_is_what_tf2onnx_is_given():
    import dataclasses

    from config.schema import ExportConfig
    from export.onnx import MIN_OPSET

    assert {f.name: f for f in dataclasses.fields(ExportConfig)}["opset"].metadata["range"].ge == MIN_OPSET


@pytest.mark.parametrize("task,override", [("finetune", "train.epochs=0"), ("finetune", "train.batch_size=0"),
                                           ("serve", "serve.port=99999")])
def test_cli_bad_value_is_one_line_before_anything_is_written(capsys, tmp_path, task, override):
    out = tmp_path / "run"
    rc, _, err = _main(capsys, "--task", task, "--out", out, "--set", override)
    assert rc == 1 and _one_error_line(err).startswith(f"error: {override.split('=')[0]}: must be ")
    assert not out.exists()


@pytest.mark.parametrize("sets,message", [
    (["train.max_seq_len=600"], "train.max_seq_len=600: longer than model.max_position=512"),
    (["model.hidden_size=30"], "model.hidden_size=30: must be a multiple of model.num_heads=4"),
])
def test_random_init_architecture_is_checked_when_the_config_is_resolved(sets, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["task=finetune", "model.init=null", *sets])
    load_config(None, ["task=serve", "model.init=null", *sets])  # keys a serve run does not use


# ============================================================================ 3. model directories that do not fit
def _edit_meta(d, **changes):
    meta = json.loads((d / "model.json").read_text())
    for key, value in changes.items():
        section, _, sub = key.partition(".")
        if sub and value is None:
            meta[section].pop(sub, None)
        elif sub:
            meta[section][sub] = value
        else:
            meta[key] = value
    (d / "model.json").write_text(json.dumps(meta))


def _short_vocab(d):
    lines = (d / "vocab.txt").read_text().splitlines()
    (d / "vocab.txt").write_text("\n".join(lines[:20]) + "\n")


@pytest.mark.parametrize("recorded", [True, False], ids=["vocab_size in model.json", "older model.json"])
@pytest.mark.parametrize("task", ["predict", "export"])
def test_vocab_shorter_than_the_embedding_table_is_refused_at_load(work, capsys, tmp_path, task, recorded):
    d = _damaged(work, f"short-vocab-{recorded}", lambda d: (
        _short_vocab(d), None if recorded else _edit_meta(d, **{"tokenizer.vocab_size": None})))
    key = "model.init" if task == "predict" else "export.model"
    out = tmp_path / ("scores.csv" if task == "predict" else "export")
    rc, _, err = _main(capsys, "--task", task, "--out", out, "--set", f"{key}={d}", f"data.test={work['data']['valid']}")
    assert rc == 1
    n = work["vocab_size"]
    was = f" and was saved with a {n}-token vocab.txt" if recorded else ""
    assert _one_error_line(err) == (f"error: {d / 'vocab.txt'}: 20 tokens, but the model has {n} token embeddings"
                                    f"{was}; this vocab.txt does not belong to the model")
    assert not out.exists() or not any(out.iterdir())


def test_model_dir_records_its_vocab_size(work):
    assert json.loads((work["model"] / "model.json").read_text())["tokenizer"]["vocab_size"] == work["vocab_size"]


def test_max_seq_len_beyond_the_position_embeddings_is_a_clear_error_not_a_gather(work, capsys, tmp_path):
    d = _damaged(work, "long-max-seq-len", lambda d: _edit_meta(d, max_seq_len=600))
    rc, _, err = _main(capsys, "--task", "evaluate", "--set", f"model.init={d}", f"data.test={work['data']['valid']}")
    assert rc == 1
    line = _one_error_line(err)
    assert line.startswith(f"error: {d / 'model.json'}: max_seq_len 600 is longer than the model's 64 position "
                           "embeddings"), line


def test_checkpoint_max_position_is_checked_before_training(work, capsys, tmp_path):
    """A checkpoint's position count is known once it is loaded: the run stops before tokenising."""
    out = tmp_path / "run"
    sets = tiny_overrides(work["data"], work["data"]["vocab"], f"model.init={work['model']}", "train.max_seq_len=100")
    rc, _, err = _main(capsys, "--task", "finetune", "--out", out, "--set", *sets)
    assert rc == 1
    assert _one_error_line(err) == (f"error: train.max_seq_len=100: longer than the 64 position embeddings of "
                                    f"model.init={work['model']}")
    assert not (out / "model").exists() and not (out / "backup").exists()


# ============================================================================ 3/4. predict's stdin, non-UTF-8 rows
def _predict_stdin(capsys, monkeypatch, work, stdin, *sets):
    monkeypatch.setattr(sys, "stdin", stdin)
    return _main(capsys, "--task", "predict", "--set", f"model.init={work['model']}", *sets)


BAD_STDIN = {  # name -> (stdin, the one-line error)
    "three fields": (lambda: io.StringIO("a b\tc d\nx\ty\tz\n"),
                     "error: <stdin>:2: expected 'text_a<TAB>text_b', found 3 tab-separated fields"),
    "GBK bytes": (lambda: io.TextIOWrapper(io.BytesIO("a b\tc d\n如何\t怎么\n".encode("gbk")), encoding="utf-8"),
                  "error: <stdin>:2: not valid UTF-8"),
    # what a C-locale stdin (surrogateescape) hands over for the same bytes
    "surrogates": (lambda: io.StringIO("a b\tc d\n\udcc8\udce7\t\udcd4\n"), "error: <stdin>:2: not valid UTF-8"),
}


@pytest.mark.parametrize("case", list(BAD_STDIN))
def test_predict_bad_stdin_line_fails_naming_it_or_is_skipped_and_counted(work, capsys, monkeypatch, caplog, case):
    stdin, message = BAD_STDIN[case]
    rc, out, err = _predict_stdin(capsys, monkeypatch, work, stdin())
    assert rc == 1 and _one_error_line(err) == message and out == ""
    rc, out, err = _predict_stdin(capsys, monkeypatch, work, stdin(), "data.on_bad_row=skip")
    assert rc == 0, err
    assert [r.split(",")[:2] for r in out.splitlines()[1:]] == [["a b", "c d"]]
    reason = "wrong number of fields" if case == "three fields" else "not valid UTF-8"
    assert f"<stdin>: skipped 1 bad rows ({{'{reason}': 1}})" in caplog.text


def test_predict_stdin_and_read_texts_drop_a_bom_as_the_file_readers_do(work, capsys, monkeypatch, tmp_path):
    from data import read_texts

    stdin = io.TextIOWrapper(io.BytesIO("\ufeffa b\tc d\n".encode("utf-8")), encoding="utf-8")
    rc, out, err = _predict_stdin(capsys, monkeypatch, work, stdin)
    assert rc == 0, err
    assert out.splitlines()[1].split(",")[:2] == ["a b", "c d"]
    (tmp_path / "texts.txt").write_bytes("\ufeffhow old are you\n".encode("utf-8"))
    assert read_texts(tmp_path / "texts.txt") == (["1"], ["how old are you"])


@pytest.mark.parametrize("case", ["missing directory", "a directory", "no permission"])
def test_predict_out_that_cannot_be_written_fails_before_the_model_is_loaded(work, capsys, monkeypatch, tmp_path,
                                                                             case):
    import modeling.model_dir

    out = {"missing directory": tmp_path / "nowhere" / "scores.csv", "a directory": tmp_path,
           "no permission": tmp_path / "locked" / "scores.csv"}[case]
    if case == "no permission":
        if os.geteuid() == 0:
            pytest.skip("root writes anywhere")
        out.parent.mkdir(mode=0o500)
    # crossenc.predict imports it when it loads a model directory (not for an export: no Keras there)
    monkeypatch.setattr(modeling.model_dir, "load_model_dir", lambda *a, **k: pytest.fail("the model was loaded"))
    rc, _, err = _main(capsys, "--task", "predict", "--out", out, "--set", f"model.init={work['model']}",
                       f"data.test={work['data']['valid']}")
    assert rc == 1
    assert str(out) in _one_error_line(err) and {"missing directory": "does not exist", "a directory": "is a directory",
                                                   "no permission": "cannot write"}[case] in err


FORMATS = ["csv", "bq", "tsv", "lcqmc", "jsonl", "afqmc", "mrpc"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_on_bad_row_skip_skips_and_counts_non_utf8_rows(tmp_path, fmt):
    """As docs/configuration.md says: a row with bytes that are not UTF-8 is a bad row (error mode: the file:line
    error it always was, tests/test_reliability.py)."""
    from data import read_pairs
    from tests.test_reliability import EXT, GOOD, first_data_line, render

    f = tmp_path / f"data.{EXT[fmt]}"
    bad = render(fmt, [("如何修改密码", "怎么更改登录密码", "1")], header=False).encode("gbk")
    f.write_bytes(render(fmt, GOOD[:1]).encode() + bad + render(fmt, GOOD[1:], header=False).encode())
    p = read_pairs(f, format=fmt, on_bad_row="skip")
    assert (p.text_a, p.skipped, dict(p.skip_reasons)) == ([g[0] for g in GOOD], 1, {"not valid UTF-8": 1})
    assert p.lines == [first_data_line(fmt), first_data_line(fmt) + 2]


# ============================================================================ 3. label sets that look like mistakes
def _label_file(tmp_path, labels, name="train.csv"):
    rows = [(f"text a {i}", f"text b {i}", y) for i, y in enumerate(labels)]
    return write_csv(tmp_path / name, rows)


def _splits(path, *sets):
    from training.inputs import load_splits

    return load_splits(load_config(None, ["model.init=null", f"data.train={path}", *sets]))


def test_repeated_header_row_stops_the_run_naming_file_and_line(tmp_path, capsys):
    labels = ["0", "1"] * 20
    path = write_csv(tmp_path / "train.csv", [(f"a {i}", f"b {i}", y) for i, y in enumerate(labels[:10])]
                     + [("sentence1", "sentence2", "label")] + [(f"a {i}", f"b {i}", y) for i, y in enumerate(labels)])
    out = tmp_path / "run"
    rc, _, err = _main(capsys, "--task", "finetune", "--out", out, "--set", *tiny_overrides(), f"data.train={path}")
    assert rc == 1
    assert _one_error_line(err) == (f"error: {path}:12: label 'label' is a column name (a repeated header row?); "
                                    "fix the data, or declare the classes with data.labels=[...] if they are right")
    assert not (out / "model").exists()
    assert _splits(path, "data.labels=[0, 1, label]").label_names == ["0", "1", "label"]  # declared: as asked


def test_two_spellings_of_one_number_are_not_two_classes(tmp_path):
    path = _label_file(tmp_path, ["0", "1", "0", "1.0", "1"])
    with pytest.raises(Exception) as e:
        _splits(path)
    assert str(e.value) == (f"{path}:5: label '1.0' is the number '1' (line 3) written another way, and would be a "
                            "second class; fix the data, or declare the classes with data.labels=[...] if they are right")
    assert _splits(path, "data.labels=[0, 1, 1.0]").label_names == ["0", "1", "1.0"]


def test_a_handful_of_rows_against_thousands_is_a_typo(tmp_path):
    labels = ["0", "1"] * 1000
    labels[700:700] = ["l"]
    path = _label_file(tmp_path, labels + ["l"])
    with pytest.raises(Exception) as e:
        _splits(path)
    assert str(e.value).startswith(f"{path}:702: label 'l' has only 2 rows against 1000 of '0' (a typo?); fix the ")
    assert _splits(path, "data.labels=[0, 1, l]").label_names == ["0", "1", "l"]


def test_one_class_is_refused_unless_the_objective_learns_from_positives_alone(tmp_path):
    path = _label_file(tmp_path, ["1"] * 30)
    with pytest.raises(Exception) as e:
        _splits(path)
    assert str(e.value) == (f"{path}: every row has label '1' (30 rows): a classifier needs at least 2 classes "
                            "(is data.label the right column?)")
    with pytest.raises(Exception, match="every row has label '1'"):  # declared classes do not make examples
        _splits(path, "data.labels=[0, 1]")
    from training.inputs import load_splits

    cfg = load_config(None, ["task=sbert", "sbert.objective=mnrl", "model.init=null", f"data.train={path}"])
    assert load_splits(cfg, min_classes=1).label_names == ["1"]  # MNRL: in-batch negatives


def test_a_label_column_of_ids_is_refused(tmp_path):
    path = _label_file(tmp_path, [f"q{i}" for i in range(120)])
    with pytest.raises(Exception) as e:
        _splits(path)
    assert str(e.value).startswith(f"{path}: 120 distinct labels in 120 rows (e.g. 'q0', 'q1', 'q2'): is data.label "
                                   "('label') an id column? A classifier needs several rows per class; fix the data")
    assert len(_splits(path, f"data.labels=[{', '.join(f'q{i}' for i in range(120))}]").label_names) == 120


def test_a_json_label_that_is_not_a_single_value_names_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    rows = [{"sentence1": f"a {i}", "sentence2": f"b {i}", "label": i % 2} for i in range(6)]
    rows[3]["label"] = [1]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(Exception) as e:
        _splits(path)
    assert str(e.value) == f"{path}:4: label in column 'label' is not a single value: [1]"
    assert _splits(path, "data.on_bad_row=skip").label_names == ["0", "1"]  # skipped and counted


def test_plausible_label_sets_pass(tmp_path):
    from data import check_label_set, read_pairs

    few = read_pairs(_label_file(tmp_path, ["0", "1"] * 300 + ["2"] * 3, "few.csv"))  # 3 against 300: not thousands
    graded = read_pairs(_label_file(tmp_path, [f"{i / 4:.2f}" for i in range(21)] * 200 + ["4.80"], "sts.csv"))
    for pairs in (few, graded):
        check_label_set(pairs)


# ============================================================================ 2. a resume never mixes two runs
def _stopped_at_first_step():
    """A `_StopFlag` that reports SIGTERM at once: the run saves a checkpoint after step 1 and exits 143."""
    import training.trainer as trainer

    class Stopped(trainer._StopFlag):
        def __enter__(self):
            super().__enter__()
            self.signum = 15
            return self

    return Stopped


def _no_tensorflow_main(cwd, *args):
    """`run_tasks.main(args)` in a fresh interpreter; fails if TensorFlow was imported."""
    import subprocess

    from tests.tiny_runs import PYTHON, ROOT, cli_env

    code = ("import sys; sys.path.insert(0, sys.argv[1]); import run_tasks; rc = run_tasks.main(sys.argv[2:]); "
            "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'; sys.exit(rc)")
    p = subprocess.run([str(PYTHON), "-c", code, str(ROOT), *map(str, args)], cwd=cwd, env=cli_env(),
                       capture_output=True, text=True, timeout=120)
    return p.returncode, p.stderr


def test_resume_with_other_settings_or_data_is_refused_and_the_same_command_resumes(work, capsys, tmp_path,
                                                                                    monkeypatch):
    import shutil

    train = tmp_path / "train.csv"
    shutil.copyfile(work["data"]["train"], train)
    run = tmp_path / "run"
    sets = tiny_overrides(work["data"], work["data"]["vocab"], "train.epochs=1", "model.dropout=0",
                          f"data.train={train}")
    with monkeypatch.context() as mp:
        mp.setattr("training.trainer._StopFlag", _stopped_at_first_step())
        rc, _, err = _main(capsys, "--task", "finetune", "--out", run, "--set", *sets)
    assert rc == 143, err
    kept = {p: p.read_bytes() for p in [run / "config.yaml", run / "inputs.json", *(run / "backup").iterdir()]}

    other = tmp_path / "other.csv"
    shutil.copyfile(train, other)
    fix = (f": rerun with its settings ({run / 'config.yaml'}) to resume it, or start fresh with another --out "
           f"(or after deleting {run / 'backup'})")
    for change, diff in [("train.learning_rate=1e-3", "train.learning_rate: 0.0001 -> 0.001"),
                         (f"data.train={other}", f"data.train: '{train}' -> '{other}'")]:
        rc, _, err = _main(capsys, "--task", "finetune", "--out", run, "--set", *sets, change)
        assert rc == 1
        assert _one_error_line(err) == f"error: {run} holds an interrupted run with other settings ({diff}){fix}"
    original = train.read_bytes()
    train.write_bytes(original + b"one more,row,1\n")
    rc, err = _no_tensorflow_main(tmp_path, "--task", "finetune", "--out", run, "--set", *sets)
    assert rc == 1, err
    assert _one_error_line(err) == (f"error: {run} holds an interrupted run with other settings "
                                    f"(data.train: same path, other contents){fix}")
    assert {p: p.read_bytes() for p in kept} == kept  # nothing of the interrupted run was touched
    assert not (run / "model").exists()

    train.write_bytes(original)  # the same data again (a new mtime), another verbosity (changes nothing): resumable
    rc, _, err = _main(capsys, "--task", "finetune", "--out", run, "--set", *sets, "train.verbose=2")
    assert rc == 0, err
    assert json.loads((run / "metrics.json").read_text())["training"]["steps"] == 4  # 64 / 16, from step 1


def test_resuming_after_the_teacher_reuses_it_only_if_it_is_the_same(work, caplog, tmp_path):
    """virt/distill fine-tune their teacher into <out>/teacher first: a run stopped after that used to fail
    on resume ("already holds a finished run"), and must not pick up a teacher trained with other settings."""
    from training.rundir import RunError
    from crossenc.teacher import teacher_for

    caplog.set_level(logging.INFO, logger="training.references")
    run = tmp_path / "distill"
    sets = tiny_overrides(work["data"], work["data"]["vocab"], "train.epochs=1", "train.steps_per_epoch=2",
                          "task=distill", f"out={run}")
    cfg = load_config(run_tasks.ROOT / "config" / "distill.yaml", sets)
    teacher, metrics = teacher_for(cfg, run, "distill")  # fine-tuned
    assert metrics["valid"]["n"] == 16 and "reusing" not in caplog.text
    again, same = teacher_for(cfg, run, "distill")  # the resumed run
    assert f"the teacher in {run / 'teacher'} is finished: reusing it" in caplog.text
    assert same == metrics and again.path == teacher.path
    other = load_config(run_tasks.ROOT / "config" / "distill.yaml", sets + ["train.seed=1"])
    with pytest.raises(RunError) as e:
        teacher_for(other, run, "distill")
    assert str(e.value) == (f"{run / 'teacher'} holds a teacher trained with other settings (train.seed: 42 -> 1); "
                            "start fresh with another --out")


# ============================================================================ 3. no task overwrites another run
def _training_run(root):
    """What check_out looks at in a finished training run: config.yaml and metrics.json (no TensorFlow)."""
    from config import save_config

    run = root / "finished"
    if not run.exists():
        save_config(load_config(None, ["task=finetune"]), run / "config.yaml")
        (run / "metrics.json").write_text('{"valid": {"accuracy": 0.9}, "training": {"steps": 300}}')
    return run


@pytest.mark.parametrize("case", ["evaluate over a training run", "evaluate into a model directory",
                                  "export over a training run", "index over a non-empty directory"])
def test_no_task_overwrites_another_runs_results(work, capsys, tmp_path, case):
    run = _training_run(work["root"])
    kept = {p: p.read_bytes() for p in run.iterdir()}
    model = work["model"]
    task, out, sets, holds = {
        "evaluate over a training run": ("evaluate", run, [f"model.init={model}", f"data.test={work['data']['valid']}"],
                                         "a training run (config.yaml)"),
        "evaluate into a model directory": ("evaluate", model, [f"model.init={model}",
                                                                f"data.test={work['data']['valid']}"],
                                            "a model directory (model.json)"),
        "export over a training run": ("export", run, [f"export.model={model}"], "a training run (config.yaml)"),
        "index over a non-empty directory": ("index", tmp_path / "notes",
                                             [f"index.model={model}", f"index.corpus={work['data']['valid']}"], None),
    }[case]
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me\n")
    rc, err = _no_tensorflow_main(tmp_path, "--task", task, "--out", out, "--set", *sets)
    assert rc == 1
    line = _one_error_line(err)
    if holds:
        assert line == (f"error: {out} holds {holds} that --task {task} would overwrite or mix with its own outputs; "
                        f"choose another --out, e.g. {out}/{task}")
    else:
        assert line == (f"error: {out} is not empty and not an index; --task index replaces the whole directory: "
                        "choose another --out")
    assert {p: p.read_bytes() for p in run.iterdir()} == kept
    assert not (model / "metrics.json").exists() and (tmp_path / "notes" / "todo.txt").read_text() == "keep me\n"


def test_evaluate_beside_a_training_run_and_again_into_its_own_directory(work, capsys, tmp_path):
    run = _training_run(work["root"])
    for _ in range(2):  # an evaluation directory is evaluate's own: a second evaluation replaces the first
        rc, _, err = _main(capsys, "--task", "evaluate", "--out", run / "evaluate", "--set", f"model.init={work['model']}",
                           f"data.test={work['data']['valid']}")
        assert rc == 0, err
    assert json.loads((run / "evaluate" / "metrics.json").read_text())["eval"]["n"] == 16


# ============================================================================ 6. serving an export directory
INT8_REASON = "label agreement 0.9000 < 0.95 on the 30 pairs with fp32 margin >= 0.1"


def _export_dir(work, name, withheld=False, short_vocab=False):
    """What --task serve reads of an export directory before it opens an ONNX session (no real ONNX files)."""
    d = work["root"] / "exports" / name
    d.mkdir(parents=True)
    for f in ("model.json", "vocab.txt"):
        (d / f).write_bytes((work["model"] / f).read_bytes())
    if short_vocab:
        _short_vocab(d)
    (d / "parity.json").write_text(json.dumps({
        "ok": not withheld, "failed": ["onnx.int8"] if withheld else [], "name": "qm", "version": 1,
        "max_seq_len": 16, "checks": {"onnx.int8": {"ok": not withheld, "reason": INT8_REASON if withheld else ""}},
        "status": {"saved_model": "published", "onnx.predict_ids": "published",
                   "onnx.int8": "withheld" if withheld else "published"}}))
    (d / "onnx").mkdir()
    (d / "onnx" / "model.onnx").write_bytes(b"")
    if withheld:
        (d / "withheld").mkdir()
        (d / "withheld" / "model.int8.onnx").write_bytes(b"")
    return d


def test_serve_int8_withheld_by_export_says_where_it_is_and_how_to_publish_it(work, capsys):
    d = _export_dir(work, "int8-withheld", withheld=True)
    rc, _, err = _main(capsys, "--task", "serve", "--set", f"serve.model={d}", "serve.int8=true")
    assert rc == 1
    assert _one_error_line(err) == (
        f"error: {d / 'onnx' / 'model.int8.onnx'}: missing: the export's int8 parity check withheld it ({INT8_REASON}); "
        f"it is in {d / 'withheld' / 'model.int8.onnx'}. To serve it anyway, export again with export.int8_force=true "
        "(or copy it into onnx/, docs/export.md); serve.int8=false serves fp32")


def test_serve_int8_of_the_fused_graph_withheld_says_where_it_is(work, capsys):
    """Since issue 28 the int8 copy is of the published graph: withheld/model.fused.int8.onnx, judged as onnx.fused.int8."""
    d = _export_dir(work, "fused-int8-withheld", withheld=True)
    (d / "withheld" / "model.int8.onnx").rename(d / "withheld" / "model.fused.int8.onnx")
    report = json.loads((d / "parity.json").read_text())
    report["checks"] = {"onnx.fused.int8": {"ok": False, "reason": "accuracy 0.90 -> 0.80 ..."}}
    (d / "parity.json").write_text(json.dumps(report))
    rc, _, err = _main(capsys, "--task", "serve", "--set", f"serve.model={d}", "serve.int8=true")
    assert rc == 1 and _one_error_line(err).startswith(
        f"error: {d / 'onnx' / 'model.int8.onnx'}: missing: the export's int8 parity check withheld it (accuracy 0.90 "
        f"-> 0.80 ...); it is in {d / 'withheld' / 'model.fused.int8.onnx'}. To serve it anyway")


def test_serve_int8_never_written_says_export_int8(work, capsys):
    d = _export_dir(work, "int8-off")
    rc, _, err = _main(capsys, "--task", "serve", "--set", f"serve.model={d}", "serve.int8=true")
    assert rc == 1
    assert _one_error_line(err) == (f"error: {d / 'onnx' / 'model.int8.onnx'}: missing; export with export.formats "
                                    "including onnx and export.int8=true (or use the tf backend)")


def test_serve_host_that_does_not_resolve_or_bind_is_one_line_before_the_model_loads(work, capsys):
    """uvicorn said it in its own log line, exit 3, after the model had loaded; the export here has an empty
    model.onnx, so loading it first would fail on that instead."""
    import socket

    d = _export_dir(work, "bind")
    rc, _, err = _main(capsys, "--task", "serve", "--set", f"serve.model={d}", "serve.host=no-such-host.invalid")
    assert rc == 1
    assert re.fullmatch(r"error: serve.host=no-such-host.invalid: cannot resolve \(.+\)", _one_error_line(err)), err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        rc, _, err = _main(capsys, "--task", "serve", "--set", f"serve.model={d}", f"serve.port={port}")
    assert rc == 1
    assert _one_error_line(err) == f"error: serve.host=127.0.0.1, serve.port={port}: cannot bind (Address already in use)"


def test_export_directory_with_a_vocab_shorter_than_the_embedding_table_is_refused(work, capsys):
    d = _export_dir(work, "short-vocab", short_vocab=True)
    rc, _, err = _main(capsys, "--task", "serve", "--set", f"serve.model={d}")
    assert rc == 1
    n = work["vocab_size"]
    assert _one_error_line(err) == (f"error: {d / 'vocab.txt'}: 20 tokens, but the model has {n} token embeddings "
                                    f"and was saved with a {n}-token vocab.txt; this vocab.txt does not belong to the model")


# ============================================================================ 7. pointers to documents
@pytest.mark.parametrize("source", ["export/task.py", "export/text.py", "tests/test_export.py", "requirements.txt",
                                    "run_tasks.py", "config/export.yaml", "config/serve.yaml", "config/index.yaml",
                                    "config/search.yaml"])
def test_documents_named_in_modules_exist(source):
    import re

    text = (run_tasks.ROOT / source).read_text(encoding="utf-8")
    named = re.findall(r"(?<![\w/.-])((?:[\w.-]+/)*[\w-]+\.md)\b", text)
    assert named and [n for n in named if not (run_tasks.ROOT / n).is_file()] == []
