"""The HTTP server: TF Serving's REST API over ONNX / SavedModel / Keras, micro-batching, bad input
and faults, the REST and gRPC clients, the serve command.

The tiny models and their export come from test_export.py's fixtures (imported, not copied);
one virt export (it has every signature: serving_default, predict_ids, tokenize, encode, score)
is served over onnxruntime on a loopback port by an in-process uvicorn thread. References are
computed independently of the server: onnxruntime sessions and the Keras model on the Python
tokenizer's ids (export.parity.python_features).
"""

from __future__ import annotations

import gzip
import json
import logging
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tensorflow as tf

from export import parity as parity_mod
from export.serving_client import GrpcClient, RestClient, ServingError
from export.task import export_loaded, load_for_export
from runtime.backends import BackendError, open_model
from runtime.onnx import session
from serve.app import ServerState
from serve.signatures import Limits
from serve.task import BackgroundServer, free_port
from tests.test_export import (MAX_LEN, PAIRS, _cfg, model_dirs, tf2onnx_fast,  # noqa: F401  fixtures
                               vocab_file, workdir)
from tests.tiny_runs import popen_cli

LIMITS = Limits(max_texts=32, max_chars=200)


@pytest.fixture(scope="module")
def virt_export(model_dirs, workdir, tf2onnx_fast):  # noqa: F811
    out = workdir / "serve_virt"
    loaded = load_for_export(model_dirs["virt"])
    export_loaded(loaded, _cfg(out, "export.formats=[saved_model, onnx, openvino]", "export.parity_samples=4",
                               "export.portable_onnx=true"))  # model.onnx, encode.onnx: the references below
    return {"out": out, "loaded": loaded}


@pytest.fixture(scope="module")
def serve_command(virt_export, workdir):  # noqa: F811
    """`run_tasks.py --task serve` in a subprocess, started as soon as the export exists so that its
    start-up (TensorFlow import) overlaps the in-process tests; test_serve_command talks to it."""
    port = free_port()
    proc = popen_cli(["--task", "serve", "--set", f"serve.model={virt_export['out']}", f"serve.port={port}", "serve.backend=onnx",
                      "serve.max_batch=4"], cwd=workdir)
    yield proc, f"http://127.0.0.1:{port}"
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


@pytest.fixture(scope="module")
def server(virt_export, serve_command):
    backend = open_model(virt_export["out"], backend="onnx")  # auto's pick: test_auto_picks_...
    state = ServerState(backend, max_batch=8, max_wait_ms=30, limits=LIMITS)
    with BackgroundServer(state) as url:
        yield {"url": url, "state": state, "backend": backend, "client": RestClient(url, "virt")}


def _reference(loaded, a, b, onnx_file):
    """Python-tokenised padded ids -> (onnxruntime outputs, Keras outputs)."""
    feats, _ = parity_mod.python_features(loaded, a, b, MAX_LEN)
    sess = session(onnx_file)
    ort_out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feats)))
    return feats, ort_out, parity_mod.keras_outputs(loaded, feats)


def _post(url, path, body, raw=False):
    resp = httpx.post(url + path, content=body if raw else json.dumps(body), timeout=30)
    return resp.status_code, resp.json()


# ----------------------------------------------------------------------------- the API
def test_status_metadata_and_routes(server):
    c = server["client"]
    ok = {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                    "status": {"error_code": "OK", "error_message": ""}}]}
    assert c.status() == ok
    assert RestClient(server["url"], "virt", version=1).status() == ok
    with pytest.raises(ServingError) as e:
        RestClient(server["url"], "virt", version=2).status()
    assert e.value.status == 404 and e.value.message == "Servable not found for request: Specific(virt, 2)"
    with pytest.raises(ServingError, match=r"404: Servable not found for request: Latest\(nope\)"):
        RestClient(server["url"], "nope").predict_pairs(["a"], ["b"])
    meta = c.metadata()
    assert meta["model_spec"] == {"name": "virt", "signature_name": "", "version": "1"}
    defs = meta["metadata"]["signature_def"]["signature_def"]
    assert set(defs) == {"serving_default", "predict_ids", "tokenize", "encode", "score"}
    sd = defs["serving_default"]
    assert sd["method_name"] == "tensorflow/serving/predict"
    assert sd["inputs"]["text_a"]["dtype"] == "DT_STRING"
    assert [d["size"] for d in sd["outputs"]["probs"]["tensor_shape"]["dim"]] == ["-1", "2"]
    assert [d["size"] for d in defs["score"]["inputs"]["x_states"]["tensor_shape"]["dim"]] == ["-1", "-1", "32"]
    health = httpx.get(server["url"] + "/healthz").json()
    assert health["status"] == "ok" and health["runtime"] == "onnx"


def test_serving_default_equals_onnxruntime_and_keras(server, virt_export):
    a, b = PAIRS
    feats, ort_out, keras_out = _reference(virt_export["loaded"], a, b, virt_export["out"] / "onnx" / "model.onnx")
    c = server["client"]
    rows = np.array(c.predict_pairs(a, b))  # one output: bare rows
    np.testing.assert_allclose(rows, ort_out["probs"], atol=1e-6)
    np.testing.assert_allclose(rows, keras_out["probs"], atol=1e-4)
    assert np.ptp(rows[:, 1]) > 0.05  # the outputs really depend on the input
    cols = c.predict(inputs={"text_a": a, "text_b": b})
    assert set(cols) == {"outputs"}
    np.testing.assert_allclose(cols["outputs"], rows, atol=1e-7)
    b64 = [{"b64": __import__("base64").b64encode(t.encode()).decode()} for t in a]
    np.testing.assert_allclose(c.predict(inputs={"text_a": b64, "text_b": b})["outputs"], rows, atol=1e-7)
    # predict_ids with the client's own (padded) ids
    ids = c.predict(instances=[{k: v[i].tolist() for k, v in feats.items()} for i in range(len(a))],
                    signature_name="predict_ids")["predictions"]
    np.testing.assert_allclose(ids, rows, atol=1e-6)
    tok = c.predict(inputs=a, signature_name="tokenize")["outputs"]
    np.testing.assert_array_equal(tok["input_ids"], feats["x_ids"])
    np.testing.assert_array_equal(tok["attention_mask"], feats["x_mask"])


