"""OpenVINO compiled models and the file names of an export's openvino/ directory.

The export writes these IR files (export/openvino.py) and every reader (the server's backend, the
export's parity checks, bench) compiles them here. openvino is imported lazily: importing this module
costs nothing, and it imports neither TensorFlow nor Keras.

Precision: `precision("auto")` is bf16 where the CPU reports BF16 among its OPTIMIZATION_CAPABILITIES
(AVX512_BF16 / AMX; docs/inference.md has the accuracy and speed on MRPC), else f32, said in one log
line per process. An int8 IR runs its quantised layers in int8 and the rest at that precision.
"""

from __future__ import annotations

import logging
import os
import threading

from runtime.onnx import physical_cores

log = logging.getLogger(__name__)

# The IR files of an export's openvino/ directory: function -> file (the .bin beside each).
OV_FILES = {"predict_ids": "model.xml", "encode_ids": "encode.xml", "score": "score.xml"}
INT8_FILE = "model.int8.xml"  # NNCF post-training int8 of model.xml (predict_ids)
PRECISIONS = ("auto", "bf16", "f32")

_core = None
_fallback_logged = False


def core():
    """The process's one `openvino.Core` (it holds the device plugins: created once)."""
    global _core
    if _core is None:
        import openvino as ov

        _core = ov.Core()
    return _core


def cpu_capabilities():
    """The CPU plugin's OPTIMIZATION_CAPABILITIES (e.g. FP32, BF16, INT8)."""
    return [str(c) for c in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def precision(requested="auto"):
    """The inference precision to compile with: `bf16` or `f32`. `auto`: bf16 where the CPU reports it,
    else f32 (one log line per process); an explicit `bf16` on a CPU without it is refused, never emulated."""
    global _fallback_logged
    if requested not in PRECISIONS:
        raise ValueError(f"precision {requested!r}: expected one of {', '.join(PRECISIONS)}")
    if requested == "f32":
        return "f32"
    caps = cpu_capabilities()
    if "BF16" in caps:
        return "bf16"
    if requested == "bf16":
        raise ValueError(f"precision bf16: this CPU does not report BF16 (OPTIMIZATION_CAPABILITIES: {', '.join(caps)})")
    if not _fallback_logged:
        _fallback_logged = True
        log.info("openvino: the CPU reports no BF16 (%s): running in f32", ", ".join(caps))
    return "f32"


# A batch of at least this many rows is split across one CPU stream per thread (each stream one
# thread): the int8 IR ran 1.16x over MRPC's batches and 1.12x at 28 x 128 (bf16 unchanged) in an A/B on
# the 2-core VM. Single rows would run on one thread (1.5-2x slower) and 2-row batches lost once (0.98x),
# so smaller batches keep the one-request latency compile (docs/inference.md, "Streams").
SPLIT_MIN_ROWS = 8


def compile_model(path, threads=None, precision_hint="f32", streams=1):
    """The IR at `path` (a path or a read `openvino.Model`) compiled for the CPU: INFERENCE_NUM_THREADS =
    `threads` or the physical cores, the given precision. `streams` 1: latency mode (one request uses every
    thread); more: that many streams sharing the threads, one request each. The IR keeps the ONNX graph's
    dynamic batch and sequence axes, so any padded shape runs."""
    props = {"INFERENCE_NUM_THREADS": int(threads or physical_cores()),
             "INFERENCE_PRECISION_HINT": precision_hint, "NUM_STREAMS": int(streams)}
    if streams == 1:
        props["PERFORMANCE_HINT"] = "LATENCY"
    return core().compile_model(str(path) if isinstance(path, (str, os.PathLike)) else path, "CPU", props)


class Runner:
    """One compiled IR called like an onnxruntime session: input name -> array in, output name -> array out.

    Calls are serialised under a lock. A batch of `SPLIT_MIN_ROWS` rows or more is cut into one part per
    thread, run at once on a second compile of the same IR with that many single-thread streams (compiled
    on the first such batch: about 120 MB more at 28 x 128), and the parts' outputs concatenated; smaller
    batches run as one request on every thread. `streams=1` keeps every call on the latency compile."""

    def __init__(self, path, threads=None, precision_hint="f32", streams=None):
        self.path, self.precision = path, precision_hint
        self.threads = int(threads or physical_cores())
        self.streams = self.threads if streams is None else int(streams)
        self._model = core().read_model(str(path))
        self.compiled = compile_model(self._model, self.threads, precision_hint)
        self.inputs = [i.get_any_name() for i in self.compiled.inputs]
        self.input_types = {i.get_any_name(): i.get_element_type().to_dtype() for i in self.compiled.inputs}
        self.outputs = [o.get_any_name() for o in self.compiled.outputs]
        self._request = self.compiled.create_infer_request()
        self.min_rows = SPLIT_MIN_ROWS
        self._split = None  # (compiled, requests), on the first batch that is split
        self._lock = threading.Lock()

    def _parts(self, feed):
        """`feed` cut into `streams` contiguous row ranges; an input whose batch is 1 while others have more
        (VIRT's one query broadcast against K candidates) goes whole to every part."""
        rows = max(len(v) for v in feed.values())
        edges = [round(rows * k / self.streams) for k in range(self.streams + 1)]
        return [{k: (v[a:b] if len(v) == rows else v) for k, v in feed.items()} for a, b in zip(edges, edges[1:])]

    def __call__(self, feeds):
        import numpy as np

        feed = {k: feeds[k].astype(self.input_types[k], copy=False) for k in self.inputs}
        rows = max(len(v) for v in feed.values())
        with self._lock:
            if self.streams < 2 or rows < max(self.min_rows, self.streams):
                res = self._request.infer(feed, share_inputs=True)  # no copy of large inputs (VIRT states)
                # copies: the request's output buffers are reused by its next call
                return {name: res[out].copy() for name, out in zip(self.outputs, self.compiled.outputs)}
            if self._split is None:
                compiled = compile_model(self._model, self.threads, self.precision, self.streams)
                self._split = (compiled, [compiled.create_infer_request() for _ in range(self.streams)])
            compiled, requests = self._split
            for request, part in zip(requests, self._parts(feed)):
                request.start_async(part, share_inputs=True)
            for request in requests:
                request.wait()
            return {name: np.concatenate([r.get_tensor(out).data for r in requests])
                    for name, out in zip(self.outputs, compiled.outputs)}
