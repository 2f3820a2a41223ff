"""Index and search: index files vs the Keras model, faiss == numpy, top-k == brute force,
cross-encoder and VIRT rerank vs the Keras models, POST /v1/search == the search task.

Tiny random models from test_export.py's fixtures (imported); the corpus is the sentence2
column of the sample pair file those fixtures write (with its duplicate texts), the
queries a few of its sentence1 texts. References use the Keras models directly on the
Python tokenizer's ids, never the code under test.
"""

from __future__ import annotations

import json
import threading

import httpx
import numpy as np
import pytest
import tensorflow as tf

import run_tasks
from data import read_pairs
from export import parity as parity_mod
from config import load_config
from modeling.model_dir import load_model_dir
from modeling.tokenization import pad_ids
from runtime.backends import BackendError, KerasBackend, open_model
from runtime.batching import drive, run_in_batches
from search.engine import Searcher, open_searcher
from search.index import Index, Recall, SearchError, build_index, faiss_available, normalize
from search.task import read_corpus
from serve.app import ServerState
from serve.task import BackgroundServer
from tests.test_export import model_dirs, vocab_file, workdir  # noqa: F401  fixtures

K = 5


@pytest.fixture(scope="module")
def corpus(workdir, vocab_file):  # noqa: F811  (vocab_file writes workdir/sample)
    path = workdir / "sample" / "train.csv"
    pairs = read_pairs(path)
    first = {}
    for i, t in enumerate(pairs.text_b, 1):
        first.setdefault(t, str(i))
    queries = workdir / "queries.txt"
    qs = list(dict.fromkeys(pairs.text_a))[:6]
    queries.write_text("\n".join(qs) + "\n", encoding="utf-8")
    return {"path": path, "texts": list(first), "ids": list(first.values()), "rows": len(pairs.text_b),
            "queries": qs, "queries_file": queries}


def _cli(*args):
    assert run_tasks.main(list(map(str, args))) == 0


@pytest.fixture(scope="module")
def loaded(model_dirs):  # noqa: F811
    return {k: load_model_dir(model_dirs[k]) for k in ("cross_encoder", "sbert", "virt")}


@pytest.fixture(scope="module")
def backends(loaded):
    """Keras backends over the loaded models (each model loaded and traced once)."""
    return {k: KerasBackend(ld, k, ld.max_seq_len) for k, ld in loaded.items()}


@pytest.fixture(scope="module")
def indexes(model_dirs, corpus, workdir, backends):  # noqa: F811
    """sbert: through the index command; virt: build_index on the loaded model."""
    out = {"sbert": workdir / "index_sbert", "virt": workdir / "index_virt"}
    _cli("--task", "index", "--set", f"index.model={model_dirs['sbert']}", f"index.corpus={corpus['path']}",
         "--out", out["sbert"])
    ids, texts = read_corpus(corpus["path"], load_config(None).data)
    build_index(backends["virt"], ids, texts, out["virt"], batch_size=16)
    return out


@pytest.fixture(scope="module")
def cli_results(indexes, corpus, model_dirs, workdir):  # noqa: F811
    """The search command: sbert recall (numpy), cross-encoder rerank."""
    out = workdir / "results.jsonl"
    _cli("--task", "search", "--set", f"search.index={indexes['sbert']}", f"search.k={K}", "search.recall=numpy",
         f"search.queries={corpus['queries_file']}", f"search.rerank={model_dirs['cross_encoder']}", "--out", out)
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def _search(searcher, queries, rerank=True):
    return drive(searcher.plan(queries, K, rerank), lambda c: run_in_batches(c.backend, c.fn, c.rows, 16))


def _ids(ld, texts):
    return pad_ids(ld.tokenizer.encode_texts(texts, ld.max_seq_len), ld.tokenizer.pad_id)


def test_sbert_index_holds_the_keras_embeddings(indexes, corpus, loaded):
    idx = Index(indexes["sbert"])
    assert idx.meta["kind"] == "sbert" and idx.meta["backend"] == "keras"
    assert idx.texts == corpus["texts"] and idx.ids == corpus["ids"]  # duplicates dropped, first id kept
    assert idx.meta["duplicates_dropped"] == corpus["rows"] - len(corpus["texts"]) > 0
    ids, mask = _ids(loaded["sbert"], corpus["texts"])
    want = normalize(parity_mod.keras_encode(loaded["sbert"], ids, mask)["embeddings"])
    np.testing.assert_allclose(idx.vectors, want, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(idx.vectors, axis=1), 1.0, atol=1e-5)


def test_faiss_and_numpy_recall_agree(indexes):
    if not faiss_available():
        pytest.skip("faiss is not installed")
    vectors = Index(indexes["sbert"]).vectors
    queries = normalize(np.concatenate([vectors[:5] + 0.01, np.random.default_rng(0).normal(size=(5, vectors.shape[1]))]))
    s_np, i_np = Recall(vectors, "numpy").search(queries, K)
    s_fa, i_fa = Recall(vectors, "faiss").search(queries, K)
    np.testing.assert_array_equal(i_np, i_fa)
    np.testing.assert_allclose(s_np, s_fa, atol=1e-5)
    full = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :K]  # the exact answer
    np.testing.assert_array_equal(i_np, full)
    _, all_ids = Recall(vectors, "numpy").search(queries, len(vectors) + 10)  # k capped at the corpus size
    assert all_ids.shape == (len(queries), len(vectors))