def test_encode_and_score_equal_onnxruntime(server, virt_export):
    a, b = PAIRS
    feats, _, _ = _reference(virt_export["loaded"], a, b, virt_export["out"] / "onnx" / "model.onnx")
    enc_sess, score_sess = (session(virt_export["out"] / "onnx" / f) for f in ("encode.onnx", "score.onnx"))
    hx, hy = (enc_sess.run(None, {"input_ids": feats[f"{s}_ids"], "attention_mask": feats[f"{s}_mask"]})[0]
              for s in "xy")
    c = server["client"]
    ex = c.predict(instances=a, signature_name="encode")["predictions"]  # bare values: one input
    ey = c.predict(inputs={"texts": b}, signature_name="encode")["outputs"]
    np.testing.assert_array_equal([r["mask"] for r in ex], feats["x_mask"])
    got_x = np.array([r["token_states"] for r in ex])
    np.testing.assert_allclose(got_x * feats["x_mask"][..., None], hx * feats["x_mask"][..., None], atol=1e-5)
    rows = [{"x_states": ex[i]["token_states"], "x_mask": ex[i]["mask"],
             "y_states": ey["token_states"][i], "y_mask": ey["mask"][i]} for i in range(len(a))]
    probs = c.predict(instances=rows, signature_name="score")["predictions"]
    want = score_sess.run(None, {"x_states": hx, "x_mask": feats["x_mask"], "y_states": hy, "y_mask": feats["y_mask"]})[0]
    np.testing.assert_allclose(probs, want, atol=1e-5)
    np.testing.assert_allclose(probs, c.predict_pairs(a, b), atol=1e-5)  # the inference split = the whole model


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(server, virt_export):
    a = [f"{x} number {i}" for i, x in enumerate(PAIRS[0] * 3)]
    b = [f"{y} {'again ' * (i % 4)}" for i, y in enumerate(PAIRS[1] * 3)]
    _, ort_out, _ = _reference(virt_export["loaded"], a, b, virt_export["out"] / "onnx" / "model.onnx")
    metrics = server["state"].metrics
    batches0, rows0 = metrics.batch_counts("predict_ids")
    barrier, results = threading.Barrier(len(a)), {}

    def one(i):
        with RestClient(server["url"], "virt") as c:
            barrier.wait()
            results[i] = c.predict_pairs([a[i]], [b[i]])[0]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(a))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    got = np.array([results[i] for i in range(len(a))])
    np.testing.assert_allclose(got, ort_out["probs"], atol=1e-5)  # batched with strangers == alone, in order
    batches, rows = metrics.batch_counts("predict_ids")
    assert rows - rows0 == len(a) and batches - batches0 < len(a), (batches - batches0)
    # a request larger than max_batch (8) is split over batches and reassembled in order
    big = server["client"].predict_pairs(a + a, b + b)
    np.testing.assert_allclose(big, np.concatenate([ort_out["probs"]] * 2), atol=1e-5)
    text = httpx.get(server["url"] + "/metrics").text
    assert 'textmatch_batch_rows_bucket{function="predict_ids",le="8"}' in text
    assert 'textmatch_requests_total{endpoint="predict",code="200"}' in text
    assert 'textmatch_request_seconds_count{endpoint="predict"}' in text


# ----------------------------------------------------------------------------- bad input and faults
BAD = [
    ("{not json", 400, "JSON Parse error"),
    ('"a string"', 400, "must be a JSON object"),
    ({"instances": [{"text_a": "x"}]}, 400, "instances[0]: missing input 'text_b'"),
    ({"instances": [{"text_a": "x", "text_b": 3}]}, 400, "instances[0].text_b: expected a string, got an integer"),
    ({"instances": {"text_a": "x"}}, 400, "'instances' must be a list"),
    ({"instances": []}, 400, "empty request"),
    ({"inputs": {"text_a": ["x", "y"], "text_b": ["z"]}}, 400, "batch sizes differ"),
    ({"inputs": {"text_a": "x", "text_b": "y"}}, 400, "inputs.text_a: expected a list"),
    ({"instances": [{"text_a": "x", "text_b": "y", "text_c": "z"}]}, 400, "unknown input 'text_c'"),
    ({"instances": [], "inputs": {}}, 400, "both 'inputs' and 'instances'"),
    ({"signature_name": "serving_default"}, 400, "Missing 'inputs' or 'instances' key"),
    ({"signature_name": 7, "instances": ["x"]}, 400, "signature_name: expected a string"),
    ({"signature_name": "classify", "instances": ["x"]}, 404, 'Serving signature name: "classify" not found'),
    ({"instances": [{"text_a": "x" * 201, "text_b": "y"}]}, 400, "201 characters is over the limit of 200 (serve.max_chars)"),
    ({"instances": [{"text_a": "x", "text_b": "y"}] * 33}, 400, "33 rows, over the limit of 32 (serve.max_texts)"),
    ({"instances": [{"text_a": {"b64": "!!"}, "text_b": "y"}]}, 400, "invalid base64"),
    ({"signature_name": "predict_ids", "instances": [{"x_ids": [2, 9999], "x_mask": [1, 1], "y_ids": [2],
                                                       "y_mask": [1]}]}, 400, "token ids must be in [0,"),
    ({"signature_name": "predict_ids", "instances": [{"x_ids": [2, 3], "x_mask": [1], "y_ids": [2],
                                                       "y_mask": [1]}]}, 400, "x_ids, x_mask differ in length"),
    ({"signature_name": "predict_ids", "instances": [{"x_ids": [2, 3.5], "x_mask": [1, 1], "y_ids": [2],
                                                       "y_mask": [1]}]}, 400, "x_ids: expected integers, got a number (3.5) at [1]"),
    ('{"signature_name": "predict_ids", "instances": [{"x_ids": [2, NaN], "x_mask": [1, 1], "y_ids": [2], "y_mask": [1]}]}',
     400, "instances[0].x_ids: expected integers, got NaN at [1]"),
    ({"signature_name": "predict_ids", "instances": [{"x_ids": [2, 2 ** 70], "x_mask": [1, 1], "y_ids": [2],
                                                       "y_mask": [1]}]}, 400, "x_ids: integers out of range"),
    ('{"instances":[{"text_a":"\\ud800","text_b":"y"}]}', 400,
     "instances[0].text_a: not valid Unicode text: a lone surrogate \\ud800 at character 0"),
    ('{"inputs":{"text_a":["x"],"text_b":["ok \\udfff"]}}', 400, "inputs.text_b[0]: not valid Unicode text"),
    ('{"instances":[{"text_a":"x","text_b":"y","\\ud800":1}]}', 400, "unknown input '\\ud800'"),  # echoed, escaped
    ('{"instances":' + "[" * 50_000 + "]" * 50_000 + "}", 400, "JSON Parse error: nested too deeply"),
    ({"signature_name": "predict_ids", "instances": [{"x_ids": json.loads("[" * 200 + "1" + "]" * 200),
                                                       "x_mask": [1], "y_ids": [2], "y_mask": [1]}]}, 400, "x_ids"),
    ({"signature_name": "predict_ids", "instances": [{"x_ids": [2], "x_mask": [0], "y_ids": [2],
                                                       "y_mask": [1]}]}, 400, "no token is unmasked"),
    ({"signature_name": "predict_ids", "instances": [{"x_ids": list(range(65)), "x_mask": [1] * 65, "y_ids": [2],
                                                       "y_mask": [1]}]}, 400, "over the model's 64 positions"),
    ({"signature_name": "score", "instances": [{"x_states": [[0.0] * 31], "x_mask": [1], "y_states": [[0.0] * 32],
                                                 "y_mask": [1]}]}, 400, "expected [T <= 64, 32]"),
    ({"signature_name": "score", "instances": [{"x_states": [[0.0] * 32, [1.0]], "x_mask": [1, 1],
                                                 "y_states": [[0.0] * 32], "y_mask": [1]}]}, 400, "ragged"),
]


