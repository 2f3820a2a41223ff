"""The content-hash disk cache: arrays derived from a run's inputs (token ids, teacher logits), kept in
files named by the sha256 of everything that decides their content, so a changed input is a new file
and a stale one is never read.

Where: `cache_dir(train.cache_dir, run_dir, what)`. By default inside the run directory
(`<out>/.cache/<what>`: a resumed run reuses it, another run never sees it); `train.cache_dir` names a
directory that runs share instead (absolute, or relative to the working directory like every path key).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from common.files import atomic_path

KEY_CHARS = 24  # hex digits of the sha256 in a file name: 96 bits, no collision in any real cache


def cache_dir(root, run_dir, what):
    """The directory of the cache of `what` (tokens, teacher_logits): under `root` (train.cache_dir)
    when it is set, else under `<run_dir>/.cache`."""
    return (Path(root).expanduser() if root else Path(run_dir) / ".cache") / what


def text_pairs(texts_a, texts_b=None):
    """The key parts of a pair list, in order: each pair as `a<US>b<RS>` (ASCII unit and record
    separators, which no text field holds); `texts_b` None: single texts (`b` written as None)."""
    for a, b in zip(texts_a, texts_b if texts_b is not None else [None] * len(texts_a)):
        yield f"{a}\x1f{b}\x1e".encode()


class DiskCache:
    """Arrays in directory `root`, each in the file `<key><suffix>`: `.npy` holds one array, `.npz` a
    dict of arrays. The directory is created by the first write; a write is atomic (a worker that reads
    while another writes sees the whole file or none)."""

    def __init__(self, root):
        self.root = Path(root)

    def path(self, suffix, *parts):
        """The file of the content decided by `parts` (bytes, or str as UTF-8; iterables of them are
        taken part by part, in order)."""
        h = hashlib.sha256()
        for part in parts:
            for chunk in (part,) if isinstance(part, (bytes, str)) else part:
                h.update(chunk if isinstance(chunk, bytes) else chunk.encode())
        return self.root / f"{h.hexdigest()[:KEY_CHARS]}{suffix}"

    @staticmethod
    def get(path):
        """The arrays in `path`, or None when it is not cached."""
        path = Path(path)
        if not path.exists():
            return None
        if path.suffix == ".npz":
            with np.load(path) as z:
                return {k: z[k] for k in z.files}
        return np.load(path)

    @staticmethod
    def put(path, value):
        """Keep `value` (an array for `.npy`, a dict of arrays for `.npz`) in `path`."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            if path.suffix == ".npz":
                np.savez(tmp, **value)
            else:
                np.save(tmp, value)
        return path
