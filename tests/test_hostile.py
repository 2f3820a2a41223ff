"""Issue 27, the hostile-user campaign from scratch (docs/testing.md#hostile-input-campaign): each test is a bad
input the campaign found answered badly (accepted without a word, a traceback, a wrong result) or vaguely.
Cheap: the config cases need no TensorFlow; the others reuse tests/test_reliability.py's tiny model."""

from __future__ import annotations

import pytest

from config import ConfigError, load_config
from tests.test_reliability import work  # noqa: F401  (sample data, a tiny model directory)


def test_a_duplicate_key_in_a_config_file_is_refused_naming_file_and_line(tmp_path):
    # YAML keeps the last of two equal keys: 'epochs: 3' was dropped without a word
    path = tmp_path / "dup.yaml"
    path.write_text("train:\n  epochs: 3\n  batch_size: 8\n  epochs: 4\n")
    with pytest.raises(ConfigError, match=r"dup.yaml:4: duplicate key 'epochs' in section 'train' \(first at line 2\)"):
        load_config(path)
    path.write_text("train:\n  epochs: 3\ntrain:\n  batch_size: 8\n")  # a section twice: its first keys were lost
    with pytest.raises(ConfigError, match=r"dup.yaml:3: duplicate key 'train' \(first at line 1\)"):
        load_config(path)


@pytest.mark.parametrize("override,message", [
    ("data.labels=[]", "data.labels: an empty list; give the class names in order, or null"),
    ("data.labels=[a, b, a]", "data.labels: 'a' is given twice in ['a', 'b', 'a']"),
    ("data.labels=[0, '0']", "data.labels: '0' is given twice in ['0', '0']"),
    ("serve.warmup=[32, -1]", "serve.warmup: sequence lengths must be >= 1, got -1 in [32, -1]"),
    ("data.text_b=sentence1", "data.text_a and data.text_b are both 'sentence1': each names its own column"),
    ("data.label=sentence2", "data.text_b and data.label are both 'sentence2': each names its own column"),
    ("serve.warmup=[0]", "serve.warmup: sequence lengths must be >= 1, got 0 in [0]"),
])
def test_list_values_that_cannot_mean_anything_are_refused_when_the_config_is_resolved(override, message):
    # evaluate, predict and serve ignored them (evaluate: the model's labels; serve: lengths clamped to 1)
    with pytest.raises(ConfigError) as e:
        load_config(None, [override, "task=evaluate"])
    assert str(e.value) == message


# ============================================================================ data files
def _columns_error(path, **kw):
    from data import DataError
    from data.readers import check_columns
    with pytest.raises(DataError) as e:
        check_columns(path, label="label", **kw)
    return str(e.value)


@pytest.mark.parametrize("name,data,message", [
    ("u16.csv", "sentence1,sentence2,label\na,b,1\n".encode("utf-16"),
     "u16.csv: UTF-16 text (it starts with the byte-order mark 0xfffe); re-save the file as UTF-8"),
    # mtime=0: the parameter (its bytes name the test) must be the same in every pytest-xdist worker
    ("gz.csv", __import__("gzip").compress(b"sentence1,sentence2,label\na,b,1\n", mtime=0),
     "gz.csv: a gzip-compressed file; decompress it first"),
    ("bin.csv", bytes(range(128, 256)) * 4, "bin.csv:1: not valid UTF-8 (byte 0x80 at byte 1 of the line): not a text file"),
    ("nul.csv", bytes(range(256)) * 4, "nul.csv:1: a NUL byte in the header (byte 1 of the line): not a text file"),
    ("lat.csv", "sentence1,sentence2,label\xe9\na,b,1\n".encode("latin-1"), "lat.csv:1: not valid UTF-8 (byte 0xe9"),
])
def test_a_pair_file_that_is_not_utf8_text_says_what_it_is_not_column_not_found(tmp_path, name, data, message):
    # before: "column 'sentence1' not found; the header has columns ['\xff\xfes\x00e\x00n...']"
    (tmp_path / name).write_bytes(data)
    assert message in _columns_error(tmp_path / name)


def test_a_headerless_file_with_a_bad_first_row_is_left_to_the_row_reader(tmp_path):
    # lcqmc has no header: its first row's bad byte is a bad row (skipped with data.on_bad_row=skip)
    from data.readers import check_columns
    (tmp_path / "l.tsv").write_bytes("caf\xe9\tb\t1\na\tb\t0\n".encode("latin-1"))
    check_columns(tmp_path / "l.tsv", format="lcqmc", label="label")


def test_a_huge_header_is_quoted_cut_in_the_error(tmp_path):
    # a file of one 10 MB line printed that whole line as the "column" (a 10 MB error line)
    from data import DataError, read_pairs
    (tmp_path / "one.csv").write_text("a" * 200_000 + "\n" + "b\n")
    with pytest.raises(DataError) as e:  # a first line too long for the check from the header: read_pairs
        read_pairs(tmp_path / "one.csv")
    message = str(e.value)
    assert len(message) < 400 and "(200000 characters)" in message and "is the delimiter right?" in message
    (tmp_path / "wide.csv").write_text(",".join(f"c{i}" for i in range(5000)) + "\n" + "x\n")
    message = _columns_error(tmp_path / "wide.csv")
    assert len(message) < 600 and "... (5000 columns)" in message