def test_bad_requests_get_a_clean_4xx_and_the_server_keeps_serving(server, caplog, monkeypatch):
    from runtime.logs import RateLimitedLog

    url = server["url"]
    monkeypatch.setattr("serve.app.LIMITED", RateLimitedLog(period=60, burst=5))
    caplog.set_level(logging.INFO, logger="serve")
    for body, code, message in BAD:
        got_code, got = _post(url, "/v1/models/virt:predict", body, raw=isinstance(body, str))
        assert (got_code, set(got)) == (code, {"error"}), (str(body)[:300], got)
        assert message in got["error"], (message, got["error"])
    # one line per client error, no traceback (and at most 5 a minute per endpoint and code)
    lines = [r.getMessage() for r in caplog.records if r.name == "serve"]
    assert len(lines) == 6 and not any(r.exc_info for r in caplog.records), lines  # 5 of the 400s, the 404
    assert lines[0] == "predict 400: JSON Parse error: Expecting property name enclosed in double quotes: " \
                       "line 1 column 2 (char 1)"
    for method, path, code, message in [
            ("POST", "/v1/models/virt:classify", 400, "only :predict"),
            ("GET", "/v1/models/virt:predict", 405, "use POST"),
            ("POST", "/v1/models/virt", 405, "use GET"),
            ("GET", "/v1/models/virt/versions/x", 400, "Failed to convert version: x"),
            ("GET", "/v2/whatever", 404, "Malformed request: GET /v2/whatever"),
            ("POST", "/v1/search", 404, "no search index on this server")]:
        resp = httpx.request(method, url + path, json={"queries": ["x"]} if method == "POST" else None)
        assert resp.status_code == code and message in resp.json()["error"], (path, resp.text)
    assert server["state"].batcher._thread.is_alive()
    # empty strings are valid input (the SavedModel's serving_default scores them too)
    assert len(server["client"].predict_pairs(["", "ok"], ["", "fine"])) == 2


@pytest.mark.parametrize("path, code, message", [
    ("/versions/" + "9" * 5000, 400, "Failed to convert version: " + "9" * 100 + "... (5000 characters)"),
    ("/versions/" + "9" * 19, 400, "Failed to convert version: " + "9" * 19),  # past int64
    ("/versions/%C2%B2", 400, "Failed to convert version: \u00b2"),  # '²'.isdigit(), but not an integer
    ("/versions/0001", 200, None),
    ("/versions/" + "1" * 18, 404, "Servable not found for request: Specific(virt, " + "1" * 18 + ")"),
    ("x" * 5000, 404, "Servable not found for request: Latest(virt" + "x" * 89 + "... (5012 characters)"),
])
def test_path_parameters_are_parsed_in_one_place_with_bounded_sizes(server, path, code, message):
    """A version is TF Serving's int64 in ASCII digits (5,000 nines were a 500: int() refuses over 4,300
    digits); what an error quotes of the path is cut."""
    for suffix in ("", "/metadata"):
        resp = httpx.get(server["url"] + "/v1/models/virt" + path + suffix)
        assert resp.status_code == code, (path[:50], resp.text[:300])
        assert message is None or resp.json() == {"error": message}


def test_the_load_tests_bad_requests_get_their_4xx(server):
    """bench/load_test.py --mix sends these under load and counts any other answer as an error."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from load_test import bad_bodies

    for body, code in bad_bodies(False, LIMITS.max_texts, LIMITS.max_chars):
        got_code, got = _post(server["url"], "/v1/models/virt:predict", body, raw=True)
        assert (got_code, set(got)) == (code, {"error"}), (body[:100], got)


def test_a_failing_batch_fails_its_requests_only(server, monkeypatch):
    backend, calls = server["backend"], []
    real = backend.run

    def flaky(fn, feeds):
        calls.append(fn)
        if len(calls) == 1:
            raise RuntimeError("injected onnxruntime failure")
        return real(fn, feeds)

    monkeypatch.setattr(backend, "run", flaky)
    code, body = _post(server["url"], "/v1/models/virt:predict", {"instances": [{"text_a": "a", "text_b": "b"}]})
    assert code == 500 and "injected onnxruntime failure" in body["error"]
    assert len(server["client"].predict_pairs(["a"], ["b"])) == 1  # the worker survived


def test_repeated_faults_log_a_few_tracebacks_then_count_the_rest(caplog):
    from runtime.logs import RateLimitedLog

    now = [0.0]
    limited, log = RateLimitedLog(period=60, burst=2, clock=lambda: now[0]), logging.getLogger("serve")
    caplog.set_level(logging.INFO, logger="serve")
    for i in range(30):
        try:
            raise RuntimeError(f"fault {i}")
        except RuntimeError:
            limited.log(log, logging.ERROR, ("predict", 500, "RuntimeError"), "failed %d", i, exc_info=True)
        limited.log(log, logging.INFO, ("predict", 400), "bad %d", i)
    assert [r.getMessage() for r in caplog.records] == ["failed 0", "bad 0", "failed 1", "bad 1"]
    assert all(r.exc_info for r in caplog.records if r.levelno == logging.ERROR)
    now[0] = 61.0
    limited.log(log, logging.INFO, ("predict", 400), "bad again")
    assert caplog.records[-1].getMessage() == "bad again (28 more like this in the previous 60 s not logged)"


def test_a_large_request_does_not_hold_back_a_small_one():
    """Least-served first: a one-row request sent after a 64-row one (8 batches) runs in the next batch."""
    from runtime.backends import Function
    from runtime.batching import MicroBatcher

    class Slow:
        functions = {"f": Function(("x",), ("y",))}
        tokenizer = type("T", (), {"pad_id": 0})

        def __init__(self):
            self.batches = []

        def run(self, fn, feeds):
            self.batches.append(feeds["x"][:, 0].tolist())
            time.sleep(0.05)
            return {"y": feeds["x"][:, 0] * 2}

    be = Slow()
    batcher = MicroBatcher(be, max_batch=8, max_wait_ms=0)
    try:
        big = batcher.submit("f", [{"x": np.array([i], np.int32)} for i in range(64)])
        time.sleep(0.02)  # the big request's first batch is running
        small = batcher.submit("f", [{"x": np.array([1000], np.int32)}])
        assert small.result(5)[0]["y"] == 2000
        assert not big.done()
        assert [r["y"] for r in big.result(5)] == [2 * i for i in range(64)]
    finally:
        batcher.close()
    assert 1000 in be.batches[1], be.batches  # the next batch, not the ninth


def test_a_request_of_mixed_lengths_is_batched_shortest_first_each_batch_padded_to_its_own_longest():
    """16 rows alternating 60 and 5 tokens, batches of 8: the batcher sorts the request's rows by
    length before padding (as run_in_batches does), so one batch pads to 5 tokens and one to 60
    (in arrival order both would pad to 60: 960 tokens instead of 520); every row gets the result
    it gets alone, in the request's order. Siamese rows sort by the sum of their two texts."""
    from runtime.backends import Function
    from runtime.batching import MicroBatcher

    class Recording:
        functions = {"f": Function(("x", "x_mask"), ("y",)),
                     "pair": Function(("x", "x_mask", "z", "z_mask"), ("y",))}
        tokenizer = type("T", (), {"pad_id": 0})

        def __init__(self):
            self.shapes = []

        def run(self, fn, feeds):
            self.shapes.append(tuple(feeds[n].shape[1] for n in self.functions[fn].inputs if n.endswith("mask")))
            y = feeds["x"].sum(1) * 1000 + feeds["x_mask"].sum(1)
            return {"y": y + feeds["z"].sum(1) * 10 ** 6 if fn == "pair" else y}

    def text(tag, length):
        return np.array([tag] + [1] * (length - 1), np.int32), np.ones(length, np.int32)

    def run(fn, rows, max_batch):
        be = Recording()
        batcher = MicroBatcher(be, max_batch=max_batch, max_wait_ms=0)
        try:
            return [r["y"] for r in batcher.run(fn, rows)], be
        finally:
            batcher.close()

    lengths = [60, 5] * 8
    rows = [dict(zip(("x", "x_mask"), text(i, n))) for i, n in enumerate(lengths)]
    got, be = run("f", rows, 8)
    assert got == [(i + n - 1) * 1000 + n for i, n in enumerate(lengths)]  # the request's order, unpadded results
    assert sorted(be.shapes) == [(5,), (60,)], be.shapes
    assert sum(8 * length for (length,) in be.shapes) == 520

    # pairs of 32, 6, 32 and 8 tokens in 2-row batches: the two short pairs together, padded to
    # (4, 4), then the long ones to (30, 30); in arrival order they would pad to (30, 3) and (4, 30)
    sides = [(30, 2), (3, 3), (2, 30), (4, 4)]
    pairs = [{**dict(zip(("x", "x_mask"), text(i, a))), **dict(zip(("z", "z_mask"), text(1, b)))}
             for i, (a, b) in enumerate(sides)]
    got, be = run("pair", pairs, 2)
    assert be.shapes == [(4, 4), (30, 30)], be.shapes
    assert got == [(i + a - 1) * 1000 + a + b * 10 ** 6 for i, (a, b) in enumerate(sides)]


