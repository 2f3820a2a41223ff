"""On-disk candidate index and cosine recall.

Layout of an index directory (written under `<dir>.partial`, renamed when complete)::

    index.json      kind (sbert | virt), model path and backend, n, dim, max_seq_len, corpus, duplicates dropped
    texts.jsonl     {"id": ..., "text": ...} per candidate, in index order
    vectors.npy     float32 [N, D], L2-normalised recall vectors: sbert embeddings; virt: mean of
                    the last-layer token states (VIRT has no sentence vector; mean pooling is what
                    its ablation head uses)
    states.npy      virt only: float16 [sum of lengths, H], every candidate's last-layer token
                    states back to back (no padding stored)
    offsets.npy     virt only: int64 [N + 1]; candidate i is states[offsets[i]:offsets[i+1]]
                    (its mask is all ones over that length)

Recall is exact inner product on the normalised vectors (= cosine): `faiss.IndexFlatIP`
when faiss is importable, numpy otherwise; both return the same ids in the same order
(ties broken by the lower index).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from common.files import fresh_dir, replace_dir

log = logging.getLogger(__name__)

FORMAT = "textmatch-index"


class SearchError(ValueError):
    """An index that cannot be built or read; the message names the directory or file."""


def normalize(v):
    v = np.asarray(v, np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def recall_vectors(spec, rows):
    """Row outputs of encode_ids -> recall vectors [N, D] (normalised): the sentence embedding,
    or the mean of a late-interaction model's token states (rows hold valid tokens only)."""
    key = spec.encode_output
    if spec.late_interaction:
        return normalize(np.stack([r[key].mean(axis=0) for r in rows]))
    return normalize(np.stack([r[key] for r in rows]))


def index_kinds():
    """The kinds that can build an index: those whose encode_ids encodes one text."""
    from runtime.backends import servable_kinds

    return tuple(servable_kinds(encoders=True))


def build_index(backend, ids, texts, out, batch_size=64, corpus=None):
    """Encode `texts` with `backend` (a kind with encode_ids: sbert, virt) into the index directory `out`."""
    from runtime.batching import run_in_batches
    from runtime.rows import text_rows

    cls = backend.spec
    if not cls.encode_output:
        raise SearchError(f"{backend.path}: a {backend.kind} model cannot build an index "
                          f"({' or '.join(index_kinds())})")
    seen, keep = set(), []
    for i, t in enumerate(texts):
        if t not in seen:
            seen.add(t)
            keep.append(i)
    dropped = len(texts) - len(keep)
    ids, texts = [ids[i] for i in keep], [texts[i] for i in keep]
    out = Path(out)
    tmp = fresh_dir(out.with_name(out.name + ".partial"))
    t0 = time.time()
    rows = run_in_batches(backend, "encode_ids", text_rows(backend, texts), batch_size, progress="index: encoding")
    vectors = recall_vectors(cls, rows)
    np.save(tmp / "vectors.npy", vectors)
    meta = {"format": FORMAT, "kind": backend.kind, "model": str(Path(backend.path).resolve()),
            "backend": backend.runtime, "n": len(texts), "dim": int(vectors.shape[1]),
            "max_seq_len": backend.max_len, "corpus": corpus, "duplicates_dropped": dropped,
            "seconds": round(time.time() - t0, 3)}
    if cls.late_interaction:  # keep the token states: the model's `score` reranks on them
        key = cls.encode_output
        lengths = np.array([len(r[key]) for r in rows], np.int64)
        np.save(tmp / "offsets.npy", np.concatenate([[0], np.cumsum(lengths)]))
        np.save(tmp / "states.npy", np.concatenate([r[key] for r in rows]).astype(np.float16))
        meta["hidden_size"] = int(rows[0][key].shape[1])
    with open(tmp / "texts.jsonl", "w", encoding="utf-8") as f:
        for i, t in zip(ids, texts):
            f.write(json.dumps({"id": i, "text": t}, ensure_ascii=False) + "\n")
    (tmp / "index.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")
    replace_dir(tmp, out)
    return meta


