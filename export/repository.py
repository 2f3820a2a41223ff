"""Model repositories of the published ONNX and OpenVINO files, as Triton Inference Server and OpenVINO Model Server read them.

    <out>/triton/<model>/config.pbtxt              Triton's model configuration (platform onnxruntime_onnx)
    <out>/triton/<model>/<version>/model.onnx      the file `serve` runs for that function
    <out>/ovms/<model>/<version>/model.xml, .bin   the OpenVINO IR for OpenVINO Model Server (model.onnx,
                                                   the ONNX file, when the export has no IR)
    <out>/ovms/config.json                         OVMS's multi-model config (base_path /models/<model>)
    <out>/ovms/config.local.json                   the same with absolute local paths

Each ids-level function is its own model: `<name>` (predict_ids), `<name>_encode` (encode_ids:
sbert, virt), `<name>_score` (virt). The file of each is the one `serve` runs
(`runtime.backends.onnx_file`, fp32: the fused graph when published, else the portable one), and
`<version>` is the export's SavedModel version. The files are hard links to the published ones
in `<out>/onnx/` (no extra disk); a filesystem that refuses links gets a copy, with a log line.
Both repositories describe the latest export, like `onnx/`: they are rebuilt on each export.

The engines serve the ids-level graphs: a client tokenises with the export's vocab.txt
(docs/serving.md, "Triton and OpenVINO Model Server").
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from common.files import replace_dir
from runtime.backends import onnx_file
from runtime.onnx import ONNX_FILES
from runtime.openvino import OV_FILES  # file names only: openvino loads lazily

log = logging.getLogger(__name__)

ENGINES = ("triton", "ovms")
SUFFIX = {"predict_ids": "", "encode_ids": "_encode", "score": "_score"}
# ONNX element types (onnx.TensorProto) -> Triton's config data_type
TRITON_TYPES = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16", 6: "TYPE_INT32",
                7: "TYPE_INT64", 9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64", 12: "TYPE_UINT32",
                13: "TYPE_UINT64", 16: "TYPE_BF16"}


def model_names(name, fns):
    """Repository model name of each function in `fns`."""
    return {fn: name + SUFFIX[fn] for fn in ONNX_FILES if fn in fns}


def onnx_version_files(out, fn):
    """The files of `fn`'s version directory: {name in the directory: published file}."""
    return {"model.onnx": onnx_file(Path(out) / "onnx", fn)}


def ovms_version_files(out, fn):
    """OVMS's files of `fn`: the OpenVINO IR (model.xml + model.bin, fp16 weights) when the export
    published one, else the ONNX file (OVMS reads both)."""
    xml = Path(out) / "openvino" / OV_FILES[fn]
    if xml.is_file():
        return {"model.xml": xml, "model.bin": xml.with_suffix(".bin")}
    return onnx_version_files(out, fn)


# What each engine's version directory holds.
SOURCES = {"triton": onnx_version_files, "ovms": ovms_version_files}


def link(src, dst):
    """Hard link `dst` to `src`; a copy (logged) where the filesystem refuses links."""
    try:
        os.link(src, dst)
    except OSError as err:
        shutil.copyfile(src, dst)
        log.info("%s: copied, not linked (%s): it takes %.1f MB more disk", dst, err.strerror or err,
                 Path(src).stat().st_size / 2**20)


def write_repositories(out, engines, name, version, fns):
    """Lay `fns`' published files out as each engine in `engines` reads them; returns
    {engine: {function: model directory}}. Each repository directory is replaced whole."""
    out = Path(out)
    written = {}
    for engine in engines:
        tmp = out / f".{engine}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        models = {}
        for fn, model in model_names(name, fns).items():
            files = SOURCES[engine](out, fn)
            missing = [str(p) for p in files.values() if not Path(p).is_file()]
            if missing:
                raise FileNotFoundError(f"{engine} repository: {', '.join(missing)} not published")
            vdir = tmp / model / str(version)
            vdir.mkdir(parents=True)
            for dest, src in files.items():
                link(src, vdir / dest)
            if engine == "triton":
                (tmp / model / "config.pbtxt").write_text(triton_config(model, vdir / "model.onnx"), encoding="utf-8")
            models[fn] = out / engine / model
        if engine == "ovms":
            write_ovms_config(tmp, sorted(m.name for m in models.values()), out / engine)
        replace_dir(tmp, out / engine)
        written[engine] = {fn: str(p) for fn, p in models.items()}
    return written


def _dims(value):
    """An ONNX value's shape as Triton dims: -1 for each dynamic axis."""
    return [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]


def triton_config(model, onnx_path):
    """config.pbtxt of one ONNX file: its graph's own input / output names, types and shapes.

    max_batch_size 0 (the dims include the batch axis): a request is a batch the client padded
    itself, and Triton's batcher can only join requests whose other dims are equal (every
    sequence length differs), while VIRT's score broadcasts one query (x_batch 1) over K
    candidates (y_batch K): two batch axes, which Triton's batching cannot express."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    init = {i.name for i in graph.initializer}

    def block(values):
        rows = []
        for v in values:
            elem = v.type.tensor_type.elem_type
            if elem not in TRITON_TYPES:
                raise ValueError(f"{onnx_path}: {v.name} has ONNX element type {elem}, which Triton has no type for")
            rows.append(f'  {{\n    name: "{v.name}"\n    data_type: {TRITON_TYPES[elem]}\n'
                        f'    dims: [ {", ".join(str(d) for d in _dims(v))} ]\n  }}')
        return ",\n".join(rows)

    inputs = [v for v in graph.input if v.name not in init]
    return (f'name: "{model}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
            f"input [\n{block(inputs)}\n]\noutput [\n{block(graph.output)}\n]\n"
            f"version_policy: {{ latest: {{ num_versions: 1 }} }}\n")


def write_ovms_config(root, models, final_root, base_path_prefix="/models"):
    """OVMS's `config.json` (model_config_list; base_path `<prefix>/<model>`, the Docker layout:
    mount `<out>/ovms` at /models) and `config.local.json` (absolute paths of `final_root`)."""
    def render(base):
        return json.dumps({"model_config_list": [{"config": {"name": m, "base_path": base(m)}} for m in models]},
                          indent=2) + "\n"

    root = Path(root)
    (root / "config.json").write_text(render(lambda m: f"{base_path_prefix.rstrip('/')}/{m}"), encoding="utf-8")
    (root / "config.local.json").write_text(render(lambda m: str((Path(final_root) / m).resolve())),
                                            encoding="utf-8")
