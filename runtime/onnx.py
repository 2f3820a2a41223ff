"""onnxruntime sessions and the file names of an export's onnx/ directory.

The export writes these files (export/onnx.py, export/fusion.py) and every reader (the server's
backend, the export's parity checks, search, bench) opens them here, so the runtime never needs
the export package. onnxruntime is imported lazily: importing this module costs nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

# The files of an export's onnx/ directory (the export writes them, the server reads them).
ONNX_FILES = {"predict_ids": "model.onnx", "encode_ids": "encode.onnx", "score": "score.onnx"}
# The fused copy of each portable file (export/fusion.py; score.onnx has none).
FUSED_NAMES = {"model.onnx": "model.fused.onnx", "model.int8.onnx": "model.fused.int8.onnx",
               "encode.onnx": "encode.fused.onnx"}


def physical_cores():
    """Physical cores among the CPUs this process may run on (hyper-threads counted once).

    Reads the (package, core) ids of the affinity CPUs from /sys; where that is unreadable,
    the number of affinity CPUs (os.cpu_count() without sched_getaffinity)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add((topo / "physical_package_id").read_text().strip() + "/" + (topo / "core_id").read_text().strip())
        except OSError:
            return max(1, len(cpus))
    return max(1, len(cores))


def session_options(threads=None, sequential=True):
    """onnxruntime CPU options: intra-op threads = `threads` or the physical cores; sequential
    execution (one op at a time, each using every thread). docs/inference.md has the measurement
    of each option."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or physical_cores())
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL if sequential else ort.ExecutionMode.ORT_PARALLEL
    if not sequential:
        opts.inter_op_num_threads = opts.intra_op_num_threads
    return opts


def session(path, threads=None, sequential=True):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), session_options(threads, sequential), providers=["CPUExecutionProvider"])
