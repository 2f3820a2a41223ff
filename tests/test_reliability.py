"""Reliability: every reader format and the CLI against a corpus of bad inputs, a non-finite loss
through the CLI, half-written or incompatible model directories for export/predict.

Extends, without repeating, test_data.py (csv/tsv/jsonl row and file errors one by one),
test_cli.py (missing file, bad key, empty checkpoint dir), test_training.py (NaN in Trainer.fit)
and test_export.py (no vocab, an mlm kind, bad options). Here: the same corpus through all seven
formats, the CLI's one-line errors in real processes, `data.on_bad_row=skip` counted through the
CLI, previous outputs left alone, an inf loss through the CLI with a resume from the kept
checkpoint, and damaged model directories. The two subprocesses start with the module.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import run_tasks
from data import DataError, read_pairs
from tests.test_cli import _one_error_line
from tests.tiny_runs import make_data, popen_cli, tiny_model, tiny_overrides

# ============================================================================ the corpus
GOOD = [("how are you", "how do you do", "1"), ("what time is it", "where is it", "0")]
LONG = "x" * 100_000
MRPC_HEADER = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\r\n"
EXT = {"csv": "csv", "bq": "csv", "tsv": "tsv", "lcqmc": "tsv", "jsonl": "jsonl", "afqmc": "jsonl", "mrpc": "txt"}
TEXT_COLUMNS = {"lcqmc": ("a", "b"), "mrpc": ("#1 String", "#2 String")}
LABEL_COLUMN = {"lcqmc": "label", "mrpc": "Quality"}
JSON = ("jsonl", "afqmc")


def render(fmt, rows, header=True):
    """Rows (a, b, label) in `fmt`'s layout; a JSON label of float('nan') is written as NaN."""
    if fmt in ("csv", "bq"):
        s = io.StringIO()
        w = csv.writer(s, lineterminator="\n")
        if header:
            w.writerow(["sentence1", "sentence2", "label"])
        w.writerows(rows)
        return s.getvalue()
    if fmt in JSON:
        return "".join(json.dumps({"sentence1": a, "sentence2": b, "label": y}, ensure_ascii=False) + "\n"
                       for a, b, y in rows)
    if fmt == "mrpc":
        return (MRPC_HEADER if header else "") + "".join(f"{y}\t1\t2\t{a}\t{b}\r\n" for a, b, y in rows)
    head = "sentence1\tsentence2\tlabel\n" if header and fmt == "tsv" else ""
    return head + "".join(f"{a}\t{b}\t{y}\n" for a, b, y in rows)


def first_data_line(fmt):
    return 1 if fmt in JSON + ("lcqmc",) else 2


def bad_row_file(fmt, row):
    """GOOD then one bad row: (bytes, the bad row's line)."""
    return render(fmt, GOOD + [row]).encode(), first_data_line(fmt) + len(GOOD)


# Row-level problems: fmt -> (bad row, reason counted with skip, text of the error).
def row_cases(fmt):
    a, b = TEXT_COLUMNS.get(fmt, ("sentence1", "sentence2"))
    label = LABEL_COLUMN.get(fmt, "label")
    nan_label = float("nan") if fmt in JSON else "NaN"
    cases = {
        "label not in the label set": (("a b", "c d", "7"), "label not in labels",
                                       "label '7' is not one of labels ['0', '1']"),
        "empty text": (("a b", "  ", "1"), "empty text", f"empty text in column {b!r}"),
        "100k-character text": ((LONG, "c d", "1"), "text too long",
                                f"text in column {a!r} has 100000 characters (max_text_chars=10000)"),
        "NaN label": (("a b", "c d", nan_label), "missing label", f"missing label in column {label!r}"),
    }
    if fmt in JSON:  # a NaN text exists only in JSON; in delimited files "NaN" is a word (test_data.py)
        cases["NaN text"] = ((float("nan"), "c d", "1"), "missing text", f"missing text in column {a!r}")
    return cases


ROW_CASES = [(fmt, name) for fmt in EXT for name in row_cases(fmt)]


@pytest.mark.parametrize("fmt,case", ROW_CASES, ids=[f"{f}-{c}" for f, c in ROW_CASES])
def test_bad_row_names_file_and_line_or_is_skipped_and_counted(tmp_path, fmt, case):
    row, reason, message = row_cases(fmt)[case]
    body, line = bad_row_file(fmt, row)
    f = tmp_path / f"data.{EXT[fmt]}"
    f.write_bytes(body)
    with pytest.raises(DataError) as e:
        read_pairs(f, format=fmt, labels=["0", "1"])
    assert str(e.value) == f"{f}:{line}: {message}"
    p = read_pairs(f, format=fmt, labels=["0", "1"], on_bad_row="skip")
    assert (p.text_a, p.labels, p.skipped, dict(p.skip_reasons)) == (
        [g[0] for g in GOOD], [g[2] for g in GOOD], 1, {reason: 1})
    assert p.lines == [first_data_line(fmt), first_data_line(fmt) + 1]