@pytest.mark.parametrize("labels,bad", [(["0", "1"] * 7 + ["yes"], "yes"), (["1", "0"] * 8 + ["unsure"], "unsure")])
def test_a_word_among_numeric_labels_is_refused_naming_file_and_line(tmp_path, labels, bad):
    # 0/1 plus one 'yes' (or pandas' 'nan') trained a three-class model without a word
    from data import DataError, read_pairs
    from data.readers import check_label_set
    from tests.tiny_runs import write_csv
    write_csv(tmp_path / "t.csv", [(f"a{i}", f"b{i}", y) for i, y in enumerate(labels)])
    with pytest.raises(DataError, match=rf"t.csv:{labels.index(bad) + 2}: label '{bad}' is a word among numeric "
                                        rf"labels \['0', '1'\] .*declare the classes with data.labels"):
        check_label_set(read_pairs(tmp_path / "t.csv"))
    check_label_set(_pairs(tmp_path, ["no", "yes"] * 8))  # words alone, numbers alone: fine


def _pairs(tmp_path, labels):
    from data import read_pairs
    from tests.tiny_runs import write_csv
    write_csv(tmp_path / "w.csv", [(f"a{i}", f"b{i}", y) for i, y in enumerate(labels)])
    return read_pairs(tmp_path / "w.csv")


def test_a_device_as_a_pair_file_is_refused_not_read_forever(tmp_path):
    # data.test=/dev/zero passed the check from the header (64 KiB of NULs, no line), then read_pairs read it
    # whole after TensorFlow's start-up (memory without end; the campaign's call timed out). Now refused first.
    from data import DataError
    from data.readers import check_columns
    with pytest.raises(DataError, match="^/dev/zero: a character device, not a file$"):
        check_columns("/dev/zero")


def test_a_symlink_loop_is_not_called_missing(tmp_path):
    from data import DataError
    from training.rundir import check_inputs
    from data.readers import check_columns
    (tmp_path / "loop.csv").symlink_to(tmp_path / "loop.csv")
    check_inputs([("data.test", str(tmp_path / "loop.csv"), "file")])  # before: "file not found"
    with pytest.raises(DataError, match=r"loop.csv: cannot read \(Too many levels of symbolic links\)"):
        check_columns(tmp_path / "loop.csv")


# ============================================================================ run directories
@pytest.mark.parametrize("task", ["evaluate", "predict"])
def test_an_out_under_a_file_or_on_a_dangling_symlink_says_so(tmp_path, task):
    # before: "[Errno 20] Not a directory: '.../afile/sub'" and "[Errno 17] File exists: '.../dangling'"
    from training.rundir import RunError, check_out
    (tmp_path / "afile").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere" / "x")
    with pytest.raises(RunError, match=r"^--out \S+/afile/sub/x: \S+/afile is a file, not a directory"):
        check_out(task, tmp_path / "afile" / "sub" / "x")
    with pytest.raises(RunError, match=r"^--out \S+/dangling is a symlink to \S+/nowhere/x, which does not exist"):
        check_out(task, tmp_path / "dangling")


