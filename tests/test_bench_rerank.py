"""bench/rerank.py and the rerank path it measures, on tiny random models (test_export.py's fixtures).

- round trip: the ranking stage's scores on the cached candidates (sbert vectors, VIRT token
  states as `--task index` stores them) equal the models' own full-pair outputs, in Keras and,
  for VIRT, through its ONNX `encode` and `score` (one query broadcast over K candidates);
- Eq. 5 computed as one matmul (virt.model.adapted_pooling) equals the reference formula, and
  one query broadcast equals the query copied per candidate;
- a `Block` (a row that is a whole batch) through the micro-batcher, alone and beside rows;
- `bench/rerank.py --quick` runs and writes its markdown and JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from export import parity as parity_mod
from modeling.encoder import pool
from modeling.model_dir import load_model_dir
from runtime.backends import KerasBackend
from runtime.rows import pad_rows
from runtime.batching import Block, MicroBatcher, run_rows
from tests.test_export import model_dirs, vocab_file, workdir  # noqa: F401  fixtures
from virt.model import VirtModel, _masked_attend, adapted_pooling

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import rerank  # noqa: E402

Q, C, K = 6, 12, 7  # query tokens, candidate tokens, candidates per query (tiny models: 64 positions)


@pytest.fixture(scope="module")
def loaded(model_dirs):  # noqa: F811
    return {k: load_model_dir(model_dirs[k]) for k in ("cross_encoder", "sbert", "virt")}


@pytest.fixture(scope="module")
def setup(loaded, tmp_path_factory):
    """Keras backends, K candidates (indexed for sbert / virt) and two queries."""
    work = tmp_path_factory.mktemp("rerank")
    out = {}
    for kind, ld in loaded.items():
        b = KerasBackend(ld, kind, 64)
        out[kind] = {"backend": b, "cands": rerank.Candidates(b, K, C, work)}
    out["queries"] = rerank.texts_of_length(loaded["virt"].tokenizer, 2, Q, seed=7)
    return out


def _full_pair(ld, queries, texts):
    """The model's own output on the whole pairs (ids from the Python tokenizer)."""
    feats, _ = parity_mod.python_features(ld, queries, texts, 64)
    return parity_mod.keras_outputs(ld, feats)


def test_synthetic_texts_have_the_asked_token_counts(loaded):
    tok = loaded["virt"].tokenizer
    texts = rerank.texts_of_length(tok, 20, 9, seed=3)
    assert len(set(texts)) == 20 and {len(ids) for ids in tok.encode_texts(texts, 64)} == {9}
    assert texts == rerank.texts_of_length(tok, 20, 9, seed=3)  # seeded


@pytest.mark.parametrize("kind", ["cross_encoder", "sbert", "virt"])
def test_cached_candidate_scores_equal_the_full_pair_model(kind, setup, loaded):
    s = setup[kind]
    cands, q = s["cands"], setup["queries"][:1]
    got = rerank.ranker(s["backend"], cands, [q], K)(0)
    want = _full_pair(loaded[kind], q * K, cands.texts)
    if kind == "sbert":  # float32 vectors in vectors.npy: exact
        np.testing.assert_allclose(got, want["cosine"], atol=1e-5)
    elif kind == "cross_encoder":
        np.testing.assert_allclose(got, want["probs"][:, 1], atol=1e-6)
    else:  # token states cached as float16 (states.npy): close, not bit-equal
        np.testing.assert_allclose(got, want["probs"][:, 1], atol=2e-2)
        # the same on float32 states of the candidates: exact
        ld = loaded["virt"]
        ids = ld.tokenizer.encode_texts(cands.texts, 64)
        y = pad_rows([np.array(i, np.int32) for i in ids], np.int32)
        hy = ld.model.encode(tf.constant(y), tf.ones_like(y))["last_hidden_state"]
        qi = np.array([ld.tokenizer.encode_texts(q, 64)[0]], np.int32)
        hx = ld.model.encode(tf.constant(qi), tf.ones_like(qi))["last_hidden_state"]
        one = ld.model.score(hx, tf.ones_like(qi), hy, tf.ones_like(y)).numpy()[:, 1]  # query broadcast
        np.testing.assert_allclose(one, want["probs"][:, 1], atol=1e-5)
    # several queries in one call (the paper's pairs): the same scores per query
    two = rerank.ranker(s["backend"], cands, [setup["queries"]], K)(0)
    assert two.shape == (2 * K,)
    picks = [(j * K + k) % K for j in range(2) for k in range(K)]
    ref = _full_pair(loaded[kind], [t for t in setup["queries"] for _ in range(K)], [cands.texts[i] for i in picks])
    ref = ref["cosine"] if kind == "sbert" else ref["probs"][:, 1]
    np.testing.assert_allclose(two, ref, atol=2e-2 if kind == "virt" else 1e-5)