def file_cases(fmt):
    """Whole-file problems: name -> (file bytes, expected message after '<path>', or one per
    on_bad_row mode). They fail with skip too."""
    good = render(fmt, GOOD)
    gbk_row = render(fmt, [("如何修改密码", "怎么更改登录密码", "1")], header=False).encode("gbk")
    gbk_line = first_data_line(fmt) + len(GOOD)
    a, b = TEXT_COLUMNS.get(fmt, ("sentence1", "sentence2"))
    cases = {
        "empty file": (b"", ": file is empty"),
        # error mode only: skip mode skips such rows (test_hardening.py)
        "non-UTF-8 bytes": (good.encode() + gbk_row, (f":{gbk_line}: not valid UTF-8 (byte 0x",)),
    }
    if fmt in JSON:
        cases["wrong delimiter"] = (good.replace('", "', '"; "').encode(), (  # every line is a bad row
            ":1: invalid JSON (Expecting ',' delimiter", ": no usable rows, all 2 were skipped (invalid JSON: 2)"))
        cases["missing column"] = (good.replace('"sentence2"', '"q2"').encode(),
                                   ": key 'sentence2' not found in any line; keys present: ['sentence1', 'q2', 'label']")
    elif fmt == "lcqmc":  # no header: a row of the wrong width is what a wrong delimiter looks like
        cases["wrong delimiter"] = (good.replace("\t", ",").encode(),
                                    ":1: expected 2 or 3 tab-separated fields (a, b[, label]) and no header, found 1")
    else:
        sep = "," if fmt in ("csv", "bq") else "\t"
        header = good.splitlines()[0].lstrip("\ufeff")
        cases["header only"] = (render(fmt, []).encode(), ": no data rows (header only)")
        cases["wrong delimiter"] = (good.replace(sep, ";").encode(),
                                    f":1: column {a!r} not found; the header has one column "
                                    f"{header.replace(sep, ';')!r} — is the delimiter right?")
        cases["missing column"] = (good.replace(b, "q2", 1).encode(), f":1: column {b!r} not found; the header has columns")
    return cases


FILE_CASES = [(fmt, name) for fmt in EXT for name in file_cases(fmt)]


@pytest.mark.parametrize("fmt,case", FILE_CASES, ids=[f"{f}-{c}" for f, c in FILE_CASES])
def test_bad_file_is_one_clear_error_naming_the_file(tmp_path, fmt, case):
    body, expected = file_cases(fmt)[case]
    f = tmp_path / f"data.{EXT[fmt]}"
    f.write_bytes(body)
    for mode, want in zip(("error", "skip"), expected if isinstance(expected, tuple) else (expected, expected)):
        with pytest.raises(DataError) as e:
            read_pairs(f, format=fmt, labels=["0", "1"], on_bad_row=mode)
        msg = str(e.value)
        assert msg.startswith(f"{f}{want}") and "\n" not in msg, msg


# ============================================================================ CLI fixtures
@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Data, an (untrained) tiny cross-encoder model directory and damaged copies of it."""
    from modeling.model_dir import save_model_dir
    from modeling.tokenization import PairTokenizer

    root = tmp_path_factory.mktemp("reliability")
    data = make_data(root / "data", n_train=64, n_valid=16)
    tok = PairTokenizer(data["vocab"])
    model_dir = save_model_dir(tiny_model(tok.vocab_size), root / "model", tok, labels=["0", "1"], max_seq_len=16)
    bad = {}
    for name, row in (("gbk", None), ("long", (LONG, "b", "1")), ("label7", ("a", "b", "7"))):
        f = root / f"{name}.csv"
        if row is None:
            f.write_bytes(render("csv", GOOD).encode() + "如何,怎么,1\n".encode("gbk"))
        else:
            f.write_text(render("csv", GOOD + [row]), encoding="utf-8")
        bad[name] = f
    return {"root": root, "data": data, "model": model_dir, "bad": bad, "vocab_size": tok.vocab_size}


def _damaged(work, name, damage):
    d = work["root"] / "damaged" / name
    if not d.exists():
        shutil.copytree(work["model"], d)
        damage(d)
    return d


def _edit_meta(d, **changes):
    meta = json.loads((d / "model.json").read_text())
    (d / "model.json").write_text(json.dumps({**meta, **changes}))


def _truncate(f, keep):
    f.write_bytes(f.read_bytes()[:keep])


def _other_architecture(work):
    """The weights of a 1-layer model in the 2-layer model's directory."""
    from modeling.model_dir import save_model_dir
    from modeling.tokenization import PairTokenizer

    other = save_model_dir(tiny_model(work["vocab_size"], num_layers=1), work["root"] / "one_layer",
                           PairTokenizer(work["data"]["vocab"]), labels=["0", "1"], max_seq_len=16)
    return lambda d: shutil.copyfile(other / "model.weights.h5", d / "model.weights.h5")