def test_search_returns_the_brute_force_top_k(indexes, corpus, loaded, backends, cli_results):
    idx = Index(indexes["sbert"])
    q_ids, q_mask = _ids(loaded["sbert"], corpus["queries"])
    q = normalize(parity_mod.keras_encode(loaded["sbert"], q_ids, q_mask)["embeddings"])
    sims = q @ idx.vectors.T
    res = _search(Searcher(idx, backends["sbert"], recall="numpy"), corpus["queries"])
    for r, row in zip(res, sims):
        want = np.argsort(-row, kind="stable")[:K]
        assert [c["id"] for c in r] == [idx.ids[j] for j in want]
        assert [c["text"] for c in r] == [idx.texts[j] for j in want]
        np.testing.assert_allclose([c["cosine"] for c in r], row[want], atol=1e-5)
        assert [c["rank"] for c in r] == list(range(1, K + 1))
        assert all(c["score"] == c["cosine"] and "rerank" not in c for c in r)
    if faiss_available():  # faiss: the same candidates in the same order
        faiss_res = _search(Searcher(idx, backends["sbert"], recall="faiss"), corpus["queries"])
        assert [[c["id"] for c in r] for r in faiss_res] == [[c["id"] for c in r] for r in res]
    # the command: same queries and ids, the same recalled candidates (reordered by the reranker)
    assert [r["query"] for r in cli_results] == corpus["queries"]
    assert [r["id"] for r in cli_results] == ["1", "2", "3", "4", "5", "6"]
    for cli, r in zip(cli_results, res):
        assert sorted(c["id"] for c in cli["results"]) == sorted(c["id"] for c in r)