def test_an_empty_out_is_refused_not_taken_as_no_out(capsys):
    import run_tasks
    assert run_tasks.main(["--task", "evaluate", "--out", "", "--set", "model.init=/nonexistent"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: --out is empty (an unset shell variable?): give a directory, or leave --out out")


def test_predict_out_on_a_device_is_refused_not_replaced_by_a_file(tmp_path):
    # predict writes <out>.<pid>.tmp and renames it over --out: as root, /dev/full became a regular file
    from training.rundir import RunError, check_out
    with pytest.raises(RunError, match=r"^--out /dev/full is a character device, not a file: --task predict writes"):
        check_out("predict", "/dev/full")
    os_fifo = tmp_path / "fifo"
    __import__("os").mkfifo(os_fifo)
    with pytest.raises(RunError, match=r"fifo is a named pipe, not a file"):
        check_out("predict", os_fifo)


@pytest.mark.parametrize("content", [b"", b"\xff\xfe\x00garbage", b"[1, 2]", b'{"pid": 5}', None])
def test_a_damaged_run_lock_says_so_instead_of_a_run_of_pid_none(tmp_path, content):
    # before: "is in use by another run (pid None on None, started None: None)"
    from config import load_config
    from training.rundir import RunError, run_lock
    out = tmp_path / "out"
    out.mkdir()
    if content is None:
        (out / "run.lock").mkdir()
    else:
        (out / "run.lock").write_bytes(content)
    cfg = load_config(None, ["task=evaluate", f"out={out}"])
    with pytest.raises(RunError, match=r"its lock file \S+run.lock is not a run's lock .*delete it and start again"):
        with run_lock(cfg, "cmd"):
            pass


def test_an_out_that_cannot_be_created_names_out_and_the_reason(tmp_path):
    from config import load_config
    from training.rundir import RunError, run_lock
    cfg = load_config(None, ["task=evaluate", "out=/proc/x"])
    with pytest.raises(RunError, match=r"^--out /proc/x: cannot create the directory \(No such file or directory\)$"):
        with run_lock(cfg, "cmd"):
            pass


# ============================================================================ model directories
def test_weights_damaged_inside_their_data_are_refused_not_scored(work, tmp_path):
    # flipped bytes inside model.weights.h5 (the campaign: 4 KiB in the middle) loaded without an error, evaluate reported
    # the garbage model's metrics; the directory now records the file's size and sha256
    import json
    import shutil

    from modeling.model_dir import CheckpointError, load_model_dir
    d = tmp_path / "m"
    shutil.copytree(work["model"], d)
    assert json.loads((d / "model.json").read_text())["weights"]["bytes"] == (d / "model.weights.h5").stat().st_size
    load_model_dir(d)
    import h5py
    with h5py.File(d / "model.weights.h5", "r") as f:  # the largest tensor's bytes (not HDF5's own structures)
        found = []
        f.visititems(lambda name, obj: found.append(obj) if isinstance(obj, h5py.Dataset) else None)
        biggest = max(found, key=lambda ds: ds.size)
        start, length = biggest.id.get_offset(), biggest.id.get_storage_size()
    data = bytearray((d / "model.weights.h5").read_bytes())
    data[start:start + length] = bytes(b ^ 0xFF for b in data[start:start + length])
    (d / "model.weights.h5").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"m/model.weights.h5: not the weights this model directory was written "
                                              r"with \(sha256 \w{12}\.\.\., model.json records \w{12}\.\.\.\): damaged"):
        load_model_dir(d)
    meta = json.loads((d / "model.json").read_text())  # a directory written before the record: not checked
    del meta["weights"]
    (d / "model.json").write_text(json.dumps(meta))
    load_model_dir(d)


@pytest.mark.parametrize("edit,message", [
    (lambda meta: [], "model.json: not a textmatch-model model directory"),
    (lambda meta: {**meta, "format_version": 99}, "model.json: format_version 99: this textmatch reads model directories "
                                                  "of format_version <= 1 (written by a newer version?)"),
    (lambda meta: {**meta, "max_seq_len": -3}, 'model.json: "max_seq_len" must be a whole number of tokens >= 5, got -3'),
    (lambda meta: {**meta, "max_seq_len": "16"}, 'model.json: "max_seq_len" must be a whole number of tokens >= 5, got "16"'),
    (lambda meta: {**meta, "tokenizer": None}, 'model.json: "tokenizer" must be an object with "lowercase" true or false'),
    (lambda meta: {**meta, "model": "x"}, 'model.json: "model" must be the model\'s Keras config (an object), got "x"'),
])
def test_a_model_json_with_values_no_reader_can_trust_names_the_file(work, tmp_path, edit, message):
    # before: "[]" -> "'list' object has no attribute 'get'"; format_version 99 read as 1 without a word;
    # max_seq_len -3 -> a TensorFlow graph error
    import json
    import shutil

    from modeling.model_dir import CheckpointError, read_meta
    from runtime.backends import read_kind
    d = tmp_path / "m"
    shutil.copytree(work["model"], d)
    (d / "model.json").write_text(json.dumps(edit(json.loads((d / "model.json").read_text()))))
    for read in (read_meta, read_kind):
        with pytest.raises(CheckpointError) as e:
            read(d)
        assert str(e.value) == f"{d / 'model.json'}: {message.split('model.json: ', 1)[1]}" or message in str(e.value)


# ============================================================================ the Python API
@pytest.mark.parametrize("kwargs,error,message", [
    ({"path": "", }, ValueError, "path: an empty string; give a model or export directory or a checkpoint name"),
    ({"path": "x", "int8": "no"}, TypeError, "int8: expected True, False or None, got 'no'"),
    ({"path": "x", "int8": 1}, TypeError, "int8: expected True, False or None, got 1"),
])
def test_load_checks_int8_and_an_empty_path_before_looking_for_files(kwargs, error, message):
    # int8="no" was taken as true ("onnx/model.int8.onnx: missing"); "" was read as "." (".: not a checkpoint ...")
    import textmatch
    with pytest.raises(error) as e:
        textmatch.load(**kwargs)
    assert str(e.value) == message


# ============================================================================ predict's stdin
@pytest.mark.parametrize("stdin,message", [("a\t\n", "error: <stdin>:1: empty text_b (expected 'text_a<TAB>text_b', "
                                                      "a text on each side of the tab)"),
                                           ("x\ty\n  \tb\n", "error: <stdin>:2: empty text_a (expected "
                                                             "'text_a<TAB>text_b', a text on each side of the tab)")])
def test_predict_stdin_names_the_empty_side(work, capsys, monkeypatch, stdin, message):
    # "a<TAB>" (a line with its tab, one side empty) said only "expected 'text_a<TAB>text_b'"
    import io
    from tests.test_cli import _one_error_line
    from tests.test_hardening import _predict_stdin
    rc, out, err = _predict_stdin(capsys, monkeypatch, work, io.StringIO(stdin))
    assert rc == 1 and _one_error_line(err) == message