DAMAGES = {
    "missing weights": (lambda work: lambda d: (d / "model.weights.h5").unlink(),
                        "model.weights.h5 is missing (half-written model directory?)"),
    "truncated weights": (lambda work: lambda d: _truncate(d / "model.weights.h5", 20_000),
                          "model.weights.h5: cannot load weights (Unable to synchronously open file (truncated file"),
    "unknown kind": (lambda work: lambda d: _edit_meta(d, kind="reranker"), "model.json: unknown model kind 'reranker'"),
    "truncated model.json": (lambda work: lambda d: _truncate(d / "model.json", 100), "model.json: not valid JSON"),
    "foreign model config": (lambda work: lambda d: _edit_meta(d, model={"class_name": "Nope", "config": {}}),
                             "model.json: cannot rebuild the cross_encoder model from its config (Could not locate "
                             "class 'Nope'"),
    "other architecture": (_other_architecture,
                           "model.weights.h5: cannot load weights (the weights do not fit the architecture in "
                           "model.json: A total of 8 objects could not be loaded"),
}


@pytest.fixture(scope="module", autouse=True)
def procs(request, tmp_path_factory):
    """Real processes (no traceback, exit 1): finetune on a non-UTF-8 train file; predict with a
    truncated weights file over a previous scores file."""
    if not any(item.module.__name__ == __name__ and "subprocess" in item.name for item in request.session.items):
        yield {}
        return
    work = request.getfixturevalue("work")
    root = work["root"]
    damaged = _damaged(work, "truncated weights", DAMAGES["truncated weights"][0](work))
    previous = root / "previous-scores.csv"
    previous.write_text("text_a,text_b,label,p_0,p_1\nkeep,me,0,0.9,0.1\n")
    started = {
        "finetune": popen_cli(["--task", "finetune", "--out", root / "ft-run", "--set",
                               *tiny_overrides(work["data"], work["data"]["vocab"]), f"data.train={work['bad']['gbk']}"],
                              cwd=root),
        "predict": popen_cli(["--task", "predict", "--out", previous, "--set", f"model.init={damaged}",
                              f"data.test={work['data']['valid']}"], cwd=root),
    }
    yield {"started": started, "previous": previous, "damaged": damaged, "root": root}
    for p in started.values():
        if p.poll() is None:
            p.kill()
            p.wait()


def _finish(proc):
    try:
        _, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, err


def _main(capsys, *args):
    capsys.readouterr()
    rc = run_tasks.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("task", ["predict", "evaluate"])
@pytest.mark.parametrize("bad", ["gbk", "long", "label7"])
def test_cli_bad_data_is_one_line_and_keeps_previous_outputs(work, capsys, tmp_path, task, bad):
    path = work["bad"][bad]
    out = tmp_path / ("scores.csv" if task == "predict" else "eval")
    previous = out if task == "predict" else out / "metrics.json"
    previous.parent.mkdir(parents=True, exist_ok=True)
    previous.write_text("previous run\n")
    rc, _, err = _main(capsys, "--task", task, "--out", out, "--set", f"model.init={work['model']}", f"data.test={path}")
    if task == "predict" and bad == "label7":  # predict reads no labels: a fine file
        assert rc == 0 and len(out.read_text().splitlines()) == 4
        return
    assert rc == 1
    line = _one_error_line(err)
    expected = {"gbk": f"{path}:4: not valid UTF-8", "long": f"{path}:4: text in column 'sentence1' has 100000",
                "label7": f"{path}:4: label '7' is not one of the model's labels "
                          f"({Path(work['model']) / 'model.json'}) ['0', '1']"}[bad]
    assert line.startswith(f"error: {expected}"), line
    assert previous.read_text() == "previous run\n"
    assert [p.name for p in previous.parent.iterdir()] == [previous.name]  # no temp file left


@pytest.mark.parametrize("task", ["predict", "evaluate"])
def test_cli_skip_counts_bad_rows(work, capsys, caplog, tmp_path, task):
    out = tmp_path / ("scores.csv" if task == "predict" else "eval")
    rc, _, err = _main(capsys, "--task", task, "--out", out, "--set", f"model.init={work['model']}",
                       f"data.test={work['bad']['long']}", "data.on_bad_row=skip")
    assert rc == 0, err
    assert f"{work['bad']['long']}: skipped 1 bad rows ({{'text too long': 1}})" in caplog.text
    if task == "predict":
        rows = list(csv.reader(out.open()))
        assert [r[0] for r in rows[1:]] == [g[0] for g in GOOD]
    else:
        m = json.loads((out / "metrics.json").read_text())
        assert m["skipped_rows"] == {"text too long": 1} and m["eval"]["n"] == 2


