"""Frozen GraphDef (.pb) of the ids signature, for TF1-style runtimes (C++/Java `Session`).

`convert_variables_to_constants_v2` folds the weights into the graph. Freezing renames
the outputs (`Identity:0`, `Identity_1:0`, ... in the order of the sorted output keys),
so `io.json` next to `model.pb` records which tensor is which:

    {"inputs":  {"input_ids": "input_ids:0", ...},
     "outputs": {"probs": "Identity:0"},
     "dtypes": {...}, "shapes": {...}}

Reload with `load_frozen(dir)` (tf.compat.v1.wrap_function + import_graph_def):

    fn = load_frozen("<out>/frozen")
    fn(input_ids=..., token_type_ids=..., attention_mask=...)["probs"]
"""

from __future__ import annotations

import json
from pathlib import Path

import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from common.files import write_bytes


def freeze(fn, out_dir, extra=None):
    """Freeze a `tf.function` with an input_signature to `<out_dir>/model.pb` + `io.json`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    concrete = fn.get_concrete_function()
    frozen = convert_variables_to_constants_v2(concrete)
    graph_def = frozen.graph.as_graph_def()
    in_names = [s.name for s in fn.input_signature]
    inputs = {n: t.name for n, t in zip(in_names, frozen.inputs)}
    structured = concrete.structured_outputs  # {name: tensor}; the frozen function's are a flat list
    keys = sorted(structured)  # tf.nest flattens a dict in sorted-key order
    outputs = {k: t.name for k, t in zip(keys, frozen.outputs)}
    io = {"inputs": inputs, "outputs": outputs,
          "dtypes": {**{n: s.dtype.name for n, s in zip(in_names, fn.input_signature)},
                     **{k: structured[k].dtype.name for k in keys}},
          "shapes": {**{n: s.shape.as_list() for n, s in zip(in_names, fn.input_signature)},
                     **{k: structured[k].shape.as_list() for k in keys}},
          **(extra or {})}
    write_bytes(out / "model.pb", graph_def.SerializeToString())
    (out / "io.json").write_text(json.dumps(io, indent=2), encoding="utf-8")
    return io


def load_frozen(out_dir):
    """`model.pb` + `io.json` -> a function of keyword tensors returning a dict of outputs."""
    out = Path(out_dir)
    io = json.loads((out / "io.json").read_text(encoding="utf-8"))
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString((out / "model.pb").read_bytes())

    def _import():
        tf.compat.v1.import_graph_def(graph_def, name="")

    wrapped = tf.compat.v1.wrap_function(_import, [])
    g = wrapped.graph
    names = list(io["inputs"])
    pruned = wrapped.prune([g.as_graph_element(io["inputs"][n]) for n in names],
                           {k: g.as_graph_element(v) for k, v in io["outputs"].items()})

    def call(**inputs):
        missing = set(names) - set(inputs)
        if missing:
            raise TypeError(f"missing inputs {sorted(missing)}")
        args = [tf.convert_to_tensor(inputs[n], tf.as_dtype(io["dtypes"][n])) for n in names]
        return pruned(*args)

    call.io = io
    return call
