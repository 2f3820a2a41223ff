"""Recall + rerank over an index, as a plan (runtime.batching.drive) so the same code runs in
the search task (direct batches) and behind `POST /v1/search` (through the micro-batchers).

    searcher = Searcher(Index(dir), query_backend, reranker=None | "virt" | cross_encoder_backend)
    results = drive(searcher.plan(["how do I reset my password?"], k=10),
                    lambda call: run_in_batches(call.backend, call.fn, call.rows, 64))

Per query: encode it with the index's model (encode_ids), recall the top k candidates by
cosine, then optionally rerank them by the positive-class probability of a cross-encoder on
(query, candidate) or of VIRT's `score` on the query's token states and the candidates'
cached ones. Each result: `{"rank", "id", "text", "cosine"[, "rerank"], "score"}`, best first
(`score` is what the order follows: `rerank` when reranked, else `cosine`).

VIRT's rerank is one `score` call per query (`virt_blocks`): the query's states [1, Tq, H]
against its candidates' cached states, gathered from the index's contiguous array in one
step ([K, Tc, H]); `score` broadcasts the query over the K candidates.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from runtime.batching import Block, Call
from runtime.rows import pair_rows, text_rows
from search.index import Recall, SearchError, recall_vectors

log = logging.getLogger(__name__)

RERANK_BLOCK = 256  # candidates per VIRT score call: bounds the [K, Tq, Tc] score tensors and [K, Tc, H] states


def virt_blocks(index, q_states, q_mask, cand_indices, block=RERANK_BLOCK, broadcast=True):
    """`score` feeds for one query (states [Tq, H], mask [Tq]) against cached candidates:
    one `Block` per `block` candidates, the query not repeated (batch 1, broadcast by `score`),
    or repeated per candidate when `broadcast` is false (see `broadcasts_query`)."""
    x_states, x_mask = np.asarray(q_states, np.float32)[None], np.asarray(q_mask, np.int32)[None]
    out = []
    for s in range(0, len(cand_indices), block):
        y_states, y_mask = index.gather_states(cand_indices[s:s + block])
        xs, xm = (x_states, x_mask) if broadcast else (np.repeat(x_states, len(y_states), 0),
                                                      np.repeat(x_mask, len(y_states), 0))
        out.append(Block(x_states=xs, x_mask=xm, y_states=y_states, y_mask=y_mask))
    return out


def broadcasts_query(backend):
    """Whether `backend`'s score takes one query (batch 1) against K candidates: Keras and the
    SavedModel do; an ONNX `score` does when its x and y batch axes have different names
    (exports since issue 18; onnxruntime plans buffers by those names). An OpenVINO IR does for the
    baseline's head (the default) when a probe, once per backend, runs and agrees with the query
    repeated; never for Eq. 5's adapted head, whose If branch OpenVINO runs but answers wrongly for one
    query against K (tests/test_bench_rerank.py), nor for an IR whose shape inference refuses it (the
    head's broadcast before it became an add, 2026-12-07): the query is then repeated K times."""
    if getattr(backend, "runtime", None) == "openvino":
        if not hasattr(backend, "_broadcasts_query"):
            config = ((getattr(backend, "meta", None) or {}).get("model") or {}).get("config") or {}
            backend._broadcasts_query = not config.get("adapted_interaction", True) and _probe_broadcast(backend)
        return backend._broadcasts_query
    sess = getattr(backend, "sessions", {}).get("score")
    if sess is None:
        return True
    dims = {i.name: i.shape[0] for i in sess.get_inputs()}
    return dims.get("x_states") != dims.get("y_states")


def _probe_broadcast(backend):
    """Does `backend.run("score", ...)` take x of batch 1 against y of batch 2, with the answer of x repeated?
    The lengths differ and y is padded: an IR that mixes up the two length axes (Eq. 5's If branch did)
    answers wrongly only then."""
    if "score" not in getattr(backend, "functions", {}):
        return False
    h = backend.hidden_size
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((1, 3, h)).astype(np.float32), rng.standard_normal((2, 5, h)).astype(np.float32)
    xm, ym = np.ones((1, 3), np.int32), np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], np.int32)
    try:
        one = backend.run("score", {"x_states": x, "x_mask": xm, "y_states": y, "y_mask": ym})["probs"]
    except Exception as e:  # noqa: BLE001  (the runtime's shape-inference error: repeat the query instead)
        log.info("openvino score refuses one query against K candidates (%s): the query is repeated K times",
                 str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__)
        return False
    rep = backend.run("score", {"x_states": np.repeat(x, 2, 0), "x_mask": np.repeat(xm, 2, 0), "y_states": y,
                                "y_mask": ym})["probs"]
    same = np.shape(one) == np.shape(rep) and bool(np.allclose(one, rep, atol=1e-2))  # bf16's noise
    if not same:
        log.info("openvino score of one query against K candidates differs from the query repeated (%s): repeating it",
                 np.abs(np.asarray(one) - np.asarray(rep)).max() if np.shape(one) == np.shape(rep) else np.shape(one))
    return same


