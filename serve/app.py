"""FastAPI routes: TF Serving's REST API, /v1/search, /healthz, /metrics.

    GET  /v1/models/<name>[/versions/<v>]            status (model_version_status)
    GET  /v1/models/<name>[/versions/<v>]/metadata   signature_def of every signature
    POST /v1/models/<name>[/versions/<v>]:predict    {"signature_name", "instances" | "inputs"}
    POST /v1/search                                  {"queries": [...] | "query": "...", "k", "rerank"}
    GET  /healthz, GET /metrics                      liveness; Prometheus text

Every error is `{"error": "..."}`: 400 bad request, 404 unknown model / version / signature /
path, 405 wrong HTTP method, 500 a failed model call (the worker carries on). Bad client input
is always a 4xx, logged as one line; a 500 is a server fault, logged with its traceback; both
kinds of line are rate-limited per endpoint and code (runtime/logs.py). A client that
disconnects while its request waits or runs is logged, its queued rows are dropped and the
request is counted with code 499 (nginx's "client closed request"); nothing is sent back. A request's
head and then its body must each arrive within `request_timeout_s` (serve.request_timeout_s; the head
in serve/protocol.py), else 408 and the connection is closed: a stalled client holds no request for longer.

Parsing, tokenising and writing the response run on a thread pool, not on the event loop, so
that one client's large request does not stall the others' (the tokenizer and the models
release the GIL while they compute).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from runtime.batching import MicroBatcher, drive_async
from runtime.logs import LIMITED, short
from serve.metrics import Metrics
from serve.signatures import (ApiError, Limits, SignatureSet, check_text, format_response, load_object,
                              parse_request, status)

log = logging.getLogger("serve")

MODEL_PATH = re.compile(r"^(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?"
                        r"(?P<tail>/metadata|:(?P<method>[A-Za-z]+))?$")
VERSION = re.compile(r"[0-9]{1,19}")  # TF Serving's int64, in ASCII digits
MAX_ECHO = 100  # characters of a path segment quoted in an error


class ClientGone(Exception):
    """The client disconnected before its response was ready."""


class ServerState:
    """What the routes share: the served backend and its signatures, one micro-batcher per
    backend (the served model, the search index's model, the reranker), metrics, limits."""

    def __init__(self, backend, max_batch=32, max_wait_ms=5.0, limits=None, searcher=None, max_k=100,
                 max_batch_tokens=256, request_timeout_s=30.0):
        self.backend, self.limits, self.request_timeout_s = backend, limits or Limits(), request_timeout_s
        self.metrics = Metrics()
        self.signatures = SignatureSet(backend, self.limits)
        self.max_batch, self.max_wait_ms, self.max_batch_tokens = max_batch, max_wait_ms, max_batch_tokens
        self.searcher, self.max_k = searcher, max_k
        self.pool = ThreadPoolExecutor(16, thread_name_prefix="request")  # parsing, tokenising, responses
        self._batchers = {}
        self.batcher_for(backend)
        if searcher is not None:
            self.batcher_for(searcher.query_backend)
            if searcher.rerank_backend is not None:
                self.batcher_for(searcher.rerank_backend)

    def batcher_for(self, backend):
        key = id(backend)
        if key not in self._batchers:
            self._batchers[key] = MicroBatcher(backend, self.max_batch, self.max_wait_ms, self.metrics,
                                               name=f"batcher-{backend.name}",
                                               max_batch_tokens=self.max_batch_tokens)
        return self._batchers[key]

    def warm_up(self, lengths):
        """`runtime.batching.warm_up` of every served backend (the model, the search index's query model
        and reranker), before the server takes requests; returns [(backend name, fn, rows, length, s)]."""
        from runtime.batching import warm_up

        return [(b.backend.name, *call) for b in self._batchers.values()
                for call in warm_up(b.backend, lengths, self.max_batch, self.max_batch_tokens)]

    @property
    def batcher(self):
        return self._batchers[id(self.backend)]

    async def submit(self, call):
        return await asyncio.wrap_future(self.batcher_for(call.backend).submit(call.fn, call.rows))

    def off_loop(self, fn, *args):
        """Awaitable: fn(*args) on the request pool."""
        return asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def close(self):
        for b in self._batchers.values():
            b.close()
        self.pool.shutdown(wait=False)


def _json(obj, status_code=200):
    body = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    try:
        body = body.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate echoed from the request: escape it
        body = json.dumps(obj, separators=(",", ":")).encode("ascii")
    return Response(body, status_code=status_code, media_type="application/json")


async def _wait_disconnect(request):
    # After the body is read, the ASGI server's receive() returns only when the client
    # leaves (or the response is complete, after which this task is already cancelled).
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def run_plan(state, plan, request, what):
    """Drive `plan` through the batchers; raise ClientGone if the client leaves first."""
    task = asyncio.ensure_future(drive_async(plan, state.submit, state.off_loop))
    gone = asyncio.ensure_future(_wait_disconnect(request))
    done, _ = await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        gone.cancel()
        return task.result()
    task.cancel()  # cancels the awaited batcher future: its queued rows are dropped
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    _gone(what, "cancelled")


def _gone(what, when):
    """A disconnect is the client's doing: one rate-limited line, no traceback, then 499."""
    LIMITED.log(log, logging.WARNING, ("disconnect", what), "client disconnected: %s request %s", what, when)
    raise ClientGone


async def read_body(request, timeout, what):
    """The request body, within `timeout` s of its head: a client that stops sending gets 408 rather
    than holding its request and partial body; one that leaves while sending is a ClientGone (starlette
    raises ClientDisconnect, which was a 500 with a traceback)."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":  # a gzip body was parsed as JSON and failed on its first byte (0x1f)
        raise ApiError(415, f"Content-Encoding {short(encoding, 40)!r} is not supported: send the JSON body "
                            f"uncompressed")
    chunks = []

    async def read():
        async for chunk in request.stream():
            chunks.append(chunk)

    try:
        await asyncio.wait_for(read(), timeout)
    except ClientDisconnect:
        _gone(what, f"dropped after {sum(map(len, chunks))} bytes of its body")
    except asyncio.TimeoutError:
        expected = request.headers.get("content-length")
        raise ApiError(408, f"request body not complete within {timeout:g} s (serve.request_timeout_s): got "
                            f"{sum(map(len, chunks))} of {short(expected, 20) if expected else 'unknown'} bytes")
    return b"".join(chunks)


def create_app(state):
    """The FastAPI application over a `ServerState`."""
    app = FastAPI(title="textmatch server", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = state
    be = state.backend

    async def handle(endpoint, coro_fn):
        t0 = time.perf_counter()
        try:
            resp = await state.off_loop(_json, await coro_fn())
        except ApiError as e:
            LIMITED.log(log, logging.INFO, (endpoint, e.status), "%s %d: %s", endpoint, e.status, short(e.message))
            resp = _json({"error": e.message}, e.status)
            if e.status == 408:  # the rest of the body may still come: this connection cannot carry another request
                resp.headers["connection"] = "close"
        except ClientGone:
            resp = Response(status_code=499)
        except Exception as e:  # noqa: BLE001  a server fault (a failed model call): report it, keep serving
            LIMITED.log(log, logging.ERROR, (endpoint, 500, type(e).__name__), "%s request failed: %s: %s",
                        endpoint, type(e).__name__, short(e), exc_info=e)
            resp = _json({"error": f"internal error: {type(e).__name__}: {e}"}, 500)
        state.metrics.request(endpoint, resp.status_code, time.perf_counter() - t0)
        return resp

    def resolve(rest):
        name, version, m = parse_model_path(rest)
        if name != be.name or (version is not None and version != be.version):
            spec = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
            raise ApiError(404, f"Servable not found for request: {short(spec, MAX_ECHO)}")
        return m

    @app.get("/v1/models/{rest:path}")
    async def model_get(rest: str):
        async def go():
            m = resolve(rest)
            if m.group("method"):
                raise ApiError(405, f"use POST for :{m.group('method')}")
            return state.signatures.metadata() if m.group("tail") else status(be)
        return await handle("metadata" if rest.endswith("/metadata") else "status", go)

    @app.post("/v1/models/{rest:path}")
    async def model_post(rest: str, request: Request):
        async def go():
            m = resolve(rest)
            method = m.group("method")
            if method is None:
                raise ApiError(405, f"POST /v1/models/{rest}: use GET, or POST to .../{m.group('name')}:predict")
            if method != "predict":
                raise ApiError(400, f"method :{method} is not supported by this server (only :predict; "
                                    "TF Serving's :classify and :regress need tf.Example signatures)")
            body = await read_body(request, state.request_timeout_s, "predict")
            sig, row_format, plan = await state.off_loop(_predict_plan, body, state)
            outputs = await run_plan(state, plan, request, f"{sig.name} predict")
            return format_response(outputs, sig, row_format)
        return await handle("predict", go)

    @app.post("/v1/search")
    async def search(request: Request):
        async def go():
            if state.searcher is None:
                raise ApiError(404, "no search index on this server (start it with serve.index=<index dir>)")
            body = await read_body(request, state.request_timeout_s, "search")
            queries, single, k, rerank = await state.off_loop(parse_search, body, state.limits, state.max_k)
            results = await run_plan(state, state.searcher.plan(queries, k, rerank), request, "search")
            return {"results": results[0] if single else results}
        return await handle("search", go)

    @app.get("/healthz")
    async def healthz():
        return await handle("healthz", lambda: _ok(be))

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        msg = {404: f"Malformed request: {request.method} {request.url.path}",
               405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        LIMITED.log(log, logging.INFO, ("path", exc.status_code), "%d: %s", exc.status_code, short(msg))
        return _json({"error": msg}, exc.status_code)

    return app


def parse_model_path(rest):
    """`<name>[/versions/<v>][/metadata | :<method>]` -> (name, version as an int or None, the match): the one
    place the path's parameters are read (the query string is ignored, as TF Serving does). A version is an
    int64 in ASCII digits: `str.isdigit` takes '²', which int() refuses, and int() refuses over 4,300 digits,
    so both are checked first; an error quotes at most MAX_ECHO characters of what was sent."""
    m = MODEL_PATH.match(rest)
    if not m:
        raise ApiError(404, f"Malformed request: /v1/models/{short(rest, MAX_ECHO)}")
    version = m.group("version")
    if version is not None:
        if not VERSION.fullmatch(version) or int(version) > 2 ** 63 - 1:
            raise ApiError(400, f"Failed to convert version: {short(version, MAX_ECHO)}")
        version = int(version)
    return m.group("name"), version, m


def _predict_plan(body, state):
    """Request body -> (signature, row format, plan); the string signatures tokenise here."""
    sig, columns, row_format = parse_request(body, state.signatures.signatures, state.limits)
    return sig, row_format, sig.plan(columns, row_format)


async def _ok(be):
    return {"status": "ok", "model": be.name, "version": str(be.version), "kind": be.kind, "runtime": be.runtime}


def parse_search(body, limits, max_k):
    """/v1/search body -> (queries, single, k, rerank)."""
    req = load_object(body, ("queries", "query", "k", "rerank"), "'queries' or 'query', 'k', 'rerank'")
    if ("queries" in req) == ("query" in req):
        raise ApiError(400, "give exactly one of 'queries' (a list of strings) and 'query' (a string)")
    single = "query" in req
    queries = [req["query"]] if single else req["queries"]
    if not isinstance(queries, list) or not queries:
        raise ApiError(400, "'queries' must be a non-empty list of strings")
    if len(queries) > limits.max_texts:
        raise ApiError(400, f"{len(queries)} queries, over the limit of {limits.max_texts} (serve.max_texts)")
    where = (lambda i: "query") if single else (lambda i: f"queries[{i}]")
    queries = [check_text(q, where(i), limits) for i, q in enumerate(queries)]
    for i, q in enumerate(queries):
        if not q.strip():
            raise ApiError(400, f"{where(i)}: empty query")
    k = req.get("k", 10)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= max_k:
        raise ApiError(400, f"k: expected an integer between 1 and {max_k} (serve.max_k), got {k!r}")
    rerank = req.get("rerank", True)
    if not isinstance(rerank, bool):
        raise ApiError(400, f"rerank: expected true or false, got {rerank!r}")
    return queries, single, k, rerank
