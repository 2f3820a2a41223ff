"""A model directory's data contract: the `data.*` keys and files it was trained with.

A training run records it in model.json's "data" block (`data_block`), with the command that made
the run (`recorded_command`). `run_tasks.py` then lets the tasks that read pair files with a trained
model (evaluate, predict, export's data.test, index's pair-file corpus) reuse it: a `data.format`,
`data.text_a`, `data.text_b` or `data.label` the user did not give is taken from the model
(`apply_contract`), and the files' columns are checked against the header lines (`check_pair_columns`),
all before the task (and TensorFlow) is imported. model.json is read here as plain JSON: importing
modeling.model_dir would import Keras.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
from pathlib import Path

from data.readers import FORMATS, DataError, check_columns
from training.rundir import file_sha256

log = logging.getLogger(__name__)

KEYS = ("format", "text_a", "text_b", "label")  # the data.* keys a model directory remembers

_command = None  # the command line of the run_tasks.py run in progress (recorded_command)


@contextlib.contextmanager
def recorded_command(argv):
    """While the block runs, `command()` is `python run_tasks.py <argv>` (what a model card shows)."""
    global _command
    saved, _command = _command, shlex.join(["python", "run_tasks.py", *map(str, argv)])
    try:
        yield
    finally:
        _command = saved


def command():
    """The command line of the run in progress, or None outside run_tasks.py (the Python API, tests)."""
    return _command


def data_block(cfg, splits):
    """model.json's "data" block of a training run on `splits` (training.inputs.Splits): the data.* keys
    it read the files with, its labels in class order, and per split the file (as given), the rows read
    and the file's sha256. None for a run without labels (pretrain)."""
    if not splits.label_names:
        return None
    d = cfg.data
    files = {}
    for split in ("train", "valid", "test"):
        pairs, path = getattr(splits, split), getattr(d, split)
        if pairs is None:
            continue
        # Distinct source lines: swap augmentation repeats every row, a held-out valid is a part of train.
        rows = len(set(pairs.lines))
        files[split] = ({"path": str(path), "rows": rows, "sha256": file_sha256(path)} if path else
                        {"path": None, "rows": rows, "held_out_from": "train", "fraction": d.valid_fraction})
    return {**{k: getattr(d, k) for k in KEYS}, "labels": list(splits.label_names), "files": files}


def read_contract(model_path):
    """The "data" block of `<model_path>/model.json` (a model or an export directory: an export keeps a
    copy), or None when there is none (not a model directory, an older one, a pretrained encoder). A
    block with a value that is not a valid setting is refused naming the file."""
    if model_path is None:
        return None
    meta_file = Path(model_path).expanduser() / "model.json"
    try:
        block = json.loads(meta_file.read_text(encoding="utf-8")).get("data")
    except (OSError, ValueError, AttributeError):  # the task's own loading reports a broken model.json
        return None
    if not isinstance(block, dict):
        return None
    for key in KEYS:
        value = block.get(key)
        if value is not None and (not isinstance(value, str) or (key == "format" and value not in FORMATS)):
            raise DataError(f"{meta_file}: data.{key}={value!r} in its data block is not a valid setting "
                            f"(give data.{key} explicitly, or fix the file)")
    return block


def apply_contract(cfg, model_path, given):
    """Take the data.* keys (KEYS) that are not in `given` (the keys the user set: config.given_keys)
    from the contract of the model directory `model_path`, and log one line naming them.

    Returns `key -> where its value came from` for every KEY, for error messages."""
    meta_file = Path(str(model_path)) / "model.json" if model_path else None
    block = read_contract(model_path) or {}
    origins = {}
    for key in KEYS:
        if f"data.{key}" in given:
            origins[key] = "as given"
        elif block.get(key) is not None:
            setattr(cfg.data, key, block[key])
            origins[key] = f"from {meta_file}"
        else:
            origins[key] = "the default" + (f"; {meta_file} records no data contract"
                                             if meta_file and meta_file.is_file() else "")
    taken = [f"data.{k}={getattr(cfg.data, k)}" for k in KEYS if origins[k].startswith("from ")]
    if taken:
        log.info("taken from the model's data contract (%s): %s", meta_file, ", ".join(taken))
    return origins


def check_pair_columns(cfg, files, origins=None):
    """Check that every pair file of `files` (`[(key, path, labelled)]`) has the columns the data.*
    keys name, from its header line alone; the error names the file, the column, where its name came
    from (`origins`: apply_contract; default: the configuration) and the columns found. A missing
    file is left to check_inputs, stdin ('-') to the task."""
    d = cfg.data
    origins = origins or {}
    for _, path, labelled in files:
        if path is None or path == "-" or not os.path.isfile(path):
            continue
        why = {k: _why(k, d.format, origins.get(k, "the configuration")) for k in ("text_a", "text_b", "label")}
        check_columns(path, d.format, d.text_a, d.text_b, d.label if labelled else None, why)


def _why(key, format, origin):
    if format not in ("auto", "csv", "tsv", "jsonl"):
        return f"fixed by data.format={format}"
    return f"data.{key}, {origin}"
