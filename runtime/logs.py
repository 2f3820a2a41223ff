"""Logging: the server's rate-limited lines, and a start-up without other libraries' noise.

Server logging that a flood of bad requests or a failing model cannot turn into a flood of lines:

    LIMITED.log(log, logging.WARNING, ("predict", 400), "predict 400: %s", message)
    LIMITED.log(log, logging.ERROR, ("batch", "RuntimeError"), "batch failed", exc_info=True)

Each key (a kind of event: endpoint and status, or a fault's exception type) gets at most
`burst` lines per `period` seconds; the first line of the next period says how many were left
out. Every request is still counted in /metrics.

`quiet_start_up()` (the command line and the Python API call it before TensorFlow is imported)
hides the lines TensorFlow, transformers and faiss print on every start on a machine without a GPU.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import logging
import os
import re
import sys
import tempfile
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


# ----------------------------------------------------------------------------- start-up noise
# Lines every command printed on a machine without a GPU: TensorFlow's C++ libraries write them to fd 2
# while they load, before absl's logging is set up (so TF_CPP_MIN_LOG_LEVEL cannot hide them), and the
# CUDA probe of the first device listing. Anything else printed then is shown as it was.
START_UP_NOISE = re.compile(r"All log messages before absl::InitializeLog\(\) is called"
                            r"|cudart_stub\.cc.*Could not find cuda drivers|oneDNN custom operations are on")
NO_DRIVER_CUINIT = re.compile(r"failed call to cuInit")  # noise only where cudart_stub found no CUDA driver


@contextlib.contextmanager
def filtered_stderr():
    """Capture what is written to file descriptor 2 inside the block; then write it to stderr less the
    START_UP_NOISE lines (and the cuInit failure, when the same start-up said there is no CUDA driver)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode("utf-8", errors="replace").splitlines(keepends=True)
            no_driver = any("Could not find cuda drivers" in line for line in lines)
            sys.stderr.write("".join(line for line in lines if not START_UP_NOISE.search(line)
                                     and not (no_driver and NO_DRIVER_CUINIT.search(line))))
            sys.stderr.flush()


class _QuietTensorFlow(importlib.abc.MetaPathFinder):
    """The first `import tensorflow`, wherever it happens, runs inside `filtered_stderr`, together
    with the device listing that probes CUDA (once, before any device is set up)."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            exec_module = spec.loader.exec_module

            def quiet_exec_module(module):
                with filtered_stderr():
                    exec_module(module)
                    module.config.list_physical_devices("GPU")

            spec.loader.exec_module = quiet_exec_module
        return spec


def _not_the_torch_notice(record):
    # transformers' import says so every time; this toolkit uses its tokenizers only
    return "PyTorch was not found" not in record.getMessage()


def quiet_start_up():
    """Silence the start-up lines of TensorFlow (its C++ INFO and WARNING lines, the CUDA probe),
    transformers (no PyTorch) and faiss (which CPU build it loads); call it before they are imported.
    Only those lines: TensorFlow's errors and every other library's warnings still show."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("transformers").addFilter(_not_the_torch_notice)
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # "Loading faiss with AVX2 support." at INFO
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietTensorFlow) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlow())