def test_virt_before_path_scores_the_same(setup):
    s = setup["virt"]
    legacy = rerank.legacy_backend(s["backend"].loaded, 64)
    now = rerank.ranker(s["backend"], s["cands"], [setup["queries"][:1]], K)(0)
    before = rerank.ranker(legacy, s["cands"], [setup["queries"][:1]], K, path="rows", batch_size=3)(0)
    np.testing.assert_allclose(before, now, atol=1e-5)


@pytest.mark.parametrize("adapted,fusion", [(True, None), (False, None), (False, True)])
def test_adapted_pooling_equals_eq5_and_one_query_broadcasts(adapted, fusion):
    from modeling.encoder import BertEncoder

    enc = BertEncoder(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                      max_position=32, name="encoder")
    m = VirtModel(enc, 2, adapted_interaction=adapted, fusion=fusion, name="virt")
    m(m.dummy_inputs())
    rng = np.random.default_rng(0)
    hx = tf.constant(rng.normal(size=(3, 5, 16)).astype("float32"))
    hy = tf.constant(rng.normal(size=(3, 9, 16)).astype("float32"))
    xm = tf.constant([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]])
    ym = tf.constant([[1] * 9, [1] * 4 + [0] * 5, [1] * 7 + [0] * 2])
    u, v = adapted_pooling(hx, xm, hy, ym)
    np.testing.assert_allclose(u, pool(_masked_attend(hx, hy, ym), xm, "mean"), atol=1e-5)
    np.testing.assert_allclose(v, pool(_masked_attend(hy, hx, xm), ym, "mean"), atol=1e-5)
    # one query (batch 1) against 3 candidates == the query copied 3 times
    tiled = m.score(tf.repeat(hx[1:2], 3, 0), tf.repeat(xm[1:2], 3, 0), hy, ym)
    np.testing.assert_allclose(m.score(hx[1:2], xm[1:2], hy, ym), tiled, atol=1e-6)


def _virt_score_ir(adapted, tmp_path):
    """A random 1-layer VIRT (probabilities far from 0.5) and its `score` function as an OpenVINO IR."""
    from export.onnx import convert_function
    from export.openvino import convert
    from modeling.encoder import BertEncoder

    enc = BertEncoder(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                      max_position=32, name="encoder")
    m = VirtModel(enc, 2, adapted_interaction=adapted, name="virt")
    m(m.dummy_inputs())
    m.classifier.kernel.assign(np.random.default_rng(1).normal(scale=3.0, size=m.classifier.kernel.shape))
    return m, convert(convert_function(m.serving_functions()["score"], tmp_path / "score.onnx"), tmp_path / "score.xml")


@pytest.mark.parametrize("adapted", [False, True])
def test_openvino_broadcasts_one_query_where_its_answer_is_right(adapted, tmp_path):
    """The baseline's head (the default) broadcasts one query through the OpenVINO IR with Keras's answer;
    Eq. 5's (its If branch) OpenVINO runs but answers wrongly in f32 for batch 1 against K (by 2e-3 on
    this random model, 0.03 on a trained one), so search.engine.broadcasts_query repeats the query there."""
    from types import SimpleNamespace

    from runtime.openvino import Runner
    from search.engine import broadcasts_query

    m, ir = _virt_score_ir(adapted, tmp_path)
    run = Runner(ir, 1, "f32")
    rng = np.random.default_rng(1)
    hx, hy = rng.normal(size=(1, 5, 16)).astype("float32"), rng.normal(size=(4, 9, 16)).astype("float32")
    xm, ym = np.ones((1, 5), np.int32), np.array([[1] * 9, [1] * 4 + [0] * 5, [1] * 7 + [0] * 2, [1] * 9], np.int32)
    want = m.score(hx, xm, hy, ym).numpy()
    meta = {"model": {"config": m.get_config()}}
    backend = SimpleNamespace(runtime="openvino", functions={"score": None}, hidden_size=16, meta=meta,
                              run=lambda fn, feeds: run(feeds))
    assert broadcasts_query(backend) is not adapted
    one = run({"x_states": hx, "x_mask": xm, "y_states": hy, "y_mask": ym})["probs"]
    assert (np.abs(one - want).max() < 1e-4) is not adapted, np.abs(one - want).max()
    repeated = run({"x_states": np.repeat(hx, 4, 0), "x_mask": np.repeat(xm, 4, 0), "y_states": hy, "y_mask": ym})
    np.testing.assert_allclose(repeated["probs"], want, atol=1e-3)


