"""ONNX export with tf2onnx, int8 dynamic quantisation, onnxruntime graph optimisation.

Library:
    convert_function(fn, path, opset)      a tf.function with input_signature -> .onnx
    convert_saved_model(sm_dir, path, signature="predict_ids", opset=17)
    quantize_int8(src, dst)                 onnxruntime quantize_dynamic, QInt8 per-channel weights
    optimize(src, level)                    basic|extended|all -> <stem>.opt-<level>.onnx

Command (works on a SavedModel alone, e.g. from CI):
    python -m export.onnx <saved_model version dir> <out.onnx> [--signature predict_ids]
                          [--opset 17] [--int8] [--optimize basic|extended|all]

Input names are the signature's (`input_ids`, `token_type_ids`, `attention_mask`, or
`x_ids`, `x_mask`, `y_ids`, `y_mask`), output names its output keys (`probs`, ...);
batch and sequence axes are dynamic (named `batch`, `sequence` / `x_sequence` / `y_sequence`; VIRT's
`score`: `x_batch` / `y_batch`, so one query broadcasts over K candidates).

tf2onnx does not fail on a TensorFlow op it cannot convert: it copies the op into the
ONNX graph, and onnxruntime rejects the file later. Every conversion here is checked
against the ONNX operator schemas and loaded into onnxruntime, and an unconvertible
op is an `ExportError` naming it (e.g. the tf-text tokeniser ops of `serving_default`).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported (the command's import chatter)

from common.files import atomic_path  # noqa: E402
from export import ExportError  # noqa: E402

MIN_OPSET = 15
LEVELS = ("basic", "extended", "all")


def _dim_name(input_name, axis, split_batch=False):
    prefix = input_name.split("_", 1)[0] + "_" if input_name.startswith(("x_", "y_")) else ""
    if axis == 0:
        return f"{prefix}batch" if split_batch else "batch"
    return f"{prefix}sequence" if axis == 1 else f"{input_name}_dim{axis}"


def _name_dynamic_axes(model):
    """Readable names for the dynamic axes tf2onnx calls unk__N (inputs, and outputs' batch axis).

    VIRT's `score` (inputs `x_states`, `y_states`) gets separate `x_batch` / `y_batch` axes: one
    query's states (batch 1) broadcast over K candidates, and onnxruntime plans its buffers by
    these names (one name for both would fail at run time: "Shape mismatch attempting to re-use
    buffer")."""
    split = any(v.name.endswith("_states") for v in model.graph.input)
    for value in model.graph.input:
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if not dim.HasField("dim_value"):
                dim.dim_param = _dim_name(value.name, axis, split)
    for value in model.graph.output:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"


def unsupported_ops(model):
    """Op types of the graph that no ONNX schema defines (tf2onnx leaves TF ops in place)."""
    import onnx

    bad = set()
    graphs = [model.graph]
    while graphs:
        g = graphs.pop()
        for node in g.node:
            domain = node.domain or ""
            if domain == "com.microsoft":  # onnxruntime contrib ops: checked by loading the model
                pass
            elif domain in ("", "ai.onnx", "ai.onnx.ml"):
                if not onnx.defs.has(node.op_type, "" if domain == "ai.onnx" else domain):
                    bad.add(node.op_type)
            else:
                bad.add(f"{domain}:{node.op_type}")
            for attr in node.attribute:
                graphs.extend([attr.g] if attr.HasField("g") else list(attr.graphs))
    return sorted(bad)


def _check_runtime(path):
    """Load the file into onnxruntime; an unknown op becomes an ExportError naming it."""
    import onnxruntime as ort

    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception classes
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        op = re.search(r"implementation for (\w+)", msg) or re.search(r"[Oo]p type[^']*'(\w+)'", msg)
        what = f"unsupported op {op.group(1)}: " if op else ""
        raise ExportError(f"{path}: onnxruntime cannot load the converted model: {what}{msg}") from None


class _OpCollector(logging.Handler):
    """Collects the op types of tf2onnx's "is not supported" log records."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.ops = set()

    def emit(self, record):
        m = re.search(r"op \[[^\]]*: (\w+)\] is not supported", record.getMessage())
        if m:
            self.ops.add(m.group(1))


def convert_function(fn, path, opset=17, input_signature=None):
    """tf2onnx.convert.from_function -> `path`, checked (schemas + onnxruntime load)."""
    import tf2onnx

    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset}: need >= {MIN_OPSET}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    signature = list(input_signature or fn.input_signature)
    # tf2onnx logs each op it cannot convert ("Tensorflow op [name: Type] is not supported")
    # and goes on; collect those lines instead of printing them, to name the ops in our error.
    logged = _OpCollector()
    tf2onnx_log = logging.getLogger("tf2onnx")
    saved = tf2onnx_log.level, tf2onnx_log.propagate
    tf2onnx_log.setLevel(logging.ERROR)
    tf2onnx_log.propagate = False
    tf2onnx_log.addHandler(logged)
    try:
        try:
            with _lean_optimizer(tf2onnx):
                model, _ = tf2onnx.convert.from_function(fn, input_signature=signature, opset=opset)
        except Exception:  # an optimiser failed: tf2onnx's own way, which carries on without it
            logged.ops.clear()
            model, _ = tf2onnx.convert.from_function(fn, input_signature=signature, opset=opset)
    except Exception as e:  # tf2onnx raises ValueError/KeyError/... mid-way through a graph it cannot handle
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        if logged.ops:
            raise ExportError(f"{path}: unsupported op(s) {', '.join(sorted(logged.ops))}: tf2onnx "
                              f"{tf2onnx.__version__} (opset {opset}) cannot convert them ({first})") from None
        raise ExportError(f"{path}: tf2onnx {tf2onnx.__version__} failed: {first}") from None
    finally:
        tf2onnx_log.removeHandler(logged)
        tf2onnx_log.setLevel(saved[0])
        tf2onnx_log.propagate = saved[1]
    bad = unsupported_ops(model)
    if bad:
        raise ExportError(f"{path}: unsupported op(s) {', '.join(bad)}: tf2onnx {tf2onnx.__version__} "
                          f"(opset {opset}) has no ONNX conversion for them")
    _name_dynamic_axes(model)
    with atomic_path(path) as tmp:  # published only once onnxruntime loads it
        tmp.write_bytes(model.SerializeToString())
        _check_runtime(tmp)
    return path


@contextlib.contextmanager
def _lean_optimizer(tf2onnx):
    """tf2onnx's ONNX optimisers without two copies of the weights per pass (36 passes on MiniLM-L6).

    By default tf2onnx deep-copies the graph before each optimiser, to carry on without one that
    raises, and each pass rewrites every node's protobuf attributes (`update_proto`), which under
    protobuf's upb backend keeps the replaced weights allocated: the export's peak RSS was 5.8 GB,
    for 90 MB of weights (docs/export.md, "Memory"). Here an optimiser error fails the conversion
    (TF2ONNX_CATCH_ERRORS; convert_function then runs tf2onnx's default way), and the protobuf
    is written once, by `make_graph` at the end, which calls `update_proto` itself: the
    optimisers read the nodes' Python attributes, not their protobuf."""
    from tf2onnx.optimizer.optimizer_base import GraphOptimizerBase

    def optimize(self, graph, iteration):
        before = graph.dump_node_statistics()
        self.opt_iteration = iteration
        graph = self._optimize(graph)
        graph.delete_unused_nodes(graph.outputs)
        self._print_stat_diff(before, graph.dump_node_statistics())
        return graph

    real, env = GraphOptimizerBase.optimize, os.environ.get(CATCH_ERRORS)
    GraphOptimizerBase.optimize = optimize
    os.environ[CATCH_ERRORS] = "0"  # any value: tf2onnx reads only whether it is set
    try:
        yield
    finally:
        GraphOptimizerBase.optimize = real
        if env is None:
            os.environ.pop(CATCH_ERRORS, None)
        else:
            os.environ[CATCH_ERRORS] = env
        gc.collect()


CATCH_ERRORS = "TF2ONNX_CATCH_ERRORS"


def signature_function(loaded_sm, signature):
    """A SavedModel signature as a `tf.function` with named positional inputs."""
    import tensorflow as tf

    if signature not in loaded_sm.signatures:
        raise ExportError(f"no signature {signature!r} (has {', '.join(sorted(loaded_sm.signatures))})")
    sig = loaded_sm.signatures[signature]
    specs = sig.structured_input_signature[1]
    # A SignatureDef's inputs are a map (sorted by name); our SavedModels also keep each
    # signature as a tf.function attribute whose positional order is the intended one.
    order = sorted(specs)
    restored = getattr(loaded_sm, signature, None)
    for fn in getattr(restored, "concrete_functions", None) or []:
        args = fn.structured_input_signature[0]
        names = [getattr(a, "name", None) for a in args]
        if sorted(n for n in names if n) == order:
            order = names
            break
    input_signature = [tf.TensorSpec(specs[n].shape, specs[n].dtype, name=n) for n in order]

    @tf.function(autograph=False, input_signature=input_signature)
    def fn(*args):
        return sig(**dict(zip(order, args)))

    return fn


def convert_saved_model(saved_model_dir, path, signature="predict_ids", opset=17):
    """Convert one signature of a SavedModel (a version directory) to ONNX."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  registers the tf-text ops the string signatures use

    sm = Path(saved_model_dir)
    if not (sm / "saved_model.pb").is_file():
        raise ExportError(f"{sm}: not a SavedModel directory (no saved_model.pb); "
                          f"pass the version directory, e.g. <out>/saved_model/<name>/1")
    loaded = tf.saved_model.load(str(sm))
    return convert_function(signature_function(loaded, signature), path, opset)


def quantize_int8(src, dst):
    """Dynamic quantisation: int8 (QInt8) weights with a scale per output channel,
    activations quantised per batch at run time.

    Per-channel scales, because one scale per weight matrix moved too many labels: the
    MRPC MiniLM-L6 cross-encoder kept 96.7% of its test labels per-tensor, 98.6% per-channel
    (accuracy 75.0 -> 73.6 and -> 74.3).

    A fused graph (export/fusion.py) works the same way: its onnxruntime contrib ops have no ONNX
    type inference, so their outputs are declared float (`DefaultTensorType`), and the quantiser
    turns each fused `Attention` into a `QAttention` (int8 QKV weights).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst = Path(dst)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs one INFO line per skipped tensor on the root logger
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        root.setLevel(level)
    _check_runtime(dst)
    return dst


def optimized_path(src, level):
    src = Path(src)
    return src.with_name(f"{src.stem}.opt-{level}.onnx")


def optimize(src, level, dst=None):
    """Save onnxruntime's graph-optimised model (`<stem>.opt-<level>.onnx`).

    `extended`/`all` may fuse into com.microsoft contrib ops (onnxruntime only) and
    `all` adds layout changes tuned for this machine's CPU: a file to serve with
    onnxruntime here, not a portable ONNX model.
    """
    import onnxruntime as ort

    if level not in LEVELS:
        raise ExportError(f"ort optimisation level {level!r}: expected one of {'|'.join(LEVELS)}")
    dst = Path(dst) if dst else optimized_path(src, level)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                     "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                     "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    opts.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
    return dst


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m export.onnx",
                                description="Convert a signature of an exported SavedModel to ONNX.")
    p.add_argument("saved_model", help="SavedModel version directory, e.g. <out>/saved_model/<name>/1")
    p.add_argument("output", help="ONNX file to write")
    p.add_argument("--signature", default="predict_ids",
                   help="signature to convert (default predict_ids; string signatures cannot be converted)")
    p.add_argument("--opset", type=int, default=17, help=f"ONNX opset (>= {MIN_OPSET}, default 17)")
    p.add_argument("--int8", action="store_true", help="also write <stem>.int8.onnx (dynamic quantisation)")
    p.add_argument("--optimize", choices=LEVELS, help="also write <stem>.opt-<level>.onnx (onnxruntime)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    try:
        out = convert_saved_model(args.saved_model, args.output, args.signature, args.opset)
        print(f"wrote {out}")
        if args.int8:
            print(f"wrote {quantize_int8(out, out.with_name(out.stem + '.int8.onnx'))}")
        if args.optimize:
            print(f"wrote {optimize(out, args.optimize)}")
    except Exception as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