class Index:
    """A loaded index: `ids`, `texts`, `vectors`, `meta`; virt: `states(i)` and `gather_states(idx)`.

    `states_dtype` (virt): how the token states are held in memory. float32 (default): read
    once into one contiguous float32 array, twice the file's size in RAM, so a rerank's gather
    is a plain copy; float16: memory-mapped as stored, half the RAM, but every gather converts
    (numpy's float16 -> float32 conversion: 100 candidates x 128 tokens x 384 took 27.5 ms
    against 8.0 ms for the float32 gather on the shared 2-core machine, see docs/rerank.md).
    """

    def __init__(self, path, states_dtype="float32"):
        if states_dtype not in ("float32", "float16"):
            raise ValueError(f"states_dtype {states_dtype!r}: expected float32 or float16")
        self.path = Path(path)
        meta_file = self.path / "index.json"
        try:
            self.meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except OSError:
            raise SearchError(f"{self.path}: not an index directory (no index.json; build one with --task index)") \
                from None
        except ValueError as e:
            raise SearchError(f"{meta_file}: not valid JSON ({e})") from None
        if self.meta.get("format") != FORMAT:
            raise SearchError(f"{meta_file}: not a {FORMAT} file")
        self.kind = self.meta["kind"]
        # Token states are stored (and rerank=virt possible) for a late-interaction kind, whose
        # index.json alone has hidden_size (every index written so far: virt ones).
        self.has_states = "hidden_size" in self.meta
        try:
            self.vectors = np.load(self.path / "vectors.npy")
            if self.has_states:
                self._states = np.load(self.path / "states.npy", mmap_mode="r")
                if states_dtype == "float32":
                    self._states = _to_float32(self._states)
                self._offsets = np.load(self.path / "offsets.npy")
                self._lengths = np.diff(self._offsets)
            with open(self.path / "texts.jsonl", encoding="utf-8") as f:
                records = [json.loads(line) for line in f]
        except (OSError, ValueError) as e:
            raise SearchError(f"{self.path}: damaged or half-written index ({e})") from None
        self.ids = [r["id"] for r in records]
        self.texts = [r["text"] for r in records]
        if not len(self.ids) == len(self.vectors) == self.meta["n"]:
            raise SearchError(f"{self.path}: {len(self.ids)} texts, {len(self.vectors)} vectors, "
                              f"index.json says {self.meta['n']}")

    def __len__(self):
        return len(self.ids)

    def states(self, i):
        """Candidate i's cached token states [L, H], float32 (a copy)."""
        return np.array(self._states[self._offsets[i]:self._offsets[i + 1]], np.float32)

    def gather_states(self, indices):
        """The cached token states of candidates `indices` as one padded batch, with one
        vectorised gather (no Python loop per candidate): (states [K, L, H] float32, zero past
        each candidate's length; mask [K, L] int32), L = the longest of them."""
        indices = np.asarray(indices, np.int64)
        lengths = self._lengths[indices]
        width = int(lengths.max()) if len(indices) else 0
        steps = np.arange(width)
        mask = steps[None, :] < lengths[:, None]  # [K, L]
        rows = np.where(mask, self._offsets[indices][:, None] + steps[None, :], 0)  # row 0 stands in for padding
        out = np.take(self._states, rows.ravel(), axis=0).reshape(len(indices), width, -1)
        if out.dtype != np.float32:
            out = out.astype(np.float32)
        out[~mask] = 0.0
        return out, mask.astype(np.int32)


def _to_float32(states, chunk=1 << 20):
    """A float16 [N, H] array (memory-mapped) as one contiguous float32 array, converted in chunks."""
    out = np.empty(states.shape, np.float32)
    for s in range(0, len(states), chunk):
        out[s:s + chunk] = states[s:s + chunk]
    return out


def faiss_available():
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


class Recall:
    """Top-k by inner product over normalised vectors. method: auto | faiss | numpy."""

    def __init__(self, vectors, method="auto"):
        if method not in ("auto", "faiss", "numpy"):
            raise ValueError(f"recall method {method!r}: expected auto, faiss or numpy")
        if method == "faiss" and not faiss_available():
            raise SearchError("search.recall=faiss but faiss is not importable (pip install faiss-cpu)")
        self.method = "faiss" if method == "faiss" or (method == "auto" and faiss_available()) else "numpy"
        self.vectors = np.ascontiguousarray(vectors, np.float32)
        if self.method == "faiss":
            import faiss

            self.index = faiss.IndexFlatIP(self.vectors.shape[1])
            self.index.add(self.vectors)

    def search(self, queries, k):
        """(scores [Q, k], indices [Q, k]), best first; k is capped at the index size."""
        q = np.ascontiguousarray(queries, np.float32)
        k = min(int(k), len(self.vectors))
        if self.method == "faiss":
            scores, idx = self.index.search(q, k)
            return scores, idx.astype(np.int64)
        sims = q @ self.vectors.T
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < sims.shape[1] else \
            np.tile(np.arange(sims.shape[1]), (len(q), 1))
        out_s, out_i = np.empty((len(q), k), np.float32), np.empty((len(q), k), np.int64)
        for r in range(len(q)):
            cand = part[r]
            order = np.lexsort((cand, -sims[r, cand]))  # score descending, then lower index
            out_i[r], out_s[r] = cand[order], sims[r, cand[order]]
        return out_s, out_i