def _rerankers():
    """What may rerank, for messages: "a cross_encoder, or virt" (a reranking kind's model, or an
    index's own token states)."""
    from modeling.model_dir import discover_kinds

    return f"a {' or '.join(sorted(k for k, c in discover_kinds().items() if c.reranks))}, or virt"


def positive_class(backend):
    from common.labels import positive_index

    return positive_index(backend.labels) if backend.labels else 1


class Searcher:
    """An index, the backend of the model that built it, and an optional reranker."""

    def __init__(self, index, query_backend, reranker=None, recall="auto"):
        if query_backend.kind != index.kind:
            raise SearchError(f"{index.path}: a {index.kind} index, but the query model is {query_backend.kind}")
        if reranker == "virt" and not index.has_states:
            raise SearchError(f"{index.path}: rerank=virt needs a virt index (this one is {index.kind})")
        if reranker not in (None, "virt") and not reranker.spec.reranks:
            raise SearchError(f"{reranker.path}: a {reranker.kind} model cannot rerank ({_rerankers()})")
        self.index, self.query_backend, self.reranker = index, query_backend, reranker
        self.recall = Recall(index.vectors, recall)
        self.rerank_backend = query_backend if reranker == "virt" else reranker
        self.broadcast = reranker == "virt" and broadcasts_query(query_backend)

    def plan(self, queries, k, rerank=True):
        """Plan -> one result list per query."""
        qb = self.query_backend
        rows = text_rows(qb, queries)
        encoded = yield Call(qb, "encode_ids", rows)
        scores, idx = self.recall.search(recall_vectors(qb.spec, encoded), k)
        results = [[{"index": int(j), "id": self.index.ids[j], "text": self.index.texts[j], "cosine": float(s)}
                    for s, j in zip(srow, irow)] for srow, irow in zip(scores, idx)]
        if rerank and self.reranker is not None:
            flat = [(q, c) for q, cands in enumerate(results) for c in cands]
            if self.reranker == "virt":
                blocks = [virt_blocks(self.index, encoded[q]["token_states"], rows[q]["attention_mask"],
                                      [c["index"] for c in cands], broadcast=self.broadcast)
                          for q, cands in enumerate(results)]
                probs = yield Call(qb, "score", [b for bs in blocks for b in bs])
                out = [{"probs": p} for o in probs for p in o["probs"]]
            else:
                out = yield Call(self.reranker, "predict_ids",
                                 pair_rows(self.reranker, [queries[q] for q, _ in flat], [c["text"] for _, c in flat]))
            pos = positive_class(self.rerank_backend)
            for (_, c), o in zip(flat, out):
                c["rerank"] = float(o["probs"][pos])
        for cands in results:
            key = "rerank" if cands and "rerank" in cands[0] else "cosine"
            cands.sort(key=lambda c: (-c[key], c["index"]))
            for r, c in enumerate(cands, 1):
                c["rank"], c["score"] = r, c[key]
                del c["index"]
        return results


def open_searcher(index_dir, rerank=None, recall="auto", backend="auto", query_backend=None, threads=None):
    """A Searcher for an index directory: opens the index's model (or reuses `query_backend`
    when it is that model) and the reranker (a model / export dir, or "virt")."""
    from runtime.backends import model_spec, open_model
    from search.index import Index

    index = Index(index_dir)
    if rerank == "virt" and not index.has_states:  # cheap checks before any model is loaded
        raise SearchError(f"{index.path}: rerank=virt needs a virt index (this one is {index.kind})")
    if rerank not in (None, "virt") and not (spec := model_spec(rerank)[1]).reranks:
        raise SearchError(f"{rerank}: a {spec.kind} model cannot rerank ({_rerankers()})")
    model = index.meta["model"]
    if query_backend is None or Path(query_backend.path).resolve() != Path(model).resolve():
        if not Path(model).is_dir():
            raise SearchError(f"{index.path}: its model {model} is gone; rebuild the index")
        runtime = index.meta.get("backend")  # query with the runtime that encoded the corpus
        query_backend = open_model(model, runtime if runtime in ("onnx", "openvino", "tf") else backend, threads=threads)
        query_backend.max_len = int(index.meta["max_seq_len"])
    reranker = rerank
    if rerank not in (None, "virt"):
        reranker = open_model(rerank, backend, threads=threads)
    return Searcher(index, query_backend, reranker, recall)
