"""Prometheus text exposition for the server, without a client library (a few counters
and histograms do not justify a dependency).

    textmatch_requests_total{endpoint="predict",code="200"}      requests by endpoint and status
    textmatch_request_seconds_bucket{endpoint="predict",le="0.01"} latency histogram (+ _sum, _count)
    textmatch_batch_rows_bucket{function="predict_ids",le="8"}     rows per backend call (+ _sum, _count)
    textmatch_cancelled_total{function="predict_ids"}              requests dropped after the client left
"""

from __future__ import annotations

import threading
from bisect import bisect_left

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _Histogram:
    def __init__(self, buckets):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value):
        self.counts[bisect_left(self.buckets, value)] += 1
        self.sum += value

    def lines(self, name, labels):
        out, total = [], 0
        for bound, n in zip(self.buckets + ("+Inf",), self.counts):
            total += n
            le = bound if isinstance(bound, str) else f"{bound:g}"
            out.append(f"{name}_bucket{_labels({**labels, 'le': le})} {total}")
        out.append(f"{name}_sum{_labels(labels)} {self.sum:.6f}")
        out.append(f"{name}_count{_labels(labels)} {total}")
        return out


def _labels(labels):
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""


class Metrics:
    """Thread-safe counters and histograms; `render()` is the /metrics body."""

    def __init__(self):
        self._lock = threading.Lock()
        self._requests = {}  # (endpoint, code) -> count
        self._latency = {}  # endpoint -> histogram
        self._batches = {}  # function -> histogram
        self._cancelled = {}  # function -> count

    def request(self, endpoint, code, seconds):
        with self._lock:
            self._requests[(endpoint, str(code))] = self._requests.get((endpoint, str(code)), 0) + 1
            self._latency.setdefault(endpoint, _Histogram(LATENCY_BUCKETS)).observe(seconds)

    def batch(self, function, rows):
        with self._lock:
            self._batches.setdefault(function, _Histogram(BATCH_BUCKETS)).observe(rows)

    def cancelled(self, function):
        with self._lock:
            self._cancelled[function] = self._cancelled.get(function, 0) + 1

    def batch_counts(self, function):
        """(number of batches, rows) run for `function` so far."""
        with self._lock:
            h = self._batches.get(function)
            return (sum(h.counts), int(h.sum)) if h else (0, 0)

    def render(self):
        with self._lock:
            lines = ["# HELP textmatch_requests_total HTTP requests by endpoint and status code.",
                     "# TYPE textmatch_requests_total counter"]
            lines += [f"textmatch_requests_total{_labels({'endpoint': e, 'code': c})} {n}"
                      for (e, c), n in sorted(self._requests.items())]
            lines += ["# HELP textmatch_request_seconds Request latency in seconds.",
                      "# TYPE textmatch_request_seconds histogram"]
            for e, h in sorted(self._latency.items()):
                lines += h.lines("textmatch_request_seconds", {"endpoint": e})
            lines += ["# HELP textmatch_batch_rows Rows per backend call (dynamic batch size).",
                      "# TYPE textmatch_batch_rows histogram"]
            for f, h in sorted(self._batches.items()):
                lines += h.lines("textmatch_batch_rows", {"function": f})
            lines += ["# HELP textmatch_cancelled_total Requests dropped because the client disconnected.",
                      "# TYPE textmatch_cancelled_total counter"]
            lines += [f"textmatch_cancelled_total{_labels({'function': f})} {n}"
                      for f, n in sorted(self._cancelled.items())]
        return "\n".join(lines) + "\n"
