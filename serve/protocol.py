"""uvicorn's h11 protocol with the limits a request head needs (uvicorn 0.55 has none of them).

- The head (request line and headers) must arrive within `serve.request_timeout_s` of the connection
  opening or of the previous response; a client that sends part of one and stops gets 408 and is
  closed, one that sends nothing is closed. (uvicorn waits for a head forever: its keep-alive timer
  runs only after a response, and any byte stops it.) The body has the same budget, in the app.
- A head over MAX_HEAD bytes gets 431 Request Header Fields Too Large, where uvicorn answers every h11
  error with a plain-text 400. Until the head is parsed, data goes to h11 in HEAD_PIECE pieces: h11
  measures its buffer only when it needs more data, so a head that arrived in one read was taken whole,
  whatever its size (2,000 headers: a 200 in one read, a reset in small ones).
- After a 400 or 431 the connection is closed lingering (nginx's lingering_close): what the client still
  sends is read and dropped for up to LINGER_S, so that its send completes and it reads the answer;
  closing a socket with unread data sends a reset, and the client reports "connection reset".

Answers are TF Serving's `{"error": ...}`, logged as one rate-limited line and counted in /metrics under
endpoint "http" (they never reach the app). Memory per connection: at most MAX_HEAD + HEAD_PIECE bytes
before the app reads the body.
"""

from __future__ import annotations

import json
import logging

import h11
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol

from runtime.logs import LIMITED

log = logging.getLogger("serve")

MAX_HEAD = 16 * 1024  # bytes of request line and headers (h11's default buffer; nginx's 4 x 8 KiB is 32)
HEAD_PIECE = 1024  # so a head is refused at most this many bytes past MAX_HEAD
LINGER_S = 2.0  # longest a refused client may go on sending before the connection is closed


def protocol_class(state):
    """The uvicorn `http` protocol class for a `ServerState` (its request_timeout_s and metrics)."""
    uvicorn_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _Said) for f in uvicorn_log.filters):
        uvicorn_log.addFilter(_Said())
    return type("ServeProtocol", (LimitedH11Protocol,), {"serving": state})


class _Said(logging.Filter):
    """Drops uvicorn's own line for a bad head, one per request: send_400_response logs it, rate-limited."""

    def filter(self, record):
        return record.getMessage() != "Invalid HTTP request received."


class LimitedH11Protocol(H11Protocol):
    serving = None  # the ServerState, set by protocol_class

    def connection_made(self, transport):
        self._head_timer, self._lingering, self._h11_error = None, False, None
        super().connection_made(transport)
        self._arm_head_timer()
        next_event = self.conn.next_event

        def next_event_noting_errors():  # uvicorn drops h11's reason ("Invalid HTTP request received." only)
            try:
                return next_event()
            except h11.RemoteProtocolError as e:
                self._h11_error = str(e)
                raise

        self.conn.next_event = next_event_noting_errors

    def connection_lost(self, exc):
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data):
        while data and not self._lingering and not self.transport.is_closing():
            piece = data[:HEAD_PIECE] if self.conn.their_state is h11.IDLE else data
            data = data[len(piece):]
            super().data_received(piece)

    def handle_events(self):
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:
            self._cancel_head_timer()  # a head arrived: the app's body timeout takes over

    def on_response_complete(self):
        self._arm_head_timer()  # first: a pipelined head parsed by the super call cancels it
        super().on_response_complete()

    def send_400_response(self, msg):  # uvicorn calls this on any h11 error
        if len(self.conn.trailing_data[0]) > MAX_HEAD:  # h11's "Receive buffer too long"
            self._answer(431, f"request line and headers over {MAX_HEAD} bytes")
        else:
            self._answer(400, f"invalid HTTP request: {self._h11_error or msg}")
        self._linger()

    def shutdown(self):
        if self._lingering:
            self.transport.close()
        else:
            super().shutdown()

    # ----------------------------------------------------------------------------- internals
    def _arm_head_timer(self):
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.serving.request_timeout_s, self._head_timeout)

    def _cancel_head_timer(self):
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self):
        self._head_timer = None
        if self.transport.is_closing() or self._lingering or (self.cycle and not self.cycle.response_complete):
            return  # closed, or a request is being answered (the app bounds its body read)
        partial = self.conn.trailing_data[0]
        if partial and self.conn.our_state is h11.IDLE:
            self._answer(408, f"request head not complete within {self.serving.request_timeout_s:g} s "
                              f"(serve.request_timeout_s): got {len(partial)} bytes")
        self.transport.close()

    def _answer(self, status, message):
        body = json.dumps({"error": message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        for event in (h11.Response(status_code=status, headers=headers, reason=STATUS_PHRASES[status]),
                      h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        LIMITED.log(log, logging.INFO, ("http", status), "http %d: %s", status, message)
        self.serving.metrics.request("http", status, 0.0)

    def _linger(self):
        self._lingering = True  # data_received drops what arrives from now on
        self._cancel_head_timer()
        self.flow.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()  # the answer, then FIN; the client's EOF closes the transport
        self.loop.call_later(LINGER_S, self.transport.close)
