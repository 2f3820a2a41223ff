"""OpenVINO IR of an export's ONNX graphs, and its NNCF int8 copy (docs/export.md, "OpenVINO").

    write_ir(loaded, e, onnx_files, out_dir, fallback_pairs, max_len)   the export's openvino/ files
    convert(onnx_path, xml_path)                  openvino.convert_model, saved fp16-compressed
    quantize(onnx_path, xml_path, feeds, options) nncf.quantize on calibration feeds -> model.int8.xml
    calibration_pairs(loaded, n, fallback)        up to n (text_a, text_b) from the training file

The IR is converted from the ONNX file `source_graph` names (one function, so that which ONNX
files the export writes can change in one place), saved with `compress_to_fp16=True`: one fp16
copy of the weights (the SavedModel and the ONNX graph hold the fp32 ones); the CPU plugin decompresses
them to f32 or bf16 when it compiles, and parity.py checks the result against Keras.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from export import ExportError
from runtime.openvino import INT8_FILE, OV_FILES  # noqa: F401  (re-exported for export/task.py)

log = logging.getLogger(__name__)

# NNCF options of the int8 IR (docs/export.md, "OpenVINO": the tables that chose them). Every encoder
# MatMul in int8, SmoothQuant off (`smooth_quant_alpha` < 0), the pooler and the classifier kept out
# (`ignored`: node-name patterns, bf16 / f32 there). On MRPC, BQ and the sample set this stayed within
# 0.33 point of fp32 (no paired test separates them) and ran 1.2x the IR that also kept the 12 output
# projections out of int8 at MRPC lengths; NNCF's default SmoothQuant cost 2.8 points on MRPC.
INT8_OPTIONS = {"model_type": "transformer", "preset": "mixed", "smooth_quant_alpha": -1.0,
                "ignored": [r".*pooler.*", r".*classifier.*"]}


# The onnxruntime-fused copy of a function's graph (export/task.py's labels), converted when the export
# wrote no portable one.
FUSED_LABELS = {"predict_ids": "fused", "encode_ids": "fused.encode_ids"}


def source_graph(onnx_files, fn, fused=True):
    """The ONNX file the IR of `fn` is converted from (`onnx_files`: export/task.py's label -> path): the
    onnxruntime-fused graph when `fused` and the export wrote one, else the portable graph (tf2onnx's
    standard ops), else the fused one. Both convert; on MRPC the fused one's IR ran bf16 faster in 2 of 3
    alternating rounds and kept every label (docs/export.md, "OpenVINO"); int8 is quantised from the
    portable graph (`fused=False`), on which NNCF's options were measured."""
    names = [FUSED_LABELS.get(fn), fn] if fused else [fn, FUSED_LABELS.get(fn)]
    path = next((onnx_files[n] for n in names if n in onnx_files), None)
    if path is None:
        raise ExportError(f"no ONNX graph of {fn} to convert to OpenVINO (export.formats needs onnx)")
    return Path(path)


def convert(onnx_path, xml_path, compress=True):
    """`onnx_path` -> OpenVINO IR `xml_path` (+ .bin). Returns the path; an unconvertible graph is an ExportError."""
    import openvino as ov

    xml_path = Path(xml_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as e:  # the frontend raises OpConversionFailure, GeneralFailure, RuntimeError...
        raise ExportError(f"{onnx_path}: OpenVINO cannot convert it: {str(e).splitlines()[0]}") from None
    ov.save_model(model, str(xml_path), compress_to_fp16=compress)
    return xml_path


def quantize(onnx_path, xml_path, feeds, options=None):
    """NNCF post-training int8 of the graph at `onnx_path` on `feeds` (a list of input dicts, one
    calibration item each), saved as `xml_path` (fp16-compressed where not int8). `options`: keys of
    INT8_OPTIONS. Returns (path, seconds)."""
    import nncf
    import openvino as ov

    o = {**INT8_OPTIONS, **(options or {})}
    t0 = time.time()
    model = ov.convert_model(str(onnx_path))
    kwargs = {"subset_size": len(feeds), "preset": getattr(nncf.QuantizationPreset, o["preset"].upper())}
    if o["model_type"]:
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
    if o["smooth_quant_alpha"] is not None:
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

        kwargs["advanced_parameters"] = AdvancedQuantizationParameters(
            smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=float(o["smooth_quant_alpha"])))
    if o["ignored"]:
        kwargs["ignored_scope"] = nncf.IgnoredScope(patterns=list(o["ignored"]), validate=False)
    quantized = nncf.quantize(model, nncf.Dataset(feeds), **kwargs)
    xml_path = Path(xml_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(xml_path), compress_to_fp16=True)
    return xml_path, time.time() - t0


def int8_coverage(xml_path):
    """The MatMuls of an IR by precision: {"int8": [names], "kept": [names]}, int8 being those with a
    FakeQuantize on an input (what NNCF inserts; OpenVINO runs them in int8)."""
    from runtime.openvino import core

    cover = {"int8": [], "kept": []}
    for op in core().read_model(str(xml_path)).get_ordered_ops():
        if op.get_type_name() == "MatMul":
            quantised = any(op.input_value(i).get_node().get_type_name() == "FakeQuantize"
                            for i in range(op.get_input_size()))
            cover["int8" if quantised else "kept"].append(op.get_friendly_name())
    return cover


def calibration_pairs(loaded, n, fallback, given=None):
    """Up to `n` (text_a, text_b) pairs to calibrate int8 with, and where they came from: a seeded sample
    of `given` (export.int8_calibration_data: an unreadable file is an ExportError naming the key), else
    of the training file model.json's data block names (training/contract.py), else `fallback` (the
    parity pairs: (a, b)) when there is no block or its file cannot be read."""
    from data import DataError, read_pairs
    from training.contract import read_contract

    block = read_contract(loaded.path) or {}
    train = given or ((block.get("files") or {}).get("train") or {}).get("path")
    if train:
        try:
            pairs = read_pairs(train, format=block.get("format") or "auto", text_a=block.get("text_a") or "sentence1",
                               text_b=block.get("text_b") or "sentence2", label=None, on_bad_row="skip")
            if not pairs.text_a:
                raise DataError("no pairs")
            rows = np.random.default_rng(0).permutation(len(pairs.text_a))[:n]
            return [pairs.text_a[i] for i in rows], [pairs.text_b[i] for i in rows], str(train)
        except (OSError, DataError) as e:
            if given:
                raise ExportError(f"export.int8_calibration_data={given}: cannot read pairs from it ({e})") from None
            log.warning("int8 calibration: cannot read the training file %s (%s): using the parity pairs", train, e)
    a, b = fallback
    return list(a[:n]), list(b[:n]), "the parity pairs"


def calibration_feeds(loaded, a, b, max_len):
    """One unpadded predict_ids input dict per pair (NNCF's calibration items). VIRT's graph has an If
    (its `score` broadcasts one query over K candidates, virt/model.py): NNCF quantises each If body on
    the items that take it and fails on a body none takes, so every tenth pair also comes as one query
    against two candidates (the pair's and the next one's second text)."""
    from export.parity import python_features

    feeds = [python_features(loaded, [x], [y], max_len)[0] for x, y in zip(a, b)]
    if loaded.kind_class.late_interaction and len(a) > 1:
        for i in range(0, len(a) - 1, 10):
            one = python_features(loaded, [a[i]], [b[i]], max_len)[0]
            two = python_features(loaded, [a[i], a[i]], [b[i], b[i + 1]], max_len)[0]
            feeds.append({"x_ids": one["x_ids"], "x_mask": one["x_mask"], "y_ids": two["y_ids"], "y_mask": two["y_mask"]})
    return feeds


def write_ir(loaded, e, onnx_files, out_dir, fallback_pairs, max_len):
    """The openvino/ files of an export (`e`: cfg.export) from its ONNX graphs: label -> path
    (predict_ids, encode_ids, score, int8), and what happened for parity.json. A graph OpenVINO cannot
    convert writes no openvino/ file (warned, never an export failure: the ONNX files stand); a failed
    quantisation writes no int8 IR."""
    files, info = {}, {"compress_to_fp16": True, "source": {}}
    t0 = time.time()
    try:
        for fn, name in OV_FILES.items():
            if fn in onnx_files or FUSED_LABELS.get(fn) in onnx_files:
                src = source_graph(onnx_files, fn)
                files[fn] = convert(src, Path(out_dir) / name)
                info["source"][fn] = src.name
    except ExportError as err:
        log.warning("openvino/ not written: %s", err)
        return {}, {"written": False, "reason": str(err)}
    info["seconds"] = round(time.time() - t0, 2)
    if e.int8:
        a, b, source = calibration_pairs(loaded, e.int8_calibration_pairs, fallback_pairs, e.int8_calibration_data)
        try:
            path, seconds = quantize(source_graph(onnx_files, "predict_ids", fused=False), Path(out_dir) / INT8_FILE,
                                     calibration_feeds(loaded, a, b, max_len))
        except Exception as err:  # nncf raises RuntimeError, ValueError, nncf.InternalError...: model.xml stands
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            info["int8"] = {"written": False, "reason": f"nncf.quantize failed: {first}"}
            log.warning("openvino/%s not written: nncf.quantize failed: %s", INT8_FILE, first)
        else:
            files["int8"] = path
            cover = int8_coverage(path)
            info["int8"] = {"calibration_pairs": len(a), "calibration_source": source, "options": dict(INT8_OPTIONS),
                            "seconds": round(seconds, 2), "int8_matmuls": len(cover["int8"]), "kept": cover["kept"]}
            log.info("openvino/%s: NNCF int8 on %d calibration pairs from %s (%.1fs)", INT8_FILE, len(a), source,
                     seconds)
    return {k: str(v) for k, v in files.items()}, info