def test_openvino_runner_splits_a_large_batch_across_streams(tmp_path):
    """A batch of SPLIT_MIN_ROWS rows or more runs as one part per stream (uneven parts, the one query
    going whole to each) and answers as Keras and the one-request compile do; a small batch is not split."""
    from runtime.openvino import SPLIT_MIN_ROWS, Runner

    m, ir = _virt_score_ir(False, tmp_path)
    rng = np.random.default_rng(2)
    k = SPLIT_MIN_ROWS + 3  # 11 candidates: parts of 5 and 6 with 2 streams, 4/4/3 with 3
    hx, hy = rng.normal(size=(1, 5, 16)).astype("float32"), rng.normal(size=(k, 9, 16)).astype("float32")
    xm, ym = np.ones((1, 5), np.int32), (np.arange(9)[None] < rng.integers(1, 10, (k, 1))).astype(np.int32)
    feeds = {"x_states": hx, "x_mask": xm, "y_states": hy, "y_mask": ym}
    want = m.score(hx, xm, hy, ym).numpy()
    one = Runner(ir, 2, "f32", streams=1)
    np.testing.assert_allclose(one(feeds)["probs"], want, atol=1e-3)  # fp16 weights in the IR
    for streams in (2, 3):
        split = Runner(ir, 3, "f32", streams=streams)
        small = {**feeds, "y_states": hy[:SPLIT_MIN_ROWS - 1], "y_mask": ym[:SPLIT_MIN_ROWS - 1]}
        np.testing.assert_allclose(split(small)["probs"], want[:SPLIT_MIN_ROWS - 1], atol=1e-3)
        assert split._split is None  # below the threshold: the one-request compile
        got = split(feeds)["probs"]
        assert split._split is not None and len(split._split[1]) == streams
        np.testing.assert_allclose(got, want, atol=1e-3)
        np.testing.assert_allclose(got, one(feeds)["probs"], atol=1e-6)


def test_virt_onnx_encode_and_broadcast_score_equal_keras(setup, model_dirs, tmp_path):  # noqa: F811
    from search.engine import broadcasts_query

    files = rerank.export_onnx(model_dirs["virt"], tmp_path, int8=False)
    assert json.loads((tmp_path / "files.json").read_text()) == files
    b = rerank.open_backend(model_dirs["virt"], "onnx", tmp_path, max_len=64)
    s = setup["virt"]
    got = rerank.ranker(b, s["cands"], [setup["queries"][:1]], K)(0)  # ONNX encode + score on the Keras-built cache
    want = rerank.ranker(s["backend"], s["cands"], [setup["queries"][:1]], K)(0)
    np.testing.assert_allclose(got, want, atol=1e-4)
    # the same through the OpenVINO IR (fp16 weights, bf16 where the CPU has it). This VIRT has Eq. 5's
    # head, whose broadcast OpenVINO answers wrongly: the probe has the query repeated K times
    ov = rerank.open_backend(model_dirs["virt"], "openvino", tmp_path, max_len=64)
    assert ov.runtime == "openvino" and not broadcasts_query(ov)
    np.testing.assert_allclose(rerank.ranker(ov, s["cands"], [setup["queries"][:1]], K)(0), want, atol=2e-2)


def test_an_openvino_score_that_refuses_one_query_gets_it_repeated():
    """The probe: an IR whose shape inference refuses batch 1 against K (VIRTs exported before the head's
    broadcast became an add) is fed the query K times; one that answers wrongly is not trusted either."""
    from types import SimpleNamespace

    from search.engine import broadcasts_query

    def backend(run):
        meta = {"model": {"config": {"adapted_interaction": False}}}
        return SimpleNamespace(runtime="openvino", functions={"score": None}, hidden_size=4, meta=meta, run=run)

    def refuses(fn, feeds):
        if len(feeds["x_states"]) != len(feeds["y_states"]):
            raise RuntimeError("[CPU] Concat node: Argument shapes are inconsistent")
        return {"probs": np.ones((len(feeds["y_states"]), 2))}

    def answers(wrong):
        def run(fn, feeds):
            p = feeds["x_states"].sum(axis=(1, 2))[:, None] + feeds["y_states"].sum(axis=(1, 2))[:, None]
            return {"probs": p + (1.0 if wrong and len(feeds["x_states"]) == 1 else 0.0)}
        return run

    assert not broadcasts_query(backend(refuses))
    assert broadcasts_query(backend(answers(wrong=False)))
    assert not broadcasts_query(backend(answers(wrong=True)))
    calls = []
    b = backend(lambda fn, feeds: calls.append(fn) or answers(False)(fn, feeds))
    assert broadcasts_query(b) and broadcasts_query(b) and len(calls) == 2  # probed once per backend
    adapted = backend(answers(wrong=False))
    adapted.meta["model"]["config"]["adapted_interaction"] = True
    assert not broadcasts_query(adapted)  # Eq. 5's head: never, whatever a probe says