@pytest.mark.parametrize("max_batch_tokens", [256, 512])
def test_a_small_request_waits_a_token_budget_not_a_batch_of_long_rows(max_batch_tokens):
    """A stub backend whose cost is rows x padded length (the CPU's case): a one-row request sent
    while a request of 64 rows of 64 tokens runs is answered after at most two batches of
    `max_batch_tokens` tokens (the one running, then its own), not after two 32-row batches
    (4,096 tokens: rows-only batching, max_batch_tokens=0, fails here). Every row's result is
    the one it gets alone."""
    from runtime.backends import Function
    from runtime.batching import MicroBatcher

    class Costly:
        functions = {"f": Function(("x", "x_mask"), ("y",))}
        tokenizer = type("T", (), {"pad_id": 0})

        def __init__(self):
            self.batches, self.tokens, self.done_at = [], 0, {}
            self.first_running, self.release = threading.Event(), threading.Event()

        def run(self, fn, feeds):
            n, length = feeds["x"].shape
            self.batches.append((n, length))
            self.first_running.set()
            self.release.wait(5)  # the first batch runs until the small request is queued
            time.sleep(n * length * 2e-6)
            self.tokens += n * length
            for tag in feeds["x"][:, 0].tolist():
                self.done_at[tag] = self.tokens  # tokens run when this row's batch ended
            return {"y": feeds["x"].sum(1) * feeds["x_mask"].sum(1)}

    def row(tag, length):
        return {"x": np.array([tag] + [1] * (length - 1), np.int32), "x_mask": np.ones(length, np.int32)}

    be = Costly()
    batcher = MicroBatcher(be, max_batch=32, max_wait_ms=0, max_batch_tokens=max_batch_tokens)
    try:
        big = batcher.submit("f", [row(i, 64) for i in range(64)])
        assert be.first_running.wait(5)
        small = batcher.submit("f", [row(1000, 5)])
        be.release.set()
        assert small.result(5)[0]["y"] == (1000 + 4) * 5  # padding does not change a row's result
        assert [r["y"] for r in big.result(5)] == [(i + 63) * 64 for i in range(64)]
    finally:
        batcher.close()
    assert be.done_at[1000] <= 2 * max_batch_tokens, (be.done_at[1000], be.batches)
    assert all(n * length <= max_batch_tokens for n, length in be.batches), be.batches
    assert sum(n for n, _ in be.batches) == 65
    # a function that does not run the encoder (VIRT's score head) is batched by rows only
    be = Costly()
    be.functions = {"f": Function(("x", "x_mask"), ("y",), encoder=False)}
    be.release.set()
    batcher = MicroBatcher(be, max_batch=32, max_wait_ms=0, max_batch_tokens=max_batch_tokens)
    try:
        batcher.run("f", [row(i, 64) for i in range(64)])
    finally:
        batcher.close()
    assert be.batches == [(32, 64), (32, 64)], be.batches


def test_warm_up_calls_every_function_per_length_at_one_row_and_a_full_batch(virt_export):
    """serve.warmup: one call per function, length (capped at the export's 32 tokens) and row count:
    1 row and the most the batcher puts in a batch of that length (8 rows, fewer under 64 tokens:
    predict_ids pads two texts, VIRT's score head is batched by rows only)."""
    backend, fed = open_model(virt_export["out"], backend="onnx"), []
    real = backend.run

    def run(fn, feeds):
        fed.append((fn, {k: v.shape for k, v in feeds.items()}))
        return real(fn, feeds)

    backend.run = run
    state = ServerState(backend, max_batch=8, max_batch_tokens=64)
    try:
        calls = state.warm_up([4, 10_000])
    finally:
        state.close()
    assert sorted((fn, n, length) for _, fn, n, length, _ in calls) == [
        ("encode_ids", 1, 4), ("encode_ids", 1, 32), ("encode_ids", 2, 32), ("encode_ids", 8, 4),
        ("predict_ids", 1, 4), ("predict_ids", 1, 32), ("predict_ids", 8, 4),
        ("score", 1, 4), ("score", 1, 32), ("score", 8, 4), ("score", 8, 32)]
    assert all(name == "virt" and seconds > 0 for name, *_, seconds in calls)
    assert ("score", {"x_states": (8, 32, 32), "x_mask": (8, 32), "y_states": (8, 32, 32), "y_mask": (8, 32)}) in fed
    assert ("predict_ids", {"x_ids": (8, 4), "x_mask": (8, 4), "y_ids": (8, 4), "y_mask": (8, 4)}) in fed


