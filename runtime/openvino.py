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


def compile_model(path, threads=None, precision_hint="f32"):
    """The IR at `path` compiled for the CPU: INFERENCE_NUM_THREADS = `threads` or the physical cores,
    the given precision, latency mode (one stream: the server batches requests itself). The IR keeps the
    ONNX graph's dynamic batch and sequence axes, so any padded shape runs."""
    props = {"INFERENCE_NUM_THREADS": int(threads or physical_cores()),
             "INFERENCE_PRECISION_HINT": precision_hint, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    return core().compile_model(str(path), "CPU", props)


class Runner:
    """One compiled IR called like an onnxruntime session: input name -> array in, output name -> array out.
    Its infer request is reused under a lock (one request at a time per compiled model, as with one stream)."""

    def __init__(self, path, threads=None, precision_hint="f32"):
        self.path, self.precision = path, precision_hint
        self.compiled = compile_model(path, threads, precision_hint)
        self.inputs = [i.get_any_name() for i in self.compiled.inputs]
        self.input_types = {i.get_any_name(): i.get_element_type().to_dtype() for i in self.compiled.inputs}
        self.outputs = [o.get_any_name() for o in self.compiled.outputs]
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()

    def __call__(self, feeds):
        feed = {k: feeds[k].astype(self.input_types[k], copy=False) for k in self.inputs}
        with self._lock:
            res = self._request.infer(feed, share_inputs=True)  # no copy of large inputs (VIRT states)
            # copies: the request's output buffers are reused by its next call
            return {name: res[out].copy() for name, out in zip(self.outputs, self.compiled.outputs)}
