"""Issue 27: run directories, the run lock, config files and what a loader says about a file it cannot use.

Outputs never land on a run's files, inside a model / export / index directory or on the task's own
inputs; one `--out` directory takes one run at a time (a lock file); a model.json, vocab.txt or export
directory that cannot be used is refused naming the file and the key. In-process and cheap: the tiny
model directory of test_reliability.py's `work` fixture, no training.
"""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest

from tests.test_cli import _one_error_line
from tests.test_reliability import _edit_meta, _main, work  # noqa: F401  (work: sample data, a tiny model directory)


# ============================================================================ files a loader cannot use
def _copy(work, name, damage):
    d = work["root"] / "rundirs" / name
    if not d.exists():
        shutil.copytree(work["model"], d)
        damage(d)
    return d


@pytest.mark.parametrize("labels,got", [(None, "null"), (["0"], '["0"]'), ("01", '"01"'), ([0, 1], "[0, 1]")])
def test_model_json_labels_that_do_not_name_the_classes_are_refused_naming_file_and_key(work, capsys, labels, got):
    from modeling.model_dir import CheckpointError, read_meta

    d = _copy(work, f"labels-{got}", lambda d: _edit_meta(d, labels=labels))
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
    d = _copy(work, "export", _export_copy)
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