def test_virt_index_caches_float16_states_and_reranks_with_score(indexes, corpus, loaded, backends):
    idx, ld = Index(indexes["virt"]), loaded["virt"]
    ids, mask = _ids(ld, corpus["texts"])
    states = parity_mod.keras_encode(ld, ids, mask)["token_states"]
    assert np.load(indexes["virt"] / "states.npy", mmap_mode="r").dtype == np.float16  # on disk
    assert idx._states.dtype == np.float32 and idx.meta["hidden_size"] == 32  # in memory (the default)
    np.testing.assert_array_equal(np.diff(idx._offsets), mask.sum(1))
    for i in (0, len(idx) // 2, len(idx) - 1):
        n = int(mask[i].sum())
        np.testing.assert_allclose(idx.states(i), states[i, :n], atol=1e-2, rtol=1e-3)
    np.testing.assert_allclose(idx.vectors, normalize((states * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)),
                               atol=1e-5)

    found = _search(Searcher(idx, backends["virt"], "virt"), corpus["queries"])
    res = [{"query": q, "results": r} for q, r in zip(corpus["queries"], found)]
    q_ids, q_mask = _ids(ld, corpus["queries"])
    q_states = parity_mod.keras_encode(ld, q_ids, q_mask)["token_states"]
    for qi, r in enumerate(res):
        cands = r["results"]
        assert [c["rerank"] for c in cands] == sorted((c["rerank"] for c in cands), reverse=True)
        assert all(c["score"] == c["rerank"] for c in cands)
        pos = [idx.ids.index(c["id"]) for c in cands]
        n = int(q_mask[qi].sum())
        for c, j in zip(cands, pos):  # VIRT's score on the cached (float16) candidate states
            hy = idx.states(j)[None]
            want = ld.model.score(tf.constant(q_states[qi:qi + 1, :n]), tf.constant(q_mask[qi:qi + 1, :n]),
                                  tf.constant(hy), tf.ones(hy.shape[:2], tf.int32)).numpy()[0, 1]
            assert c["rerank"] == pytest.approx(float(want), abs=1e-5)
        # and close to the whole model on ids (float16 cache: small differences)
        feats, _ = parity_mod.python_features(ld, [r["query"]] * len(cands), [c["text"] for c in cands], ld.max_seq_len)
        full = parity_mod.keras_outputs(ld, feats)["probs"][:, 1]
        np.testing.assert_allclose([c["rerank"] for c in cands], full, atol=2e-2)


def test_cross_encoder_rerank(cli_results, loaded):
    ce = loaded["cross_encoder"]
    for r in cli_results:
        cands = r["results"]
        feats, _ = parity_mod.python_features(ce, [r["query"]] * len(cands), [c["text"] for c in cands], ce.max_seq_len)
        want = parity_mod.keras_outputs(ce, feats)["probs"][:, 1]
        np.testing.assert_allclose([c["rerank"] for c in cands], want, atol=1e-5)
        assert [c["rerank"] for c in cands] == sorted((c["rerank"] for c in cands), reverse=True)


def test_search_endpoint_equals_the_search_task(indexes, corpus, backends, cli_results):
    searcher = Searcher(Index(indexes["sbert"]), backends["sbert"], backends["cross_encoder"])
    task = cli_results
    with BackgroundServer(ServerState(backends["sbert"], max_batch=16, max_wait_ms=20, searcher=searcher, max_k=50)) as url:
        got = httpx.post(url + "/v1/search", json={"queries": corpus["queries"], "k": K}).json()["results"]
        for g, t in zip(got, task):
            assert [c["id"] for c in g] == [c["id"] for c in t["results"]]
            np.testing.assert_allclose([c["rerank"] for c in g], [c["rerank"] for c in t["results"]], atol=1e-6)
        one = httpx.post(url + "/v1/search", json={"query": corpus["queries"][0], "k": 3, "rerank": False}).json()
        assert [c["rank"] for c in one["results"]] == [1, 2, 3] and "rerank" not in one["results"][0]
        # concurrent searches: batched across requests, same answers
        answers = {}

        def one_query(i):
            answers[i] = httpx.post(url + "/v1/search", json={"query": corpus["queries"][i], "k": K}, timeout=30).json()

        threads = [threading.Thread(target=one_query, args=(i,)) for i in range(len(corpus["queries"]))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert [[c["id"] for c in answers[i]["results"]] for i in range(len(threads))] == \
               [[c["id"] for c in g] for g in got]
        for body, message in [({"queries": [""]}, "queries[0]: empty query"), ({"query": "x", "k": 0}, "k: expected"),
                              ({"query": "x", "k": 51}, "between 1 and 50"), ({"queries": "x"}, "non-empty list"),
                              ({"query": "x", "n": 1}, "unknown request key(s) 'n'"), ({"query": 3}, "query: expected a string"),
                              ({"query": "x", "queries": ["y"]}, "exactly one of"), ({"query": "x" * 2001}, "serve.max_chars")]:
            resp = httpx.post(url + "/v1/search", json=body)
            assert resp.status_code == 400 and message in resp.json()["error"], (body, resp.text)


def test_predict_on_keras_backends(loaded, backends):
    """The server over model directories (Keras): here because it shares this module's loaded models.
    cross_encoder: both ids layouts; sbert: two outputs -> one object per row / an object of batches."""
    from export.serving_client import RestClient
    from tests.test_export import PAIRS

    a, b = PAIRS
    for kind in ("cross_encoder", "sbert"):
        ld = loaded[kind]
        feats, _ = parity_mod.python_features(ld, a, b, ld.max_seq_len)
        ref = parity_mod.keras_outputs(ld, feats)
        assert backends[kind].runtime == "keras" and backends[kind].version == 1
        with BackgroundServer(ServerState(backends[kind], max_batch=2, max_wait_ms=1)) as url:
            c = RestClient(url, kind)
            if kind == "cross_encoder":
                np.testing.assert_allclose(c.predict_pairs(a, b), ref["probs"], atol=1e-5)
                rows = [{k: v[i].tolist() for k, v in feats.items()} for i in range(len(a))]
                np.testing.assert_allclose(c.predict(instances=rows, signature_name="predict_ids")["predictions"],
                                           ref["probs"], atol=1e-5)
                continue
            rows = c.predict_pairs(a, b)
            assert all(set(r) == {"cosine", "probs"} for r in rows)
            np.testing.assert_allclose([r["probs"] for r in rows], ref["probs"], atol=1e-5)
            np.testing.assert_allclose([r["cosine"] for r in rows], ref["cosine"], atol=1e-5)
            cols = c.predict(inputs={"text_a": a, "text_b": b})["outputs"]
            assert set(cols) == {"cosine", "probs"}
            emb = c.predict(inputs={"texts": a}, signature_name="encode")["outputs"]
            want = parity_mod.keras_encode(ld, feats["x_ids"], feats["x_mask"])["embeddings"]
            np.testing.assert_allclose(emb, want, atol=1e-5)


def test_index_and_search_errors(indexes, model_dirs, backends, workdir, capsys):  # noqa: F811
    with pytest.raises(BackendError, match="a cross_encoder model, expected sbert or virt"):
        open_model(model_dirs["cross_encoder"], kinds=("sbert", "virt"))
    assert run_tasks.main(["--task", "index", "--set", f"index.model={model_dirs['sbert']}"]) == 1
    assert run_tasks.main(["--task", "search", "--set", f"search.index={workdir}"]) == 1
    err = capsys.readouterr().err
    assert "error: set index.model" in err and "not an index directory (no index.json" in err
    with pytest.raises(SearchError, match="rerank=virt needs a virt index"):
        open_searcher(indexes["sbert"], rerank="virt")
    with pytest.raises(SearchError, match="a sbert model cannot rerank"):
        open_searcher(indexes["sbert"], rerank=str(model_dirs["sbert"]))
    with pytest.raises(SearchError, match="a sbert index, but the query model is virt"):
        Searcher(Index(indexes["sbert"]), backends["virt"])
