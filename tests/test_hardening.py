"""Issue 17: bad values, label noise, foreign output directories and resumes that would mix runs
each stop with one line naming the key, file:line or directory -- before anything is written.

Cheap cases run in-process through `run_tasks.main`; the tiny finetune runs follow tests/tiny_runs.py.
"""

from __future__ import annotations

import io
import json
import sys

import pytest

import run_tasks
from config import ConfigError, load_config
from tests.test_cli import _one_error_line
from tests.tiny_runs import make_data, tiny_overrides, write_csv


def _main(capsys, *args):
    capsys.readouterr()
    rc = run_tasks.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


# ============================================================================ 4. ranges in the typed config
@pytest.mark.parametrize("override,message", [
    ("train.epochs=0", "train.epochs: must be >= 1, got 0"),
    ("train.epochs=-1", "train.epochs: must be >= 1, got -1"),
    ("train.batch_size=0", "train.batch_size: must be >= 1, got 0"),
    ("model.dropout=1.5", "model.dropout: must be >= 0 and < 1, got 1.5"),
    ("data.max_rows=-5", "data.max_rows: must be >= 1 (or null), got -5"),
    ("train.learning_rate=-1", "train.learning_rate: must be > 0, got -1.0"),
    ("train.max_seq_len=2", "train.max_seq_len: must be >= 5, got 2"),
    ("serve.port=99999", "serve.port: must be >= 1 and <= 65535, got 99999"),
    ("train.learning_rate=.nan", "train.learning_rate: expected a finite number, got nan"),
])
def test_out_of_range_value_names_the_key_and_the_range(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert str(e.value) == message


def test_every_default_and_task_yaml_is_in_range():
    for path in (run_tasks.ROOT / "config").glob("*.yaml"):
        load_config(path)
    load_config(None, ["data.max_rows=null", "train.clip_norm=null", "train.patience=0", "model.dropout=0"])


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
