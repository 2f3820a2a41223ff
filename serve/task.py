"""The serve task: `python run_tasks.py --task serve --set serve.model=<export dir or model dir>`.

    serve.backend   auto (default) | onnx | openvino | tf   export directories (auto: the fastest artifact the
                    export timed and checked, runtime/backends.pick_backend); a model directory runs through Keras
    serve.int8      true: serve the int8 predict_ids file (onnx/model.fused.int8.onnx, else model.int8.onnx;
                    openvino/model.int8.xml); false: never; null (default): auto may pick it
    serve.fused     prefer the export's fused graphs (model.fused[.int8].onnx, encode.fused.onnx; default true)
    serve.index     an index directory (--task index) behind POST /v1/search; serve.rerank for its reranker
    serve.warmup    sequence lengths run once per function before the server listens (default [32, 128];
                    [] = none): the first call of a shape is slow (docs/serving.md, "Warm-up")
    serve.request_timeout_s  a request's head, then its body, must arrive within this (default 30), else 408

`start_server(state)` runs the same server on a background thread (tests, benchmarks).
"""

from __future__ import annotations

import logging
import socket
import threading
import time

log = logging.getLogger("serve")


def build_state(cfg):
    """Open the backends of `cfg.serve` (and the search index) -> ServerState."""
    from search.engine import open_searcher
    from serve.app import ServerState
    from runtime.backends import BackendError, open_model
    from serve.signatures import Limits

    s = cfg.serve
    if s.model is None:
        raise BackendError("set serve.model to an export directory (--task export) or a model directory, "
                           "e.g. --set serve.model=runs/export/<stamp>")
    backend = open_model(s.model, s.backend, s.int8, s.threads, s.name, fused=s.fused)
    searcher = None
    if s.index:
        searcher = open_searcher(s.index, s.rerank, cfg.search.recall, s.backend, query_backend=backend,
                                 threads=s.threads)
    elif s.rerank:
        raise BackendError("serve.rerank is for /v1/search: set serve.index too")
    state = ServerState(backend, s.max_batch, s.max_wait_ms, Limits(s.max_texts, s.max_chars), searcher, s.max_k,
                        s.max_batch_tokens, s.request_timeout_s)
    state.warmup_seconds = 0.0
    if s.warmup:
        t0 = time.perf_counter()
        calls = state.warm_up(s.warmup)
        state.warmup_seconds = time.perf_counter() - t0
        log.info("warmed up %d shapes (sequence lengths %s) in %.2f s", len(calls),
                 ", ".join(str(n) for n in sorted({c[3] for c in calls})), state.warmup_seconds)
    return state


class BindError(Exception):
    """serve.host / serve.port cannot be resolved or bound."""


def bind(host, port):
    """A socket bound to (host, port), before the model is loaded: a host that does not resolve or an
    address in use is one line (uvicorn's was its own log line and exit 3, after the model had loaded),
    and the socket checked is the one served."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as e:  # socket.gaierror included
        raise BindError(f"serve.host={host}: cannot resolve ({e.strerror or e})") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restart over TIME_WAIT
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise BindError(f"serve.host={host}, serve.port={port}: cannot bind ({e.strerror or e})") from None
    return sock


def uvicorn_server(state):
    """uvicorn over `create_app(state)`, with the request limits of serve/protocol.py."""
    import uvicorn

    from serve.app import create_app
    from serve.protocol import MAX_HEAD, protocol_class

    return uvicorn.Server(uvicorn.Config(create_app(state), http=protocol_class(state), log_level="warning",
                                         access_log=False, h11_max_incomplete_event_size=MAX_HEAD,
                                         timeout_graceful_shutdown=5))


def serve_task(cfg):
    s = cfg.serve
    sock = bind(s.host, s.port)
    try:
        state = build_state(cfg)
        log.info("serving %s on http://%s:%d (max_batch %d, max_batch_tokens %d, max_wait_ms %g%s)",
                 state.backend.describe(), s.host, s.port, s.max_batch, s.max_batch_tokens, s.max_wait_ms,
                 f", search over {s.index}" if s.index else "")
        try:
            uvicorn_server(state).run(sockets=[sock])
        finally:
            state.close()
    finally:
        sock.close()


def free_port(host="127.0.0.1"):
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class BackgroundServer:
    """uvicorn on a thread, on a free loopback port: `with BackgroundServer(state) as url: ...`."""

    def __init__(self, state, host="127.0.0.1"):
        self.state, self.host = state, host
        self.sock = bind(host, 0)
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        self.server = uvicorn_server(state)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self.url

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()
        self.state.close()