def test_predict_failing_while_writing_keeps_the_previous_file(work, tmp_path, monkeypatch, capsys):
    import crossenc.predict as predict

    out = tmp_path / "scores.jsonl"
    out.write_text("previous run\n")
    dumps, calls = json.dumps, []

    def fail_on_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("No space left on device")
        return dumps(*a, **k)

    monkeypatch.setattr(predict.json, "dumps", fail_on_second)
    rc, _, err = _main(capsys, "--task", "predict", "--out", out, "--set", f"model.init={work['model']}",
                       f"data.test={work['data']['valid']}")
    assert rc == 1 and _one_error_line(err) == "error: No space left on device"
    assert out.read_text() == "previous run\n" and [p.name for p in tmp_path.iterdir()] == ["scores.jsonl"]


# ============================================================================ non-finite loss
def test_inf_loss_stops_the_cli_run_and_the_kept_checkpoint_resumes(work, capsys, monkeypatch):
    """test_training.py checks NaN inside Trainer.fit; here an inf through `run_tasks.py`: one
    line, exit 1, no model or metrics, and the checkpoint it kept is a valid resume point."""
    import tensorflow as tf

    from crossenc.model import CrossEncoder

    run = work["root"] / "inf-run"
    sets = tiny_overrides(work["data"], work["data"]["vocab"], "model.dropout=0", "train.epochs=1",
                          "train.save_every=2", "train.patience=0")
    calls = tf.Variable(0, dtype=tf.int64, trainable=False)
    original = CrossEncoder.loss_terms

    def inf_at_step_3(self, x, y, y_pred):
        n = calls.assign_add(1)
        return {k: tf.where(n >= 3, tf.constant(np.inf, v.dtype), v) for k, v in original(self, x, y, y_pred).items()}

    monkeypatch.setattr(CrossEncoder, "loss_terms", inf_at_step_3)
    rc, _, err = _main(capsys, "--task", "finetune", "--out", run, "--set", *sets)
    assert rc == 1
    assert _one_error_line(err) == (f"error: loss became inf at step 3 (epoch 1); the last good checkpoint is kept in "
                                    f"{run / 'backup'}. Try a lower train.learning_rate or train.clip_norm.")
    assert tf.train.latest_checkpoint(str(run / "backup")).endswith("ckpt-2")
    assert not (run / "model").exists() and not (run / "metrics.json").exists()

    monkeypatch.setattr(CrossEncoder, "loss_terms", original)
    rc, _, err = _main(capsys, "--task", "finetune", "--out", run, "--set", *sets)
    assert rc == 0, err
    m = json.loads((run / "metrics.json").read_text())
    assert m["training"]["steps"] == 4  # 64 pairs / 16: the planned steps, counted from step 2


# ============================================================================ damaged model dirs
@pytest.mark.parametrize("damage", list(DAMAGES))
def test_export_and_predict_of_a_damaged_model_directory_fail_naming_it(work, capsys, tmp_path, damage):
    make, expected = DAMAGES[damage]
    d = _damaged(work, damage, make(work))
    out = tmp_path / "exported"
    rc, _, err = _main(capsys, "--task", "export", "--out", out, "--set", f"export.model={d}")
    assert rc == 1
    line = _one_error_line(err)
    assert line.startswith(f"error: {d}") and expected in line, line
    assert not out.exists() or not list(out.rglob("saved_model.pb"))  # nothing published
    rc, _, err = _main(capsys, "--task", "predict", "--out", tmp_path / "s.csv", "--set", f"model.init={d}",
                       f"data.test={work['data']['valid']}")
    assert rc == 1 and _one_error_line(err) == line and not (tmp_path / "s.csv").exists()


# ============================================================================ real processes (last: their
# start-up overlaps the tests above)
def test_subprocess_finetune_bad_train_file_is_one_line(procs, work):
    rc, err = _finish(procs["started"]["finetune"])
    assert rc == 1
    line = _one_error_line(err)
    assert line.startswith(f"error: {work['bad']['gbk']}:4: not valid UTF-8"), line
    assert not (procs["root"] / "ft-run" / "model").exists()


def test_subprocess_predict_damaged_model_keeps_the_previous_output(procs):
    rc, err = _finish(procs["started"]["predict"])
    assert rc == 1
    line = _one_error_line(err)
    assert line.startswith(f"error: {procs['damaged'] / 'model.weights.h5'}: cannot load weights"), line
    assert procs["previous"].read_text() == "text_a,text_b,label,p_0,p_1\nkeep,me,0,0.9,0.1\n"
