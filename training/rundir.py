"""Output directories: which task may write where, and when a training run may resume in one.

Standard library and yaml only: run_tasks.py runs `preflight` before it imports a task, so a refused
`--out` costs no TensorFlow start-up. The checks read; nothing is written before they pass.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import socket
import stat
import time
from datetime import datetime
from pathlib import Path

from common.cluster import chief_from_env
from common.files import write_json
from config import ConfigError, config_to_dict, load_config, save_config
from config.schema import TRAINING_TASKS
from data.readers import DataError

log = logging.getLogger(__name__)


class RunError(RuntimeError):
    """The run cannot start (its output directory holds a finished run, another kind of output, ...)."""


# ----------------------------------------------------------------------------- what a directory holds
# Told by a file only that kind of output writes; first match wins (an export also has model.json,
# a finished training run also metrics.json).
_MARKERS = (("export", "parity.json"), ("export", "saved_model"), ("index", "index.json"),
            ("training run", "config.yaml"), ("model directory", "model.json"), ("embeddings", "embeddings.json"),
            ("virt-plot", "virt_attention.json"), ("evaluation", "metrics.json"))
_WRITES = {**dict.fromkeys(TRAINING_TASKS, "training run"), "evaluate": "evaluation", "export": "export",
           "index": "index", "embed": "embeddings", "virt-plot": "virt-plot"}


def holds(path):
    """`(kind, marker file)` of the output in directory `path`, or None."""
    return next(((kind, m) for kind, m in _MARKERS if (Path(path) / m).exists()), None)


# Written and replaced as a whole (a model directory is renamed into place, an index rebuilt, an export
# read file by file): nothing another task writes may go inside one.
_WHOLE = ("model directory", "export", "index")


def check_out(task, out, inputs=()):
    """Refuse an `--out` where `task` would destroy something: the task's own `inputs` (`[(key, path,
    check)]`, run_tasks.task_inputs), anything inside a model, export or index directory, a file another
    task wrote (predict's --out R/metrics.json), another kind of run's results (evaluate over a training
    run's metrics.json, export over a model directory's model.json). `index` replaces its whole directory,
    so it refuses any directory that is not empty and not an index."""
    if out is None:
        return
    out = Path(out)
    if out.is_symlink() and not out.exists():  # mkdir said "[Errno 17] File exists"
        raise RunError(f"--out {out} is a symlink to {os.readlink(out)}, which does not exist: choose another --out")
    above = next((a for a in out.parents if a.exists() or a.is_symlink()), None)
    if above is not None and not above.is_dir():  # mkdir said "[Errno 20] Not a directory: '<out>'"
        raise RunError(f"--out {out}: {above} is a file, not a directory: choose another --out")
    if task not in _WRITES:  # predict, search: a file
        if out.exists() and not out.is_dir() and not out.is_file():  # /dev/full was replaced by a file
            raise RunError(f"--out {out} is a {_kind(out)}, not a file: --task {task} writes a new file there "
                           f"(to write to stdout, leave --out out)")
        if out.is_dir():
            raise RunError(f"{out} is a directory; --task {task} writes a file: give a file name as --out")
        _check_not_an_input(task, out, inputs)
        _check_not_inside_a_whole(out)
        if out.exists() and (found := holds(out.parent)):
            raise RunError(f"{out} belongs to {_a(found[0])} ({out.parent / found[1]}): --task {task} would "
                           f"overwrite it; choose another --out")
        return
    if out.is_dir():
        found = holds(out)
        if found and found[0] != _WRITES[task]:
            raise RunError(f"{out} holds {_a(found[0])} ({found[1]}) that --task {task} would overwrite or mix "
                           f"with its own outputs; choose another --out, e.g. {out / task}")
        if task == "index" and not found and any(p.name != LOCK for p in out.iterdir()):
            raise RunError(f"{out} is not empty and not an index; --task index replaces the whole directory: "
                           f"choose another --out")
    elif out.exists():
        raise RunError(f"{out} is a file; --task {task} writes a directory: choose another --out")
    _check_not_an_input(task, out, inputs)
    _check_not_inside_a_whole(out)


def _kind(path):
    mode = path.stat().st_mode
    return ("character device" if stat.S_ISCHR(mode) else "block device" if stat.S_ISBLK(mode)
            else "named pipe" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else "special file")


def _check_not_inside_a_whole(out):
    inside = next(((a, found) for a in out.resolve().parents if (found := holds(a)) and found[0] in _WHOLE), None)
    if inside:
        raise RunError(f"{out} is inside {_a(inside[1][0])} ({inside[0]}, {inside[1][1]}), which is written and "
                       f"replaced as a whole: choose an --out outside it")


def _check_not_an_input(task, out, inputs):
    """`out` is none of the paths `task` reads and (index, export: they replace what is in their directory)
    holds none. Inside an input directory is fine unless it is written whole (_check_not_inside_a_whole)."""
    target = out.resolve()
    for key, value, _ in inputs:
        if value in _NOT_PATHS or not Path(value).expanduser().exists():
            continue
        path = Path(value).expanduser().resolve()
        where = "is" if path == target else "holds" if task in ("index", "export") and target in path.parents else None
        if where:
            raise RunError(f"--out {out} {where} {key} ({value}), an input of --task {task}: writing there would "
                           f"destroy it; choose another --out")


def _a(kind):
    return ("an " if kind[0] in "aeiou" else "a ") + kind


# ----------------------------------------------------------------------------- resume
IGNORED = ("out", "train.verbose", "train.cache_dir")  # keys that change nothing a run computes


def input_files(cfg):
    """`key -> path` of the files a run reads whose contents define it (data and vocabulary)."""
    files = {k: v for k in ("data.train", "data.valid", "data.test", "model.vocab")
             if (v := getattr(getattr(cfg, k.split(".")[0]), k.split(".")[1])) is not None}
    files.update({f"data.text[{i}]": p for i, p in enumerate(cfg.data.text)})
    return files


def fingerprints(cfg):
    """`key -> {"path", "bytes", "sha256"}` of `input_files` (None for a path that is not a file yet)."""
    out = {}
    for key, path in input_files(cfg).items():
        try:
            st = os.stat(path)
        except OSError:
            out[key] = None
            continue
        out[key] = {"path": str(path), "bytes": st.st_size, "sha256": file_sha256(path)}
    return out


def file_sha256(path):
    """The sha256 of the file `path` (hex), hashed once while its size and mtime stay the same."""
    st = os.stat(path)
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)  # preflight and prepare_run_dir both check: hash each file once
def _sha256(path, size, mtime_ns):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def differences(cfg, out):
    """How `cfg` (a configuration as given, and its input files) differs from the run in `out`:
    ["key: old -> new", ...]. Given configurations are compared: the effective one in config.yaml
    follows from the given one and the input files."""
    out = Path(out)
    try:
        inputs = json.loads((out / "inputs.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # a run from before inputs.json: the paths alone were compared
        inputs = None
    given = inputs.get("config") if isinstance(inputs, dict) else None
    try:  # runs from before inputs.json recorded the given configuration wrote it as config.yaml
        saved = _flat(config_to_dict(load_config(None, base=given) if given is not None
                                     else load_config(out / "config.yaml")))
    except ConfigError as e:
        return [f"its config.yaml cannot be read ({e})"]
    now = _flat(config_to_dict(cfg))
    diffs = [f"{k}: {_show(saved.get(k))} -> {_show(now.get(k))}" for k in now | saved
             if k not in IGNORED and saved.get(k) != now.get(k)]
    if inputs is None:
        log.warning("%s has no inputs.json: cannot tell whether its data files changed", out)
        return diffs
    files = inputs.get("files", inputs) if given is not None else inputs
    current = fingerprints(cfg)
    for key in sorted(current.keys() | files.keys()):
        old, new = files.get(key), current.get(key)
        if old != new and not any(d.startswith(f"{key}: ") for d in diffs):
            diffs.append(f"{key}: same path, other contents" if old and new else f"{key}: {_show(old and old['path'])}"
                         f" -> {_show(new and new['path'])}")
    return diffs


def finished(out):
    """A training run in `out` wrote its results (metrics.json is written last, then backup/ removed)."""
    return (Path(out) / "metrics.json").exists() and not (Path(out) / "backup").exists()


def check_resume(cfg, out):
    """True when a training run resumes the interrupted one in `out` (it has a checkpoint). That run must
    have had the same resolved configuration and input files, else RunError names the keys that differ."""
    out = Path(out)
    if not (out / "backup" / "checkpoint").is_file():
        return False  # nothing to resume: a fresh run
    diffs = differences(cfg, out)
    if diffs:
        raise RunError(f"{out} holds an interrupted run with other settings ({'; '.join(diffs)}): rerun with its "
                       f"settings ({out / 'config.yaml'}) to resume it, or start fresh with another --out "
                       f"(or after deleting {out / 'backup'})")
    return True


def start_run(cfg, out, given=None):
    """Check, then record a run in `out` (kept as it is on resume): `cfg`, its effective configuration,
    as config.yaml; the configuration as `given` (default: `cfg`) and its input files in inputs.json,
    which a resumed run is compared with."""
    out = Path(out)
    given = given or cfg
    if check_resume(given, out):
        return
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    write_json(out / "inputs.json", {"config": config_to_dict(given), "files": fingerprints(given)},
               ensure_ascii=True, default=None)


# ----------------------------------------------------------------------------- inputs
# How a path a task reads is checked -> (the test, the message of the reader or loader that fails later).
_CHECKS = {
    "file": (lambda p: p.exists() or p.is_symlink(), "{}: file not found"),  # data.readers (a symlink loop: its own error)
    "text": (Path.is_file, "{}: not found"),  # pretrain.task (data.text)
    "vocab": (Path.is_file, "{}: vocabulary file not found"),  # modeling.tokenization
    "checkpoint": (Path.exists, "{}: checkpoint directory not found"),  # modeling.pretrained.resolve
    "model_dir": (lambda p: (p / "model.json").is_file(), "{}: not a model directory (no model.json)"),  # read_meta
    "export_model": (Path.is_dir, "{}: no such model directory"),  # export.task
    "dir": (Path.is_dir, "{}: no such directory"),  # runtime.backends.open_model: a model or export directory
    "index": (lambda p: (p / "index.json").is_file(),
              "{}: not an index directory (no index.json; build one with --task index)"),  # search.index
}
_NOT_PATHS = (None, "-", "auto", "minilm", "virt")  # stdin, "train one", the embedded model, the index's model


def _hub_id(value):
    """An `owner/name` that modeling.pretrained.resolve looks up on the hub when no such path exists."""
    return str(value).count("/") == 1 and not str(value).startswith((".", "/"))


def check_inputs(inputs):
    """Raise the error the task would raise later for the first missing path of `inputs` (`[(key,
    path, check)]`, a check named in `_CHECKS`: run_tasks.task_inputs): a wrong path costs no
    TensorFlow start-up and leaves no run directory behind. Only what is cheap to tell is checked
    (existence, the marker file of a directory), not the contents."""
    for key, value, check in inputs:
        if value in _NOT_PATHS or (check == "checkpoint" and _hub_id(value) and not Path(value).exists()):
            continue
        test, message = _CHECKS[check]
        if not test(Path(value).expanduser()):
            shown = value if check in ("text", "vocab", "checkpoint") else Path(value)  # as the task shows it
            raise (DataError if check in ("file", "text") else RunError)(message.format(shown))


def preflight(cfg, inputs=()):
    """The cheap checks of a `run_tasks.py` run, before the task (and TensorFlow) is imported: the
    output directory, then the input paths `inputs` (see check_inputs). They only read: nothing is
    written before they pass."""
    check_out(cfg.task, cfg.out, inputs)
    check_inputs(inputs)
    if cfg.task in TRAINING_TASKS and cfg.out and chief_from_env(cfg.train.strategy):
        check_resume(cfg, cfg.out)


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _show(value):
    return "null" if value is None else repr(value) if isinstance(value, str) else str(value)


# ----------------------------------------------------------------------------- the run lock
LOCK = "run.lock"  # in the output directory while a run writes it: {"pid", "host", "started", "command"}


@contextlib.contextmanager
def run_lock(cfg, command):
    """One run at a time in a directory `--out`: two runs writing one directory mix their files. The lock
    file is created atomically (O_CREAT | O_EXCL) and removed when the block ends, however it ends; a
    directory created for it alone is removed again. Only the chief of a multi-worker run takes it (the
    other workers write nothing there); the teacher/baseline sub-runs run inside the parent's block."""
    if cfg.task not in _WRITES or not cfg.out or not chief_from_env(cfg.train.strategy):
        yield
        return
    out = Path(cfg.out)
    created = [d for d in (out, *out.parents) if not d.exists()]  # innermost first
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # was the bare "[Errno 2] No such file or directory: '/proc/x'"
        raise RunError(f"--out {out}: cannot create the directory ({e.strerror})") from None
    lock = out / LOCK
    mine = False
    try:
        mine = _take(lock, command)
        yield
    finally:
        if mine and _holder(lock) == _me():
            lock.unlink(missing_ok=True)
        for d in created:  # a refused or failed run leaves no empty directory behind
            try:
                d.rmdir()
            except OSError:  # not empty (or gone): stop at the first kept one
                break


def _me():
    return os.getpid(), socket.gethostname()


def _holder(lock):
    """`(pid, host)` of the lock file `lock`, or None when it is gone or unreadable."""
    try:
        held = json.loads(lock.read_text(encoding="utf-8"))
        return held["pid"], held["host"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError, TypeError):
        return True  # another user's process, or a pid this host cannot check: assume it runs
    return True


def _read_lock(lock):
    """The lock file's record (a dict with pid and host), or None when it is unreadable or not one."""
    try:
        held = json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return held if isinstance(held, dict) and "pid" in held and "host" in held else None


def _take(lock, command):
    """Create `lock` for this process: True; False when this process holds it already (re-entrant).
    A lock of a dead process on this host is taken over; any other is refused naming its holder."""
    pid, host = _me()
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = _read_lock(lock)
            if held is None:  # being written this instant, or damaged
                time.sleep(0.2)
                held = _read_lock(lock)
            if held is None:  # "in use by another run (pid None on None, started None: None)" said nothing
                raise RunError(f"{lock.parent}: its lock file {lock} is not a run's lock (not a JSON object with "
                               f"pid and host); if no run is writing there, delete it and start again") from None
            who = (f"pid {held.get('pid')} on {held.get('host')}, started {held.get('started')}: "
                   f"{held.get('command')}")
            if held.get("host") == host and held.get("pid") == pid:
                return False
            if held.get("host") == host and isinstance(held.get("pid"), int) and not _alive(held["pid"]):
                log.warning("%s: taking over the lock of a run that is no longer running (%s)", lock, who)
                lock.unlink(missing_ok=True)
                continue
            if held.get("host") not in (None, host):
                raise RunError(f"{lock.parent} is in use by a run on another host ({who}); if that run has ended, "
                               f"delete {lock} and start again") from None
            raise RunError(f"{lock.parent} is in use by another run ({who}); wait for it to end or choose "
                           f"another --out (lock file {lock})") from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"pid": pid, "host": host, "started": datetime.now().isoformat(timespec="seconds"),
                       "command": command}, f)
        return True
    raise RunError(f"{lock.parent}: could not take its lock {lock}")