def test_a_token_budget_splits_batches_and_keeps_the_scores(virt_export):
    """Real model: requests batched under a small token budget get the scores they get alone."""
    a = [f"{x} number {i}" for i, x in enumerate(PAIRS[0] * 2)]
    b = [f"{y} {'again ' * (i % 4)}" for i, y in enumerate(PAIRS[1] * 2)]
    _, ort_out, _ = _reference(virt_export["loaded"], a, b, virt_export["out"] / "onnx" / "model.onnx")
    backend, shapes = open_model(virt_export["out"], backend="onnx"), []
    real = backend.run

    def run(fn, feeds):
        shapes.append((len(feeds["x_ids"]), feeds["x_ids"].shape[1] + feeds["y_ids"].shape[1]))
        return real(fn, feeds)

    backend.run = run
    state = ServerState(backend, max_batch=8, max_wait_ms=30, max_batch_tokens=40)
    with BackgroundServer(state) as url:
        c = RestClient(url, "virt")
        results = {}
        threads = [threading.Thread(target=lambda i: results.update({i: c.predict_pairs([a[i]], [b[i]])[0]}),
                                    args=(i,)) for i in range(len(a))]
        for t in threads:
            t.start()
        together = c.predict_pairs(a, b)  # one request over several batches, with the others
        for t in threads:
            t.join(30)
    np.testing.assert_allclose([results[i] for i in range(len(a))], ort_out["probs"], atol=1e-5)
    np.testing.assert_allclose(together, ort_out["probs"], atol=1e-5)
    assert sum(n for n, _ in shapes) == 2 * len(a), shapes
    assert all(n * length <= 40 or n == 1 for n, length in shapes), shapes  # padded x and y tokens
    assert max(n for n, _ in shapes) > 1, shapes  # still batched


def test_a_100k_character_pair_is_scored_in_little_memory_and_time(model_dirs):  # noqa: F811
    """The cross-encoder pair that drove the server to 22 GB: 100,000 characters a side."""
    from tests.test_long_inputs import peak_extra_mb

    backend = open_model(model_dirs["cross_encoder"])
    with BackgroundServer(ServerState(backend, max_batch=4, max_wait_ms=1,
                                      limits=Limits(max_texts=4, max_chars=100_008))) as url:
        c = RestClient(url, backend.name, timeout=20)
        c.predict_pairs(["warm up"], ["the server"])
        a, b = "汉字" * 50_000, "how do I reset my password " * 3704
        mb, seconds = peak_extra_mb(lambda: c.predict_pairs([a, b], [b, a]))
        print(f"server: two 100k-character pairs {mb:.1f} MB {seconds:.2f} s")
        assert mb < 50 and seconds < 1.0, (mb, seconds)
        short = c.predict_pairs([a[:2000], b[:2001]], [b[:2001], a[:2000]])  # the same tokens kept
        np.testing.assert_allclose(c.predict_pairs([a, b], [b, a]), short, atol=1e-6)


def test_client_disconnect_is_logged_and_dropped(server, monkeypatch, caplog):
    backend, ran = server["backend"], []
    real = backend.run

    def slow(fn, feeds):
        ran.append(len(feeds["x_ids"]))
        time.sleep(0.6)
        return real(fn, feeds)

    monkeypatch.setattr(backend, "run", slow)
    host, port = server["url"].removeprefix("http://").split(":")
    body = json.dumps({"instances": [{"text_a": "leaving", "text_b": "soon"}]}).encode()
    caplog.set_level(logging.INFO)
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/models/virt:predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(0.2)  # the request is in the batch that is running now
    metrics = server["state"].metrics
    deadline = time.monotonic() + 10
    while 'code="499"' not in metrics.render() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert 'textmatch_requests_total{endpoint="predict",code="499"} 1' in metrics.render()
    assert any("client disconnected" in r.getMessage() for r in caplog.records)
    assert len(server["client"].predict_pairs(["still"], ["here"])) == 1
    deadline = time.monotonic() + 5  # the dropped result is counted once its batch finished
    while 'textmatch_cancelled_total{function="predict_ids"}' not in metrics.render() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert 'textmatch_cancelled_total{function="predict_ids"} 1' in metrics.render()


