"""Rerank benchmark: one query against K candidates whose side was encoded offline.

    python bench/rerank.py [--quick] [--ce DIR] [--sbert DIR] [--virt DIR] [--seconds 3]
                           [--backends keras onnx-int8 openvino] [--no-e2e] [--out bench-results]

A ranking stage scores one query against the K candidates recall gave it. Per query, what
runs online (the candidates' side is cached exactly as `--task index` stores it, built here
with `search.index.build_index` over synthetic texts of the requested token lengths):
- cross_encoder: the encoder on the K joint pairs `[CLS] q [SEP] c [SEP]` (q + c - 1 tokens),
  in batches of 32 (serve.max_batch's default);
- sbert: encode the query, cosine against the K cached, normalised vectors (`vectors.npy`);
- virt: encode the query, gather the K candidates' cached token states from the index's one
  contiguous array, one `score` call (the query broadcast over the K candidates), exactly
  `search.engine.virt_blocks`, which the search task and `POST /v1/search` run.
Query and pairs are tokenised beforehand (the end-to-end rows include tokenising and recall).

Reported per configuration (query tokens, candidate tokens, K): p50/p99 ms per query and
queries/s for each model, VIRT and sbert vs the cross-encoder as ratios of queries/s (the
three models measured in alternating rounds, so a shared machine's load hits all three
alike), in Keras and ONNX int8 (the encoder quantised, VIRT's small head kept in fp32, as
bench/inference.py does); the paper's shape (query 64, candidate 328, batch 28) twice: one
query against K = 28 candidates, and 28 queries with one candidate each (the paper's pairs).
`virt before` is the search path before issue 18 (one row per candidate: per-candidate
float16 reads, padding, the query copied K times, batches of 32, Eq. 5 as four batched
matmuls), measured in the same rounds; the breakdown splits VIRT's online cost into its
parts. End to end: `POST /v1/search` (tokenise, encode, recall over the index, rerank, JSON)
on a local server, one request at a time, Keras backends.

Without model directories: MiniLM-L6 (mean pooling) as cross-encoder, sbert (cosine) and
VIRT student, untrained heads (speed does not depend on training), max length 512.

Library (bench/tradeoff.py imports it; bench/ on sys.path):
    from rerank import rerank_latency
    rerank_latency(model_dir, K=100, query_len=32, cand_len=128, backend="keras", seconds=3.0)
        -> {"p50_ms", "p99_ms", "qps", "calls", ...}
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import ROOT, md_table, save  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if str(ROOT) not in sys.path[:2]:
    sys.path.insert(0, str(ROOT))
from runtime.backends import Backend, Function  # noqa: E402  (numpy only; TensorFlow loads later)

KINDS = ("cross_encoder", "sbert", "virt")
SHORT = {"cross_encoder": "ce", "sbert": "sbert", "virt": "virt"}
BACKENDS = ("keras", "onnx", "onnx-int8", "openvino")
CE_BATCH = 32  # pairs per cross-encoder call (serve.max_batch's default)
GRID = [(32, 128, 10), (32, 128, 100), (32, 128, 1000), (16, 64, 100), (64, 328, 100), (64, 328, 28)]
PAPER = (64, 328, 1, 28)  # 28 queries with one candidate each: the paper's batch of 28 pairs
QUICK_GRID = [(32, 128, 10), (32, 128, 100)]


# ----------------------------------------------------------------------------- synthetic texts
def texts_of_length(tokenizer, n, length, seed=0):
    """`n` distinct texts of exactly `length` tokens each (with [CLS] and [SEP]): random vocabulary
    words that the tokenizer keeps as one token."""
    words = [w for w in Path(tokenizer.vocab_file).read_text(encoding="utf-8").splitlines()
             if w.isascii() and w.isalpha() and len(w) > 1 and (w.islower() or not tokenizer.lowercase)]
    single = [w for w, ids in zip(words, tokenizer.encode_texts(words, 8)) if len(ids) == 3]
    if len(single) < 2:
        raise ValueError(f"{tokenizer.vocab_file}: too few one-token words to make synthetic texts")
    rng = np.random.default_rng(seed)
    out, seen = [], set()
    while len(out) < n:
        t = " ".join(rng.choice(single, max(length - 2, 1)))
        if t not in seen:
            seen.add(t)
            out.append(t)
    got = {len(ids) for ids in tokenizer.encode_texts(out, length + 8)}
    if got != {length}:
        raise ValueError(f"synthetic texts of {length} tokens came out as {sorted(got)}")
    return out


# ----------------------------------------------------------------------------- backends
class OnnxFilesBackend(Backend):
    """A runtime.backends.Backend over ONNX files named per function ({"encode_ids": path, ...}),
    e.g. an int8 `encode_ids` (the export task's OnnxBackend quantises `predict_ids` only), or over
    OpenVINO IR files (.xml: runtime/openvino.py's Runner, at the precision the CPU picks)."""

    runtime = "onnx"

    def __init__(self, loaded, files, max_len, threads=None):
        from runtime.onnx import session
        from runtime.openvino import Runner, precision

        from modeling.serving_spec import spec_of

        spec = spec_of(loaded.kind_class, loaded.meta["model"]["config"])
        super().__init__(loaded.path, loaded.meta, spec, loaded.tokenizer, "bench", 1, max_len)
        if all(str(path).endswith(".xml") for path in files.values()):
            self.runtime, self.precision = "openvino", precision("auto")
            self.sessions = {fn: Runner(path, threads, self.precision) for fn, path in files.items()}
            self.names = {fn: r.outputs for fn, r in self.sessions.items()}
        else:
            self.sessions = {fn: session(path, threads) for fn, path in files.items()}
            self.names = {fn: [o.name for o in s.get_outputs()] for fn, s in self.sessions.items()}
        self.functions = {fn: Function(self.functions[fn].inputs, tuple(self.names[fn]),
                                       self.functions[fn].seq_outputs) for fn in self.sessions}

    def run(self, fn, feeds):
        feeds = {k: feeds[k] for k in self.functions[fn].inputs}
        if self.runtime == "openvino":
            return self.sessions[fn](feeds)
        return dict(zip(self.names[fn], self.sessions[fn].run(self.names[fn], feeds)))


def export_onnx(model_dir, out_dir, int8=True):
    """The online functions of a model directory as ONNX (export/onnx.py), int8 copies of the
    encoder's function, and their OpenVINO IR (export/openvino.py): writes `<out_dir>/files.json` =
    {"onnx": {fn: path}, "onnx-int8": {...}, "openvino": {...}}."""
    from export.onnx import convert_function, quantize_int8
    from export.openvino import convert
    from modeling.model_dir import load_model_dir

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    loaded = load_model_dir(model_dir)
    fns = loaded.model.serving_functions()
    online = {"cross_encoder": ["predict_ids"], "sbert": ["encode_ids"], "virt": ["encode_ids", "score"]}[loaded.kind]
    files = {"onnx": {fn: str(convert_function(fns[fn], out_dir / f"{fn}.onnx")) for fn in online}}
    if int8:  # the encoder carries the weights: quantise it, keep VIRT's small head in fp32
        files["onnx-int8"] = dict(files["onnx"], **{online[0]: str(quantize_int8(
            files["onnx"][online[0]], out_dir / f"{online[0]}.int8.onnx"))})
    files["openvino"] = {fn: str(convert(path, out_dir / f"{fn}.xml")) for fn, path in files["onnx"].items()}
    (out_dir / "files.json").write_text(json.dumps(files, indent=2))
    return files


def open_backend(model_dir, backend="keras", onnx=None, max_len=512, loaded=None):
    """A Backend for `model_dir`: Keras, or the ONNX files of `onnx` (export_onnx's dict or its dir)."""
    from modeling.model_dir import load_model_dir
    from runtime.backends import KerasBackend

    loaded = loaded or load_model_dir(model_dir)
    if backend == "keras":
        b = KerasBackend(loaded, "bench", max_len)
    elif backend in ("onnx", "onnx-int8", "openvino"):
        if onnx is None:
            raise ValueError(f"backend {backend}: pass onnx= (export_onnx(model_dir, dir) or that dir)")
        files = json.loads((Path(onnx) / "files.json").read_text()) if not isinstance(onnx, dict) else onnx
        if backend not in files:
            raise ValueError(f"{onnx}: no {backend} files (export_onnx(..., int8=True) writes them)")
        b = OnnxFilesBackend(loaded, files[backend], max_len)
    else:
        raise ValueError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    b.max_len = int(max_len)
    return b


def legacy_backend(loaded, max_len=512):
    """Keras backend whose `score` is the head as it was before issue 18: Eq. 5 as
    pool(_masked_attend(...)) (four [B, Tx, Ty]-sized batched matmuls), no broadcasting."""
    import tensorflow as tf

    from modeling.encoder import pool
    from runtime.backends import KerasBackend
    from virt.model import _masked_attend

    b = KerasBackend(loaded, "bench-before", max_len)
    m, hidden = loaded.model, loaded.model.encoder.hidden_size
    spec = [tf.TensorSpec([None, None, hidden], tf.float32), tf.TensorSpec([None, None], tf.int32)] * 2

    @tf.function(autograph=False, input_signature=spec)
    def score(x_states, x_mask, y_states, y_mask):
        if m.adapted_interaction:
            u = pool(_masked_attend(x_states, y_states, y_mask), x_mask, "mean")
            v = pool(_masked_attend(y_states, x_states, x_mask), y_mask, "mean")
        else:
            u, v = pool(x_states, x_mask, "mean"), pool(y_states, y_mask, "mean")
        if m.fusion:
            r = tf.concat([u, v, u - v, tf.maximum(u, v)], axis=-1)
            features = m.hidden(m.fuse(r) + r)
        else:
            features = tf.concat([u, v, tf.abs(u - v)], axis=-1)
        return {"probs": tf.nn.softmax(tf.cast(m.classifier(features), tf.float32), axis=-1)}

    b.callables = dict(b.callables, score=score)
    b.max_len = int(max_len)
    return b


# ----------------------------------------------------------------------------- the ranking stage
class Candidates:
    """N synthetic candidates of `cand_len` tokens and, for sbert / virt, their index directory
    (search.index.build_index with the model's own backend: the cache as `--task index` writes it)."""

    def __init__(self, backend, n, cand_len, work, seed=1):
        from search.index import Index, build_index

        self.texts = texts_of_length(backend.tokenizer, n, cand_len, seed)
        self.index = None
        if backend.spec.encode_output:  # a bi-encoder: the candidates' side is cached
            out = Path(work) / f"index-{backend.kind}-{backend.runtime}-{cand_len}-{n}-{os.getpid()}-{id(self)}"
            build_index(backend, [str(i) for i in range(n)], self.texts, out, batch_size=32)
            self.index = Index(out)  # as search / serve hold it: float32 states in one array
            self.index16 = Index(out, states_dtype="float16")  # as stored (and held before issue 18)
            self.path = out


def ranker(backend, cands, queries, K, path="block", batch_size=CE_BATCH):
    """step(i) -> scores of query set i against its K candidates. `queries`: list of query
    groups (lists of texts: one query, or several scored in one call, the paper's pairs);
    candidates are taken from `cands` in turn. path: "block" (the search path) or "rows"
    (VIRT: the search path before issue 18, one padded row per candidate)."""
    from search.engine import broadcasts_query, virt_blocks
    from search.index import normalize
    from runtime.rows import pad_rows
    from runtime.batching import Block, run_in_batches, run_rows
    from runtime.rows import pair_rows, text_rows

    n = len(cands.texts)
    cls = backend.spec
    broadcast = cls.late_interaction and broadcasts_query(backend)
    plans = []
    for g, group in enumerate(queries):
        picks = [[(g * K * len(group) + j * K + k) % n for k in range(K)] for j in range(len(group))]
        if cls.encode_output is None:  # reads query and candidate together
            plans.append(pair_rows(backend, [q for q, p in zip(group, picks) for _ in p],
                                   [cands.texts[i] for p in picks for i in p]))
        else:
            plans.append((text_rows(backend, group), picks))

    def step(i):
        plan = plans[i % len(plans)]
        if cls.encode_output is None:
            return np.array([o["probs"][1] for o in run_in_batches(backend, "predict_ids", plan, batch_size)])
        rows, picks = plan
        enc = run_rows(backend, "encode_ids", rows)  # one call for the group's queries
        if not cls.late_interaction:  # one vector per text: cosine against the cached vectors
            u = normalize(np.stack([e[cls.encode_output] for e in enc]))
            return np.concatenate([cands.index.vectors[p] @ u[j] for j, p in enumerate(picks)])
        if path == "rows":
            call_rows = [r for j, p in enumerate(picks)
                         for r in legacy_rows(enc[j]["token_states"], rows[j]["attention_mask"], cands.index16, p)]
            return np.array([o["probs"][1] for o in run_in_batches(backend, "score", call_rows, batch_size)])
        if len(rows) == 1:  # one query: broadcast over its K candidates (the search path)
            blocks = virt_blocks(cands.index, enc[0]["token_states"], rows[0]["attention_mask"], picks[0],
                                 broadcast=broadcast)
        else:  # several queries in one call (the paper's pairs): each query's states repeated per candidate
            xs = pad_rows([enc[j]["token_states"] for j, p in enumerate(picks) for _ in p], np.float32)
            xm = pad_rows([rows[j]["attention_mask"] for j, p in enumerate(picks) for _ in p], np.int32)
            ys, ym = cands.index.gather_states([c for p in picks for c in p])
            blocks = [Block(x_states=xs, x_mask=xm, y_states=ys, y_mask=ym)]
        return np.concatenate([o["probs"][:, 1] for o in run_rows(backend, "score", blocks)])
    return step


def legacy_rows(q_states, q_mask, index16, cand_indices):
    """The search path's `score` rows before issue 18: one per candidate, the query's states in
    each, the candidate's float16 states read and converted one by one."""
    out = []
    for c in cand_indices:
        y = index16.states(c)
        out.append({"x_states": q_states, "x_mask": q_mask, "y_states": y, "y_mask": np.ones(len(y), np.int32)})
    return out


def timed(step, seconds, min_calls=3, warmup=2, start=0):
    """Latencies (s) of calls to step(i) for at least `seconds` and `min_calls`, after `warmup` calls."""
    for w in range(warmup):
        step(start + w)
    lat, t0, i = [], time.perf_counter(), start + warmup
    while len(lat) < min_calls or time.perf_counter() - t0 < seconds:
        t = time.perf_counter()
        step(i)
        lat.append(time.perf_counter() - t)
        i += 1
    return lat


def summary(lat, per_call=1):
    lat = np.asarray(lat)
    return {"p50_ms": float(np.percentile(lat, 50) * 1000), "p99_ms": float(np.percentile(lat, 99) * 1000),
            "qps": float(per_call * len(lat) / lat.sum()), "calls": int(len(lat))}


def interleaved(steps, seconds, rounds=3, min_calls=3, warmup=2):
    """Measure several steps in alternating rounds (each gets seconds / rounds per round):
    name -> latencies. On a shared machine the load then falls on all of them alike."""
    lat = {name: [] for name in steps}
    for name, step in steps.items():
        timed(step, 0, min_calls=0, warmup=warmup)
    per_round = max(1, -(-min_calls // rounds))
    for r in range(rounds):
        for name, step in steps.items():
            lat[name] += timed(step, seconds / rounds, min_calls=per_round, warmup=0, start=len(lat[name]))
    return lat


def rerank_latency(model_dir, K=100, query_len=32, cand_len=128, backend="keras", seconds=3.0, onnx=None,
                   queries=1, batch_size=CE_BATCH, n_queries=8, min_calls=3, work=None):
    """p50 / p99 latency (ms) and queries/s of the ranking stage of one model directory (kind
    cross_encoder, sbert or virt): one query of `query_len` tokens against K candidates of
    `cand_len` tokens (with `queries` > 1: that many queries, each with its K candidates, in
    one call; qps counts queries). The candidates' side is cached as `--task index` stores it
    (built here first: K texts encoded with the same backend; not timed). backend: keras, or
    onnx / onnx-int8 with `onnx` = export_onnx(model_dir, dir) or that dir.

    Returns {"p50_ms", "p99_ms", "qps", "calls", "kind", "backend", "K", "query_len", "cand_len", "queries"}.
    """
    b = open_backend(model_dir, backend, onnx, max_len=query_len + cand_len)
    with tempfile.TemporaryDirectory(prefix="rerank-") as tmp:
        cands = Candidates(b, K * queries, cand_len, work or tmp)
        qs = texts_of_length(b.tokenizer, n_queries * queries, query_len, seed=7)
        groups = [qs[i:i + queries] for i in range(0, len(qs), queries)]
        lat = timed(ranker(b, cands, groups, K, batch_size=batch_size), seconds, min_calls=min_calls)
    return {**summary(lat, queries), "kind": b.kind, "backend": backend, "K": K, "query_len": query_len,
            "cand_len": cand_len, "queries": queries}


# ----------------------------------------------------------------------------- breakdown of VIRT's online cost
def virt_breakdown(backend, legacy, cands, query, K, seconds):
    """p50 ms of each part of VIRT's online work for one query against K cached candidates."""
    from search.engine import virt_blocks
    from runtime.rows import pad_rows
    from runtime.batching import run_rows
    from runtime.rows import text_rows

    rows = text_rows(backend, [query])
    enc = run_rows(backend, "encode_ids", rows)[0]
    idx = list(range(K))
    block = virt_blocks(cands.index, enc["token_states"], rows[0]["attention_mask"], idx, block=K)[0]
    per_row = legacy_rows(enc["token_states"], rows[0]["attention_mask"], cands.index16, idx)
    tiled = {n: pad_rows([r[n] for r in per_row], np.float32 if n.endswith("states") else np.int32)
             for n in ("x_states", "x_mask", "y_states", "y_mask")}
    parts = {
        "encode the query": lambda i: backend.run("encode_ids", {k: v[None] for k, v in rows[0].items()}),
        "gather K cached states (contiguous float32)": lambda i: cands.index.gather_states(idx),
        "gather K cached states (float16 as stored, converted)": lambda i: cands.index16.gather_states(idx),
        "score: Eq. 5 as one matmul, query broadcast (now)": lambda i: backend.run("score", dict(block)),
        "score: Eq. 5 as one matmul, query copied K times": lambda i: backend.run("score", tiled),
        "score: Eq. 5 as four matmuls, query copied K times (before)": lambda i: legacy.run("score", tiled),
        "rows before: K per-candidate float16 reads + padding of the rows (no model)":
            lambda i: {n: pad_rows([r[n] for r in legacy_rows(enc["token_states"], rows[0]["attention_mask"],
                                                               cands.index16, idx)],
                                   np.float32 if n.endswith("states") else np.int32)
                       for n in ("x_states", "x_mask", "y_states", "y_mask")},
    }
    return {name: summary(timed(f, seconds, min_calls=5, warmup=2))["p50_ms"] for name, f in parts.items()}


# ----------------------------------------------------------------------------- end to end: POST /v1/search
def e2e_latency(searcher, query_backend, queries, K, seconds, min_calls=3, warmup=2, max_batch=CE_BATCH):
    """Latencies of `POST /v1/search {"query", "k": K}` on a local server, one request at a time."""
    import httpx

    from serve.app import ServerState
    from serve.task import BackgroundServer

    state = ServerState(query_backend, max_batch=max_batch, max_wait_ms=5.0, searcher=searcher, max_k=max(K, 100))
    with BackgroundServer(state) as url, httpx.Client(timeout=600) as client:
        def step(i):
            r = client.post(url + "/v1/search", json={"query": queries[i % len(queries)], "k": K})
            r.raise_for_status()
            assert len(r.json()["results"]) == min(K, len(searcher.index))
        return timed(step, seconds, min_calls=min_calls, warmup=warmup)


# ----------------------------------------------------------------------------- the command
def default_models(work):
    """MiniLM-L6 cross-encoder, sbert (cosine) and VIRT model directories, untrained heads."""
    from crossenc.model import CrossEncoder
    from modeling.model_dir import save_model_dir
    from modeling.pretrained import load_pretrained
    from senbert.model import SentenceBert
    from virt.model import VirtModel

    dirs = {}
    encoder, tokenizer = load_pretrained("minilm")  # one encoder in all three (the weights are saved per model)
    for kind in KINDS:
        model = {"cross_encoder": lambda: CrossEncoder(encoder, 2, pooling="mean", name="cross_encoder"),
                 "sbert": lambda: SentenceBert(encoder, objective="cosine", name="sbert"),
                 "virt": lambda: VirtModel(encoder, 2, name="virt")}[kind]()
        model(model.dummy_inputs())
        dirs[kind] = str(save_model_dir(model, Path(work) / kind / "model", tokenizer, labels=["0", "1"],
                                        max_seq_len=512))
    return dirs


def run(args):
    from modeling.model_dir import load_model_dir
    from search.engine import Searcher

    t_start = time.time()
    quick = args.quick
    grid = args.grid or (QUICK_GRID if quick else GRID)
    paper = None if quick or args.grid else PAPER
    work = Path(tempfile.mkdtemp(prefix="bench-rerank-"))
    dirs = {k: getattr(args, SHORT[k]) for k in KINDS}
    if not all(dirs.values()):
        made = default_models(work)
        dirs = {k: dirs[k] or made[k] for k in KINDS}
    loaded = {k: load_model_dir(dirs[k], expect_kind=k) for k in KINDS}
    onnx = {}
    if any(b.startswith("onnx") for b in args.backends):
        t = time.time()
        onnx = {k: export_onnx(dirs[k], work / "onnx" / k, int8="onnx-int8" in args.backends) for k in KINDS}
        print(f"ONNX export: {time.time() - t:.0f} s", flush=True)
    lengths = sorted({(q, c) for q, c, _ in grid} | ({(paper[0], paper[1])} if paper else set()))
    n_cands = {c: max([k for _, cc, k in grid if cc == c] + ([paper[3]] if paper and paper[1] == c else []))
               for _, c in lengths}
    results, breakdown, e2e = [], {}, []
    seconds, rounds = args.seconds, (1 if quick else 3)
    warm = 1
    min_calls = 1 if quick else 3
    for backend in args.backends:
        bk = {k: open_backend(dirs[k], backend, onnx.get(k), 512, loaded[k]) for k in KINDS}
        legacy = legacy_backend(loaded["virt"]) if backend == "keras" else None
        cands = {}
        for c, n in n_cands.items():
            t = time.time()
            cands[c] = {k: Candidates(bk[k], n, c, work) for k in KINDS}
            print(f"{backend}: {n} candidates of {c} tokens encoded and indexed ({time.time() - t:.0f} s)", flush=True)
        configs = [(q, c, k, 1) for q, c, k in grid] + ([(paper[0], paper[1], 1, paper[3])] if paper else [])
        for q, c, K, nq in configs:
            qs = texts_of_length(bk["virt"].tokenizer, 4 * nq, q, seed=7)
            groups = [qs[i:i + nq] for i in range(0, len(qs), nq)]
            steps = {k: ranker(bk[k], cands[c][k], groups, K) for k in KINDS}
            if legacy is not None and nq == 1:
                steps["virt_before"] = ranker(legacy, cands[c]["virt"], groups, K, path="rows")
            lat = interleaved(steps, seconds, rounds=rounds, min_calls=min_calls, warmup=warm)
            row = {"backend": backend, "query_len": q, "cand_len": c, "K": K, "queries": nq,
                   **{name: summary(v, nq) for name, v in lat.items()}}
            results.append(row)
            print(_line(row), flush=True)
        if backend == "keras" and not quick:
            q, c, K = 32, 128, 100
            qtext = texts_of_length(bk["virt"].tokenizer, 1, q, seed=9)[0]
            breakdown = virt_breakdown(bk["virt"], legacy, cands[c]["virt"], qtext, K, max(seconds / 2, 0.5))
            print(json.dumps(breakdown, indent=1), flush=True)
        if backend == "keras" and args.e2e:
            q, c = grid[0][0], grid[0][1]
            qs = texts_of_length(bk["virt"].tokenizer, 16, q, seed=11)
            searchers = {"ce": Searcher(cands[c]["sbert"].index, bk["sbert"], bk["cross_encoder"]),
                         "sbert": Searcher(cands[c]["sbert"].index, bk["sbert"]),
                         "virt": Searcher(cands[c]["virt"].index, bk["virt"], "virt")}
            ks = sorted({k for qq, cc, k in grid if (qq, cc) == (q, c)})
            for K in (ks[:1] if quick else ks):
                row = {"backend": backend, "query_len": q, "cand_len": c, "K": K}
                for name, s in searchers.items():
                    row[name] = summary(e2e_latency(s, s.query_backend, qs, K, seconds, max(min_calls - 1, 1), warm))
                e2e.append(row)
                print("e2e", _line(row), flush=True)
    wall = time.time() - t_start
    report(args, results, breakdown, e2e, wall, dirs)
    return {"results": results, "breakdown": breakdown, "e2e": e2e}


def _line(row):
    parts = [f"{row['backend']} q{row['query_len']} c{row['cand_len']} K{row['K']}"
             + (f" x{row['queries']} queries" if row.get("queries", 1) > 1 else "")]
    for name in ("cross_encoder", "ce", "sbert", "virt", "virt_before"):
        if name in row:
            parts.append(f"{name} {row[name]['p50_ms']:.1f} ms")
    return ", ".join(parts)


def _ratio(row, num, den="cross_encoder"):
    return row[num]["qps"] / row[den]["qps"] if num in row and den in row else None


def report(args, results, breakdown, e2e, wall, dirs):
    def ms(r):
        return f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f}"

    def x(v):
        return f"**{v:.1f}x**" if v is not None else ""

    rows = []
    for r in results:
        shape = f"{r['query_len']} / {r['cand_len']} / {r['K']}" + (f" (x{r['queries']} queries)" if r["queries"] > 1
                                                                      else "")
        rows.append([r["backend"], shape, ms(r["cross_encoder"]), ms(r["sbert"]), ms(r["virt"]),
                     ms(r["virt_before"]) if "virt_before" in r else "",
                     f"{r['cross_encoder']['qps']:.2f} / {r['sbert']['qps']:.1f} / {r['virt']['qps']:.1f}",
                     x(_ratio(r, "virt")), x(_ratio(r, "sbert")),
                     f"{_ratio(r, 'virt', 'virt_before'):.1f}x" if "virt_before" in r else ""])
    lines = [f"Rerank: p50 / p99 ms per query, queries/s, {args.seconds:g} s per model and configuration "
             f"({'quick, 1 round' if args.quick else '3 alternating rounds'}); wall {wall:.0f} s", ""]
    lines += md_table(["backend", "query / cand tokens / K", "cross-encoder ms", "sbert ms", "VIRT ms",
                       "VIRT before ms", "queries/s ce / sbert / VIRT", "VIRT vs ce", "sbert vs ce",
                       "VIRT now vs before"], rows)
    if breakdown:
        lines += ["", "VIRT online cost, one query of 32 tokens against K = 100 cached candidates of 128 tokens "
                      "(Keras, p50 ms of each part alone):", ""]
        lines += md_table(["part", "p50 ms"], [[k, f"{v:.1f}"] for k, v in breakdown.items()])
    if e2e:
        lines += ["", "End to end: POST /v1/search (tokenise, encode, recall, rerank, JSON), one request at a time, "
                      "Keras; ce = sbert recall + cross-encoder rerank, sbert = cosine only, VIRT = VIRT recall + "
                      "VIRT rerank on cached states (p50 / p99 ms, queries/s):", ""]
        lines += md_table(["query / cand tokens / K", "ce", "sbert", "VIRT", "VIRT vs ce", "sbert vs ce"],
                          [[f"{r['query_len']} / {r['cand_len']} / {r['K']}",
                            *(f"{ms(r[n])} ({r[n]['qps']:.2f}/s)" for n in ("ce", "sbert", "virt")),
                            x(_ratio(r, "virt", "ce")), x(_ratio(r, "sbert", "ce"))] for r in e2e])
    load = os.getloadavg()
    lines += ["", f"load average at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
                  f"(1 / 5 / 15 min) on {os.cpu_count()} cores"]
    save(args.out, "rerank", lines, {"args": {k: str(v) for k, v in vars(args).items()}, "models": dirs,
                                     "results": results, "virt_breakdown": breakdown, "e2e": e2e,
                                     "loadavg": load, "wall_s": wall})


def _shape(text):
    try:
        q, c, k = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected Q/C/K, e.g. 32/128/100") from None
    return q, c, k


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for k in KINDS:
        p.add_argument(f"--{SHORT[k]}", help=f"{k} model directory (default: built from MiniLM-L6)")
    p.add_argument("--seconds", type=float, default=3.0, help="per model and configuration")
    p.add_argument("--backends", nargs="*", default=["keras", "onnx-int8"], choices=BACKENDS)
    p.add_argument("--no-e2e", dest="e2e", action="store_false", help="skip POST /v1/search")
    p.add_argument("--quick", action="store_true",
                   help="32/128 tokens, K = 10 and 100, Keras, 0.3 s per point, e2e at the smallest K")
    p.add_argument("--grid", nargs="*", type=_shape, metavar="Q/C/K",
                   help="configurations instead of the default grid (query tokens / candidate tokens / K), "
                        "e.g. 32/128/100; the first one's lengths are the end-to-end rows'")
    p.add_argument("--out", default="bench-results")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds = min(args.seconds, 0.3)
        args.backends = ["keras"]
    return run(args)


if __name__ == "__main__":
    main()
