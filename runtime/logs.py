"""Server logging that a flood of bad requests or a failing model cannot turn into a flood of lines.

    LIMITED.log(log, logging.WARNING, ("predict", 400), "predict 400: %s", message)
    LIMITED.log(log, logging.ERROR, ("batch", "RuntimeError"), "batch failed", exc_info=True)

Each key (a kind of event: endpoint and status, or a fault's exception type) gets at most
`burst` lines per `period` seconds; the first line of the next period says how many were left
out. Every request is still counted in /metrics.
"""

from __future__ import annotations

import threading
import time

MAX_MESSAGE = 300  # characters of a client-supplied message kept in a log line


class RateLimitedLog:
    def __init__(self, period=60.0, burst=5, clock=time.monotonic):
        self.period, self.burst, self.clock = float(period), int(burst), clock
        self._lock = threading.Lock()  # the batchers' worker threads log too
        self._windows = {}  # key -> [start, lines, suppressed]

    def log(self, logger, level, key, msg, *args, exc_info=None):
        with self._lock:
            now = self.clock()
            w = self._windows.get(key)
            dropped = 0
            if w is None or now - w[0] >= self.period:
                dropped = w[2] if w else 0
                w = self._windows[key] = [now, 0, 0]
            if w[1] >= self.burst:
                w[2] += 1
                return False
            w[1] += 1
        if dropped:
            msg += f" ({dropped} more like this in the previous {self.period:g} s not logged)"
        logger.log(level, msg, *args, exc_info=exc_info)
        return True


def short(text, limit=MAX_MESSAGE):
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


LIMITED = RateLimitedLog()