def _connect(server):
    host, port = server["url"].removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def _read_answer(sock):
    """Everything the server sends until it closes the connection -> (status, JSON body)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body), head.lower()


def _count(state, endpoint, code):
    prefix = f'textmatch_requests_total{{endpoint="{endpoint}",code="{code}"}} '
    return next((int(line[len(prefix):]) for line in state.metrics.render().splitlines() if line.startswith(prefix)), 0)


HALF = (b"POST /v1/models/virt:predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n" + b'{"instances": [{"text_a": "half')


def test_clients_that_leave_while_sending_their_body_are_499s_not_500s(server, caplog):
    """50 clients send a head and half a body, then close: each is a disconnect (499, one WARNING line
    without a traceback, rate-limited), not a fault (starlette's ClientDisconnect was a 500 with a traceback)."""
    state = server["state"]
    before, faults = _count(state, "predict", 499), _count(state, "predict", 500)
    caplog.set_level(logging.INFO)
    for _ in range(50):
        with _connect(server) as sock:
            sock.sendall(HALF)
            time.sleep(0.01)
    deadline = time.monotonic() + 10
    while _count(state, "predict", 499) < before + 50 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (_count(state, "predict", 499), _count(state, "predict", 500)) == (before + 50, faults), state.metrics.render()
    assert not any(r.exc_info or r.levelno >= logging.ERROR for r in caplog.records), caplog.text[-3000:]
    lines = [r.getMessage() for r in caplog.records if "disconnected" in r.getMessage()]
    assert 1 <= len(lines) <= 6 and lines[0].startswith("client disconnected: predict request dropped after"), lines
    assert len(server["client"].predict_pairs(["still"], ["here"])) == 1


def test_stalled_requests_time_out_with_408_and_are_closed(server, monkeypatch):
    """serve.request_timeout_s bounds how long a client may take to send its head, then its body: one that
    stops half-way gets 408 and its connection is closed (it held a request and its bytes forever); one that
    sends nothing is closed."""
    state = server["state"]
    monkeypatch.setattr(state, "request_timeout_s", 0.5)
    before = _count(state, "predict", 408), _count(state, "http", 408)
    t0 = time.monotonic()
    with _connect(server) as body, _connect(server) as head, _connect(server) as idle:
        body.sendall(HALF)
        head.sendall(HALF[:40])
        got = {name: _read_answer(sock) if name != "idle" else sock.recv(1)
               for name, sock in (("body", body), ("head", head), ("idle", idle))}
    assert time.monotonic() - t0 < 5
    code, answer, headers = got["body"]
    assert (code, answer) == (408, {"error": "request body not complete within 0.5 s (serve.request_timeout_s): "
                                             "got 31 of 100 bytes"}) and b"connection: close" in headers
    code, answer, _ = got["head"]
    assert (code, answer) == (408, {"error": "request head not complete within 0.5 s (serve.request_timeout_s): "
                                             "got 40 bytes"})
    assert got["idle"] == b""  # closed without an answer
    assert (_count(state, "predict", 408), _count(state, "http", 408)) == (before[0] + 1, before[1] + 1)
    assert len(server["client"].predict_pairs(["still"], ["here"])) == 1


def test_a_head_over_16_kib_gets_431_however_it_arrives(server):
    """2,000 headers: h11 measures its buffer only when it needs more data, so in one read they were taken
    (200) and in small ones refused with uvicorn's plain 400 and a reset that hid it. Now 431 both ways, and the
    connection is closed after the client has sent its head (a lingering close), so the client reads it."""
    headers = {f"x-header-{i}": "v" * 20 for i in range(2000)}
    resp = httpx.get(server["url"] + "/healthz", headers=headers)
    assert resp.status_code == 431 and resp.json() == {"error": "request line and headers over 16384 bytes"}
    head = b"GET /healthz HTTP/1.1\r\nHost: test\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items())
    with _connect(server) as sock:
        for i in range(0, len(head), 1000):  # in pieces, as a slow client sends it
            sock.sendall(head[i:i + 1000])
        sock.sendall(b"\r\n")
        code, answer, _ = _read_answer(sock)
    assert (code, answer["error"]) == (431, "request line and headers over 16384 bytes")
    assert httpx.get(server["url"] + "/healthz", headers=dict(list(headers.items())[:100])).status_code == 200
    assert _count(server["state"], "http", 431) == 2


def test_a_bad_head_says_what_h11_found_and_a_compressed_body_is_415(server):
    """Both were vague: uvicorn answers any head h11 refuses with "Invalid HTTP request received." (h11's
    reason dropped), and a gzip body was parsed as JSON (an error on byte 0x1f)."""
    for bad, why in ((b"Content-Length: abc", "Content-Length"), (b"Content-Length: -5", "Content-Length"),
                     (b"Content-Length: 2\r\nContent-Length: 3", "Content-Length")):
        with _connect(server) as sock:
            sock.sendall(b"POST /v1/models/virt:predict HTTP/1.1\r\nHost: test\r\n" + bad + b"\r\n\r\n{}")
            code, answer, _ = _read_answer(sock)
        assert code == 400 and why in answer["error"] and "Invalid HTTP request received" not in answer["error"], answer
    resp = httpx.post(server["url"] + "/v1/models/virt:predict", content=gzip.compress(b'{"instances": []}'),
                      headers={"content-encoding": "gzip", "content-type": "application/json"})
    assert resp.status_code == 415 and "Content-Encoding 'gzip' is not supported" in resp.json()["error"]


# ----------------------------------------------------------------------------- other backends
def test_savedmodel_backend_serves_the_same_numbers(virt_export, server):
    a, b = PAIRS
    backend = open_model(virt_export["out"], backend="tf")
    assert backend.runtime == "tf" and backend.name == "virt" and backend.version == 1
    with BackgroundServer(ServerState(backend, max_batch=4, max_wait_ms=1)) as url:
        c = RestClient(url, "virt")
        np.testing.assert_allclose(c.predict_pairs(a, b), server["client"].predict_pairs(a, b), atol=1e-5)
        enc = c.predict(inputs=a, signature_name="encode")["outputs"]
        ref = server["client"].predict(inputs=a, signature_name="encode")["outputs"]
        mask = np.array(ref["mask"])[..., None]
        np.testing.assert_allclose(np.array(enc["token_states"]) * mask, np.array(ref["token_states"]) * mask, atol=1e-5)


def test_open_model_errors(workdir, model_dirs, virt_export):  # noqa: F811
    with pytest.raises(BackendError, match="no such directory"):
        open_model(workdir / "nowhere")
    with pytest.raises(BackendError, match=r"not a model directory \(no model.json\).*export directory"):
        open_model(workdir)
    with pytest.raises(BackendError, match="int8 needs an export directory"):
        open_model(model_dirs["virt"], int8=True)
    onnx_dir = virt_export["out"] / "onnx"
    with pytest.raises(BackendError, match=r"model.int8.onnx: missing; .*export.int8=true"):
        for name in ("model.int8.onnx", "model.fused.int8.onnx"):  # neither int8 file: an error
            (onnx_dir / name).rename(virt_export["out"] / f"{name}.bak")
        try:
            open_model(virt_export["out"], backend="onnx", int8=True)
        finally:
            for name in ("model.int8.onnx", "model.fused.int8.onnx"):
                (virt_export["out"] / f"{name}.bak").rename(onnx_dir / name)
    assert open_model(virt_export["out"], "onnx", int8=True).files["predict_ids"].name == "model.fused.int8.onnx"
    assert open_model(virt_export["out"], "onnx", int8=True, fused=False).files["predict_ids"].name == "model.int8.onnx"


# ----------------------------------------------------------------------------- clients, command
def test_grpc_predict_request_construction():
    from tensorflow_serving.apis import predict_pb2

    req = GrpcClient.request("qm", {"text_a": ["how do I reset it?", "密码"], "text_b": ["reset", "改"]})
    assert isinstance(req, predict_pb2.PredictRequest)
    assert (req.model_spec.name, req.model_spec.signature_name) == ("qm", "serving_default")
    assert not req.model_spec.HasField("version")
    assert req.inputs["text_a"].dtype == tf.string.as_datatype_enum
    assert [s.decode() for s in tf.make_ndarray(req.inputs["text_a"])] == ["how do I reset it?", "密码"]
    ids = GrpcClient.request("qm", {"input_ids": [[2, 7, 3]], "attention_mask": [[1, 1, 1]]}, "predict_ids", version=3)
    assert ids.model_spec.version.value == 3 and ids.model_spec.signature_name == "predict_ids"
    assert ids.inputs["input_ids"].dtype == tf.int32.as_datatype_enum
    assert [d.size for d in ids.inputs["input_ids"].tensor_shape.dim] == [1, 3]
    np.testing.assert_array_equal(tf.make_ndarray(ids.inputs["attention_mask"]), [[1, 1, 1]])
    states = GrpcClient.request("qm", {"x_states": np.zeros((1, 2, 4))}, "score")
    assert states.inputs["x_states"].dtype == tf.float32.as_datatype_enum
    assert predict_pb2.PredictRequest.FromString(req.SerializeToString()) == req


def test_serve_command(serve_command, virt_export):
    import run_tasks

    assert run_tasks.main(["--task", "serve"]) == 1  # serve.model unset: one error line
    proc, url = serve_command
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        assert len(RestClient(url, "virt").predict_pairs(*PAIRS)) == len(PAIRS[0])
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal: run_tasks turns it into exit 143
    # (128 + SIGTERM, as a shell reports it) after releasing the run's lock (run_tasks.terminate_as_exit)
    assert proc.returncode in (0, 143, -signal.SIGTERM) and "Traceback" not in err, err[-3000:]
    assert f"serving virt model 'virt' version 1 (onnx: model.fused.onnx, encode.fused.onnx, score.onnx; {virt_export['out']})" in err


def test_python_api_loads_an_export_directory_and_scores_as_keras(virt_export, model_dirs):  # noqa: F811
    """textmatch.load on the export (ONNX Runtime) gives the model directory's (Keras) numbers."""
    import textmatch

    onnx, keras_ = textmatch.load(virt_export["out"], backend="onnx"), textmatch.load(model_dirs["virt"])
    assert onnx.backend.runtime == "onnx" and keras_.backend.runtime == "keras"
    pairs = list(zip(*PAIRS))
    np.testing.assert_allclose(onnx.predict(pairs), keras_.predict(pairs), atol=1e-4)
    np.testing.assert_allclose(onnx.encode(PAIRS[0]), keras_.encode(PAIRS[0]), atol=1e-4)
    assert [i for i, _, _ in onnx.rank(PAIRS[0][0], PAIRS[1])] == [i for i, _, _ in keras_.rank(PAIRS[0][0], PAIRS[1])]


# A user's script, as `python script.py` runs it from any directory (README "Python API"). Here rather than in
# test_api.py: this module builds the export directory anyway.
API_SCRIPT = """
import json, logging, sys
import textmatch
keras_, onnx = textmatch.load(sys.argv[1]), textmatch.load(sys.argv[2], backend="onnx")
logging.basicConfig(level=logging.INFO)  # a user's logging set-up: faiss's loader logs at INFO when imported
import faiss  # noqa: F401  (search's recall)
pair = (sys.argv[3], sys.argv[4])
print(json.dumps({"file": textmatch.__file__, "keras": keras_.predict(pair).tolist(),
                  "onnx": onnx.predict(pair).tolist()}))
"""


def test_python_api_from_any_directory_without_start_up_noise(virt_export, model_dirs, tmp_path):  # noqa: F811
    """`make install` puts the repository on the venv's import path (a .pth file), so a fresh process in a
    directory outside the repository, started as a user's shell would (no PYTHONPATH, no TF_CPP_MIN_LOG_LEVEL),
    imports textmatch, loads a model directory (Keras) and an export (ONNX Runtime) and predicts the
    reference's numbers, with an empty stderr: no TensorFlow start-up line (cuInit, cudart, oneDNN), no
    transformers PyTorch notice, no faiss loader line."""
    import os
    import subprocess

    from tests.tiny_runs import PYTHON, ROOT

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES")
           and not k.startswith("TRANSFORMERS_")}
    a, b = PAIRS[0][0], PAIRS[1][0]
    r = subprocess.run([str(PYTHON), "-c", API_SCRIPT, str(model_dirs["virt"]), str(virt_export["out"]), a, b],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"(`make install` writes the .pth that finds textmatch)\n{r.stderr[-3000:]}"
    assert r.stderr == ""
    out = json.loads(r.stdout)
    assert out["file"] == str(ROOT / "textmatch.py")  # this checkout's, not another clone's
    want = parity_mod.keras_outputs(virt_export["loaded"], parity_mod.python_features(virt_export["loaded"], [a], [b],
                                                                                      MAX_LEN)[0])["probs"][0]
    np.testing.assert_allclose(out["keras"], want, atol=1e-5)
    np.testing.assert_allclose(out["onnx"], want, atol=1e-4)


# Issue 28: an export is served, predicted with and loaded from Python with the serving set alone
# (requirements-serve.txt). Every import of a package that only requirements.txt adds fails here.
SERVING_SET_SCRIPT = """
import importlib.abc, json, sys, urllib.request
BLOCKED = set(sys.argv[1].split(","))

class NotInTheServingSet(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ImportError(f"import {name}: not in the serving set")

sys.meta_path.insert(0, NotInTheServingSet())
export, pairs_file, out_csv, config = sys.argv[2:6]
a, b = json.loads(sys.argv[6])
import textmatch
from config import load_config
from crossenc.predict import predict
from runtime.backends import open_model
from serve.app import ServerState
from serve.task import BackgroundServer
out = {}
for backend in sys.argv[7].split(","):
    m = textmatch.load(export, backend=backend)
    res = out[backend] = {"predict": m.predict(list(zip(a, b))).tolist(), "encode": m.encode(a).tolist(),
                          "rank": [[i, score] for i, _, score in m.rank(a[0], b)]}
    predict(load_config(config, [f"model.init={export}", f"data.test={pairs_file}", f"out={out_csv}.{backend}",
                                 f"serve.backend={backend}"]))
    with BackgroundServer(ServerState(open_model(export, backend=backend), max_batch=4)) as url:
        body = json.dumps({"instances": [{"text_a": x, "text_b": y} for x, y in zip(a, b)]}).encode()
        res["serve"] = json.load(urllib.request.urlopen(url + "/v1/models/virt:predict", body))["predictions"]
        res["runtime"] = json.load(urllib.request.urlopen(url + "/v1/models/virt/metadata"))["textmatch"]["runtime"]
out["modules"] = sorted({k.partition(".")[0] for k in sys.modules})
print(json.dumps(out))
"""


def training_only_modules():
    """Top-level import names of the packages requirements.txt adds to the serving set."""
    from tools.check_requirements import DISTRIBUTIONS, RUNTIME, SERVE, read_requirements
    from tests.tiny_runs import ROOT

    module_of = {dist: module.partition(".")[0] for module, dist in DISTRIBUTIONS.items()}
    serve = {name for _, _, name, _ in read_requirements(ROOT / SERVE) if name}
    return sorted(module_of.get(name, name.replace("-", "_")) for _, _, name, _ in read_requirements(ROOT / RUNTIME)
                  if name and name not in serve)


def test_an_export_is_served_predicted_and_loaded_without_tensorflow_or_keras(virt_export, model_dirs, tmp_path):  # noqa: F811
    """With every package outside requirements-serve.txt made unimportable, textmatch.load, --task predict's
    function and the server run the export through onnxruntime and OpenVINO and give the Keras model
    directory's numbers (onnx 1e-4; openvino 2e-2: fp16 weights, bf16 where the CPU has it)."""
    import csv
    import os
    import subprocess

    import textmatch
    from tests.tiny_runs import PYTHON, ROOT, write_csv

    blocked = training_only_modules()
    assert {"tensorflow", "keras", "transformers", "tf2onnx"} <= set(blocked)
    a, b = zip(*[(x, y) for x, y in zip(*PAIRS) if x and y])  # a pair file's empty text is a bad row
    a, b = list(a), list(b)
    pairs_file = write_csv(tmp_path / "pairs.csv", [(x, y, "") for x, y in zip(a, b)])
    out_csv = tmp_path / "predict.csv"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([str(PYTHON), "-c", SERVING_SET_SCRIPT, ",".join(blocked), str(virt_export["out"]), pairs_file,
                        str(out_csv), str(ROOT / "config" / "finetune.yaml"), json.dumps([a, b]), "onnx,openvino"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert not set(result["modules"]) & set(blocked) and "openvino" in result["modules"]
    keras_ = textmatch.load(model_dirs["virt"])
    want = keras_.predict(list(zip(a, b)))
    for backend, tol in (("onnx", 1e-4), ("openvino", 2e-2)):
        got = result[backend]
        assert got["runtime"] == backend
        np.testing.assert_allclose(got["predict"], want, atol=tol, err_msg=backend)
        np.testing.assert_allclose(got["serve"], want, atol=tol, err_msg=backend)
        np.testing.assert_allclose(got["encode"], keras_.encode(a), atol=tol, err_msg=backend)
        np.testing.assert_allclose(sorted(s for _, s in got["rank"]), sorted(s for _, _, s in keras_.rank(a[0], b)),
                                   atol=tol, err_msg=backend)
        rows = list(csv.DictReader(Path(f"{out_csv}.{backend}").open(encoding="utf-8")))
        np.testing.assert_allclose([[float(r["p_0"]), float(r["p_1"])] for r in rows], want, atol=tol, err_msg=backend)
    assert [i for i, _ in result["onnx"]["rank"]] == [i for i, _, _ in keras_.rank(a[0], b)]


def test_serving_json_is_the_model_classes_spec_and_an_export_without_it_still_loads(virt_export, tmp_path):
    """The export's serving.json says what the kind's class says; an export made before the file existed is
    read through the class (Keras), and a damaged file is refused naming it."""
    import shutil

    from modeling.model_dir import kind_class
    from modeling.serving_spec import SPEC_FILE, read_spec, spec_of

    out = virt_export["out"]
    meta = json.loads((out / "model.json").read_text(encoding="utf-8"))
    spec = read_spec(out)
    assert spec == spec_of(kind_class(meta), meta["model"]["config"]) and not spec.joint_pair()
    old = tmp_path / "old_export"
    shutil.copytree(out, old, ignore=shutil.ignore_patterns("saved_model", "withheld"))
    (old / SPEC_FILE).unlink()
    assert open_model(old).spec == spec
    (old / SPEC_FILE).write_text('{"format": "textmatch-serving-spec", "kind": "virt"}', encoding="utf-8")
    with pytest.raises(BackendError, match=f"{old / SPEC_FILE}: not a serving spec written by the export"):
        open_model(old)


def _export_copy(virt_export, tmp_path, timings):
    """The virt export without its SavedModel, with parity.json's `timings` replaced (None: removed)."""
    import shutil

    out = tmp_path / "timed"
    shutil.copytree(virt_export["out"], out, ignore=shutil.ignore_patterns("saved_model", "frozen"))
    report = json.loads((out / "parity.json").read_text(encoding="utf-8"))
    report.pop("timings", None)
    if timings is not None:
        report["timings"] = timings
    (out / "parity.json").write_text(json.dumps(report), encoding="utf-8")
    return out


def test_auto_picks_the_fastest_recorded_artifact(virt_export, tmp_path, caplog):
    """`auto` follows parity.json's timings; int8 competes unless refused; no timings: the fixed order."""
    recorded = json.loads((virt_export["out"] / "parity.json").read_text(encoding="utf-8"))["timings"]
    assert set(recorded) == {"onnx", "onnx.int8", "openvino", "openvino.int8"}  # the export timed every candidate
    assert all(t["ms_per_batch"] > 0 and t["rows"] > 0 for t in recorded.values())
    files = {k: v["file"] for k, v in recorded.items()}
    assert files == {"onnx": "model.fused.onnx", "onnx.int8": "model.fused.int8.onnx", "openvino": "model.xml",
                     "openvino.int8": "model.int8.xml"}

    def timed(**ms):
        return {k: {**recorded[k], "ms_per_batch": v} for k, v in ms.items()}

    out = _export_copy(virt_export, tmp_path, timed(**{"onnx": 5.0, "onnx.int8": 2.0, "openvino": 3.0,
                                                       "openvino.int8": 4.0}))
    with caplog.at_level(logging.INFO, logger="runtime.backends"):
        be = open_model(out)
    assert (be.runtime, be.files["predict_ids"].name) == ("onnx", "model.fused.int8.onnx")
    assert be.selection["backend"] == "onnx" and be.selection["int8"] and "onnx.int8 2.0" in be.selection["why"]
    assert any("backend auto picked onnx int8" in r.getMessage() for r in caplog.records)
    meta = ServerState(be, max_batch=2).signatures.metadata()["textmatch"]
    assert meta["selection"]["files"]["predict_ids"] == "model.fused.int8.onnx" and meta["runtime"] == "onnx"
    be = open_model(out, int8=False)  # int8 refused: the fastest fp32 artifact
    assert (be.runtime, be.files["predict_ids"].name, be.selection["int8"]) == ("openvino", "model.xml", False)
    be = open_model(out, backend="onnx")  # an explicit backend keeps int8's old meaning: fp32 unless asked
    assert be.files["predict_ids"].name == "model.fused.onnx" and be.selection is None
    # a timing of another file than the one that would run (fused graphs refused) does not count
    be = open_model(out, fused=False, int8=True)
    assert (be.runtime, be.files["predict_ids"].name) == ("openvino", "model.int8.xml")
    out2 = _export_copy(virt_export, tmp_path / "none", None)
    be = open_model(out2)
    assert (be.runtime, be.files["predict_ids"].name) == ("openvino", "model.int8.xml")
    assert be.selection["why"].startswith("no timings in parity.json")


def test_openvino_runs_f32_without_bf16_and_when_the_export_refused_it(virt_export, tmp_path, monkeypatch, caplog):
    """No BF16 in the CPU's capabilities: f32 with one log line, and the same numbers as an explicit f32;
    an explicit bf16 there is refused. An export whose bf16 check failed runs f32 even where the CPU has it."""
    import runtime.openvino as ov_rt

    out = virt_export["out"]
    feats = {"x_ids": np.array([[2, 5, 7, 3]], np.int32), "x_mask": np.ones((1, 4), np.int32),
             "y_ids": np.array([[2, 9, 3, 0]], np.int32), "y_mask": np.array([[1, 1, 1, 0]], np.int32)}
    want = ov_rt.Runner(out / "openvino" / "model.xml", None, "f32")(feats)["probs"]
    monkeypatch.setattr(ov_rt, "cpu_capabilities", lambda: ["FP32", "INT8"])
    monkeypatch.setattr(ov_rt, "_fallback_logged", False)
    with caplog.at_level(logging.INFO, logger="runtime.openvino"):
        a, b = open_model(out, backend="openvino"), open_model(out, backend="openvino", int8=True)
    assert a.precision == b.precision == "f32"
    assert [r.getMessage() for r in caplog.records if r.name == "runtime.openvino"] == [
        "openvino: the CPU reports no BF16 (FP32, INT8): running in f32"]
    np.testing.assert_allclose(a.run("predict_ids", feats)["probs"], want, atol=1e-6)
    with pytest.raises(ValueError, match="precision bf16: this CPU does not report BF16"):
        ov_rt.precision("bf16")
    monkeypatch.setattr(ov_rt, "cpu_capabilities", lambda: ["FP32", "BF16", "INT8"])
    assert open_model(out, backend="openvino").precision == "bf16"
    refused = _export_copy(virt_export, tmp_path, None)
    report = json.loads((refused / "parity.json").read_text(encoding="utf-8"))
    report["status"]["openvino.predict_ids.bf16"] = "refused"
    (refused / "parity.json").write_text(json.dumps(report), encoding="utf-8")
    assert open_model(refused, backend="openvino").precision == "f32"
