"""The one atomic write: a file or directory is written under a temporary name beside its target and
renamed over it when complete, so a reader sees the old version or the new one, never half of one.

A write that fails (an exception anywhere, a value that cannot be serialised) leaves the old file in
place and no temporary file behind. The temporary file is opened like `Path.write_text` opens one
(mode 0o666 less the umask, not mkstemp's 0o600), so the result has the mode a plain write gives.
Nothing is fsynced: none of the project's writes were (a crash can lose the new version, never
leave a torn one in place of the old, on file systems that keep rename ordered with the data).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path` to write to; on success it replaces `path` (`os.replace`),
    on an exception it is removed and `path` is left as it was.

    The temporary name is hidden (a leading dot: TF Serving and `ls` pass over it), unique to the
    process and call (workers sharing a directory never write one file together), and keeps the
    suffix, for writers that choose the format by it (`np.save`, `np.savez`)."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path, data):
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path, text, encoding="utf-8"):
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


def write_json(path, obj, *, indent=2, ensure_ascii=False, default=float, **dumps):
    """Write `obj` as JSON to `path` atomically: by default the project's report style (indented,
    UTF-8 as it is, numpy scalars as floats); other `json.dumps` arguments pass through. The text is
    made before anything is opened, so an object that cannot be serialised writes nothing."""
    return write_text(path, json.dumps(obj, indent=indent, ensure_ascii=ensure_ascii, default=default, **dumps))


def fresh_dir(path):
    """`path` as a new empty directory (whatever was there, e.g. an interrupted run's staging, removed)."""
    path = Path(path)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def replace_dir(staging, target):
    """Put the complete directory `staging` in place of `target` (which may not exist).

    The old `target` is moved aside to `<target>.old` and removed only once the new one is in place:
    `target` is missing for an instant only (between two renames), and if the second rename fails the
    old one is moved back, so a failure never leaves nothing where a version was."""
    staging, target = Path(staging), Path(target)
    if not target.exists():
        os.rename(staging, target)
        return target
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    os.rename(target, old)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old)
    return target