def test_an_onnx_score_with_one_batch_axis_gets_the_query_repeated(setup):
    """ONNX exports from before issue 18 name both batch axes `batch`: the query is then repeated."""
    from types import SimpleNamespace

    from search.engine import broadcasts_query, virt_blocks

    def backend(x, y):
        inputs = [SimpleNamespace(name="x_states", shape=[x, "x_sequence", 32]),
                  SimpleNamespace(name="y_states", shape=[y, "y_sequence", 32])]
        return SimpleNamespace(sessions={"score": SimpleNamespace(get_inputs=lambda: inputs)})

    assert not broadcasts_query(backend("batch", "batch")) and broadcasts_query(backend("x_batch", "y_batch"))
    assert broadcasts_query(setup["virt"]["backend"])  # Keras
    s = setup["virt"]
    qs, qm = np.ones((Q, 32), np.float32), np.ones(Q, np.int32)
    one = virt_blocks(s["cands"].index, qs, qm, [0, 2, 4, 6], block=3)
    rep = virt_blocks(s["cands"].index, qs, qm, [0, 2, 4, 6], block=3, broadcast=False)
    assert [b["y_states"].shape[0] for b in one] == [3, 1] and [b["x_states"].shape[0] for b in one] == [1, 1]
    assert [b["x_states"].shape[0] for b in rep] == [3, 1]
    got = [o["probs"] for bs in (one, rep) for o in run_rows(s["backend"], "score", bs)]
    np.testing.assert_allclose(np.concatenate(got[:2]), np.concatenate(got[2:]), atol=1e-6)


def test_blocks_run_alone_through_the_micro_batcher(setup):
    s = setup["virt"]
    b, idx = s["backend"], s["cands"].index
    enc = run_rows(b, "encode_ids", [{"input_ids": np.array([2, 5, 6, 3], np.int32),
                                      "attention_mask": np.ones(4, np.int32)}])[0]
    ys, ym = idx.gather_states(range(K))
    block = Block(x_states=enc["token_states"][None], x_mask=np.ones((1, 4), np.int32), y_states=ys, y_mask=ym)
    rows = [{"x_states": enc["token_states"], "x_mask": np.ones(4, np.int32), "y_states": idx.states(i),
             "y_mask": np.ones(len(idx.states(i)), np.int32)} for i in range(K)]
    batcher = MicroBatcher(b, max_batch=4, max_wait_ms=20)
    try:
        f_rows, f_block = batcher.submit("score", rows), batcher.submit("score", [block, block])
        by_rows = np.array([o["probs"] for o in f_rows.result(60)])
        blocks = f_block.result(60)
    finally:
        batcher.close()
    assert len(blocks) == 2 and blocks[0]["probs"].shape == (K, 2)
    np.testing.assert_allclose(blocks[0]["probs"], by_rows, atol=1e-5)
    np.testing.assert_allclose(blocks[1]["probs"], blocks[0]["probs"])


def test_gather_states_pads_and_matches_per_candidate_reads(setup):
    idx = setup["virt"]["cands"].index
    for order in ([3, 0, 5], [1]):
        states, mask = idx.gather_states(order)
        assert states.dtype == np.float32 and states.shape[:2] == mask.shape
        for row, i in enumerate(order):
            n = len(idx.states(i))
            assert mask[row].sum() == n
            np.testing.assert_array_equal(states[row, :n], idx.states(i))
            assert not states[row, n:].any()


def test_rerank_latency_returns_the_figures(model_dirs):  # noqa: F811
    res = rerank.rerank_latency(model_dirs["virt"], K=5, query_len=6, cand_len=10, seconds=0.05, min_calls=3)
    assert {"p50_ms", "p99_ms", "qps", "calls"} <= set(res) and res["calls"] >= 3
    assert 0 < res["p50_ms"] <= res["p99_ms"] and res["qps"] > 0 and res["kind"] == "virt"


def test_quick_mode_writes_markdown_and_json(model_dirs, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    rerank.main(["--quick", "--ce", str(model_dirs["cross_encoder"]), "--sbert", str(model_dirs["sbert"]),
                 "--virt", str(model_dirs["virt"]), "--grid", "8/16/5", "8/16/20", "--out", str(out)])
    result = json.loads((out / "rerank.json").read_text())
    assert [(r["K"], r["query_len"], r["cand_len"]) for r in result["results"]] == [(5, 8, 16), (20, 8, 16)]
    for r in result["results"]:
        for name in ("cross_encoder", "sbert", "virt", "virt_before"):
            assert r[name]["p50_ms"] > 0 and r[name]["qps"] > 0
    assert [r["K"] for r in result["e2e"]] == [5] and result["e2e"][0]["virt"]["calls"] >= 1
    md = (out / "rerank.md").read_text()
    assert "VIRT vs ce" in md and "POST /v1/search" in md
