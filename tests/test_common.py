"""The low layer (common/): atomic writes, the content-hash cache, the chief rule, label semantics.
Cheap: plain files and numpy, no model, no TensorFlow in the code under test."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.cache import DiskCache, cache_dir, text_pairs
from common.cluster import chief_from_env, chief_task
from common.files import atomic_path, fresh_dir, replace_dir, write_bytes, write_json, write_text
from common.labels import class_targets, is_number, positive_index

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- files
def test_write_json_writes_the_report_style_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "metrics.json"
    obj = {"accuracy": np.float32(0.5), "name": "café"}
    write_json(target, obj)
    assert target.read_text(encoding="utf-8") == json.dumps(obj, indent=2, ensure_ascii=False, default=float)
    assert '"café"' in target.read_text(encoding="utf-8")  # UTF-8 as it is
    # The trainer's state file: compact, ASCII, no conversions, as json.dumps writes by default.
    write_json(target, {"best": 0.25, "é": [1]}, indent=None, ensure_ascii=True, default=None)
    assert target.read_text() == json.dumps({"best": 0.25, "é": [1]})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_a_written_file_has_the_mode_a_plain_write_gives(tmp_path):
    (tmp_path / "plain").write_text("x")
    write_text(tmp_path / "atomic", "x")
    write_bytes(tmp_path / "atomic_bytes", b"x")
    plain = (tmp_path / "plain").stat().st_mode
    assert (tmp_path / "atomic").stat().st_mode == plain == (tmp_path / "atomic_bytes").stat().st_mode


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_one(tmp_path):
    target = tmp_path / "report.json"
    write_json(target, {"ok": True})
    before = target.read_bytes()
    with pytest.raises(TypeError, match="not 'object'"):
        write_json(target, {"ok": object()})  # fails while serialising (default=float): nothing is opened
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_json(target, {"ok": {1j}}, default=None)
    with pytest.raises(RuntimeError, match="midway"):
        with atomic_path(target) as tmp:  # fails after half a file was written
            tmp.write_bytes(b'{"ok": fal')
            assert tmp.parent == target.parent and tmp.name.startswith(".")
            raise RuntimeError("midway")
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_atomic_path_keeps_the_suffix_for_writers_that_choose_by_it(tmp_path):
    with atomic_path(tmp_path / "a.npy") as tmp:
        np.save(tmp, np.arange(3))  # np.save appends .npy to a name without it
    with atomic_path(tmp_path / "b.npz") as tmp:
        np.savez(tmp, x=np.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "b.npz"]
    assert np.load(tmp_path / "a.npy").tolist() == [0, 1, 2]


def test_replace_dir_puts_the_new_version_in_place_and_keeps_the_old_one_on_failure(tmp_path):
    target = tmp_path / "index"
    staging = fresh_dir(tmp_path / "index.partial")
    (staging / "v").write_text("1")
    replace_dir(staging, target)  # no old version
    assert (target / "v").read_text() == "1" and not staging.exists()
    staging = fresh_dir(tmp_path / "index.partial")
    (staging / "v").write_text("2")
    replace_dir(staging, target)
    assert (target / "v").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]
    with pytest.raises(FileNotFoundError):
        replace_dir(tmp_path / "missing", target)  # the second rename fails: the old version comes back
    assert (target / "v").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["index"]


def test_fresh_dir_empties_an_interrupted_staging_directory(tmp_path):
    (tmp_path / "s" / "deep").mkdir(parents=True)
    (tmp_path / "s" / "deep" / "left").write_text("x")
    assert list(fresh_dir(tmp_path / "s").iterdir()) == []


# ----------------------------------------------------------------------------- cache
def test_cache_dir_is_the_run_directory_unless_a_root_is_given(tmp_path):
    assert cache_dir(None, tmp_path / "run", "tokens") == tmp_path / "run" / ".cache" / "tokens"
    assert cache_dir(str(tmp_path / "shared"), tmp_path / "run", "tokens") == tmp_path / "shared" / "tokens"
    assert cache_dir("~/c", "run", "teacher_logits") == Path.home() / "c" / "teacher_logits"


def test_cache_file_name_is_the_sha256_of_the_parts_in_order(tmp_path):
    store = DiskCache(tmp_path)
    path = store.path(".npz", b"vocab\n", "2|True|16", text_pairs(["a", "b"], ["x", "y"]))
    by_hand = hashlib.sha256(b"vocab\n" b"2|True|16" b"a\x1fx\x1e" b"b\x1fy\x1e").hexdigest()[:24]
    assert path == tmp_path / f"{by_hand}.npz"
    assert list(text_pairs(["a"])) == [b"a\x1fNone\x1e"]  # single texts: the b side is None
    assert store.path(".npz", b"vocab\n", "2|True|16", text_pairs(["a", "b"], ["x", "z"])) != path


def test_cache_misses_then_hits_and_a_changed_content_is_a_new_file(tmp_path):
    store = DiskCache(tmp_path / "c")  # created by the first write
    logits = np.array([[0.25, -1.5]], np.float32)
    one = store.path(".npy", b"weights", text_pairs(["q"], ["d"]))
    assert store.get(one) is None
    store.put(one, logits)
    hit = store.get(one)
    assert hit.dtype == np.float32 and hit.tolist() == logits.tolist()
    two = store.path(".npy", b"weights", text_pairs(["q!"], ["d"]))
    assert two != one and store.get(two) is None
    ragged = {"input_ids.flat": np.array([1, 2, 3], np.int32), "input_ids.len": np.array([1, 2], np.int64)}
    three = store.put(store.path(".npz", b"v"), ragged)
    got = store.get(three)
    assert set(got) == set(ragged) and all(np.array_equal(got[k], ragged[k]) for k in ragged)
    assert sorted(p.suffix for p in (tmp_path / "c").iterdir()) == [".npy", ".npz"]  # no temporary file left


# ----------------------------------------------------------------------------- cluster
# (task type, task id, cluster) -> chief, worked out from TensorFlow's rule by hand.
WORKERS = {"worker": ["a:1", "b:1"]}
WITH_CHIEF = {"chief": ["c:1"], "worker": ["a:1", "b:1"]}
CHIEF_TABLE = [
    (None, None, {}, True),  # no cluster: a process is its own chief
    ("worker", 0, WORKERS, True),  # no chief task: worker 0
    ("worker", 1, WORKERS, False),
    ("chief", 0, WITH_CHIEF, True),
    ("worker", 0, WITH_CHIEF, False),  # a chief task exists: worker 0 is a plain worker
    ("evaluator", 0, WORKERS, False),
    ("ps", 0, WORKERS, False),
]


@pytest.mark.parametrize("task_type,task_id,cluster,chief", CHIEF_TABLE)
def test_chief_rule(task_type, task_id, cluster, chief):
    assert chief_task(task_type, task_id, cluster) is chief


@pytest.mark.parametrize("task_type,task_id,cluster,chief", [c for c in CHIEF_TABLE if c[0] is not None])
def test_chief_from_tf_config_applies_the_same_rule(task_type, task_id, cluster, chief):
    env = {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": task_type, "index": task_id}})}
    assert chief_from_env("multiworker", env) is chief
    assert chief_from_env("auto", env) is True  # TF_CONFIG counts under train.strategy=multiworker only


def test_chief_from_env_without_tf_config_or_index():
    assert chief_from_env("multiworker", {}) is True
    env = {"TF_CONFIG": json.dumps({"cluster": WORKERS, "task": {"type": "worker"}})}  # index defaults to 0
    assert chief_from_env("multiworker", env) is True


# ----------------------------------------------------------------------------- labels
@pytest.mark.parametrize("names,index", [
    (["0", "1"], 1), (["1", "0"], 0), (["no", "yes"], 1), (["True", "False"], 0), (["-1", "1"], 1),
    (["not_paraphrase", "paraphrase"], 1), (["entailment", "not_entailment"], 0),
    (["ENTAILMENT", "NEUTRAL", "CONTRADICTION"], 0), (["different", "similar"], 1), (["b", "a"], 1),
    (["a", "b", "c"], 2),  # no positive name: the last class
])
def test_positive_index(names, index):
    assert positive_index(names) == index


def test_class_targets_worked_by_hand():
    assert class_targets(["0", "1"]) == ([0.0, 1.0], False)  # two classes: never a scale
    assert class_targets(["no", "yes"]) == ([0.0, 1.0], False)
    assert class_targets(["ENTAILMENT", "NEUTRAL", "CONTRADICTION"]) == ([1.0, 0.0, 0.0], False)
    targets, graded = class_targets(["0", "1", "2", "3", "4", "5"])
    assert graded and targets == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    targets, graded = class_targets(["-1", "0", "1"])
    assert graded and targets == pytest.approx([0.0, 0.5, 1.0])
    assert class_targets(["nan", "1", "2"]) == ([0.0, 1.0, 0.0], False)  # not a scale of finite numbers


@pytest.mark.parametrize("value,number", [("2", True), ("-1", True), ("0.5", True), ("1e3", True),
                                          ("nan", False), ("inf", False), ("yes", False), ("", False)])
def test_is_number(value, number):
    assert is_number(value) is number


# ----------------------------------------------------------------------------- the layer itself
def test_common_imports_neither_tensorflow_nor_keras():
    """The TF-free serving runtime imports common: it must stay free of TensorFlow."""
    code = ("import sys, common.files, common.cache, common.cluster, common.labels; "
            "heavy = {'tensorflow', 'keras', 'torch'} & {m.partition('.')[0] for m in sys.modules}; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
