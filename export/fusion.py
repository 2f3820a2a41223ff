"""Fused ONNX graphs: onnxruntime's transformer optimiser on our tf2onnx graphs.

    fuse(src, dst, num_heads, hidden_size) -> report dict (fused op counts, model type, notes)

onnxruntime ships a graph optimiser for BERT-like models (`onnxruntime.transformers.optimizer`)
that replaces attention, LayerNorm + residual and GELU subgraphs with single contrib ops
(`Attention`, `SkipLayerNormalization`, `Gelu` / `BiasGelu`, com.microsoft domain). Its pattern
matchers are written for PyTorch exports; on the graph tf2onnx makes of our Keras encoder they
fused nothing (measured 2026-12-02 on the MiniLM-L6 cross-encoder: 0 fused ops with model_type
`bert` and with `bert_tf`), because three TF/Keras lowerings hide the patterns:

1. Keras 3 `LayerNormalization` becomes moments + batch-norm arithmetic
   (`x * m + (beta - mean * m)`, `m = gamma / sqrt(var + eps)`), and tf2onnx turns its
   `ReduceMean` over the last axis into `GlobalAveragePool`;
2. a `Dense` on a [B, T, H] tensor is a `tf.tensordot`: Reshape to [B*T, H], MatMul, Reshape
   back, then the bias Add; the optimiser wants MatMul -> Add;
3. (fixed in modeling/encoder.py) `mask[:, None, None, :]` became Unsqueeze + a no-op Slice;
   the mask is now two `expand_dims`, the Unsqueeze -> Unsqueeze -> Cast -> Sub -> Mul the
   attention matcher looks for;
4. `keras.layers.Embedding` looks rows up with `ops.take`, which wraps negative indices
   (`where(i < 0, i + V, i)`: Cast, Less, Not, Cast, Mul, Add around each Gather), so the
   embedding block (three Gathers, two Adds, LayerNorm) was not fused into
   `EmbedLayerNormalization` as in a PyTorch export (issue 18).

`canonicalize` rewrites 1, 2 and 4 into their plain ONNX forms (an ONNX `LayerNormalization`,
opset >= 17; a 3-D MatMul, which broadcasts like `tensordot` on the last axis; a plain Gather,
which counts negative indices from the back itself); each rewrite checks its whole pattern
(constant weights, ranks, the reshape target built from the input's own shape, the wrap by the
table's own row count) and leaves anything else alone. Then `optimize_model(model_type="bert",
opt_level=0)` fuses; it fuses our embeddings through its GPT-2 matcher, which passes the
position ids in explicitly, and `_embed_default_positions` drops them when they are the default
0..T-1 (the op's own), as in a PyTorch export. With the mask as input, EmbedLayerNormalization
also computes the mask index (valid tokens per row, the `ReduceSum` the Attention nodes had
before) and every Attention takes it. The result is an onnxruntime-only file (contrib ops); the export keeps the portable
`model.onnx` beside it and checks the fused file against Keras like every other artifact.

`opt_level=0` with an explicit onnxruntime basic pass first: the optimiser's own opt_level >= 1
imports torch only to read its version, and torch is not a project requirement.
"""

from __future__ import annotations

import collections
import logging
import tempfile
from pathlib import Path

import numpy as np

from common.files import atomic_path
from export import ExportError

FUSED_OPS = ("Attention", "MultiHeadAttention", "SkipLayerNormalization", "LayerNormalization", "Gelu",
             "BiasGelu", "FastGelu", "EmbedLayerNormalization")
MODEL_TYPE = "bert"  # "bert_tf" fuses the same here (nothing without canonicalize); bert is the maintained one


def _ops(model):
    return collections.Counter(n.op_type for n in model.graph.node)


class _Graph:
    """Producer / consumer maps and constant lookup over an onnx ModelProto (rebuilt after edits)."""

    def __init__(self, model):
        from onnx import numpy_helper

        self.model = model
        self.producer = {o: n for n in model.graph.node for o in n.output}
        self.consumers = collections.defaultdict(list)
        for n in model.graph.node:
            for i in n.input:
                self.consumers[i].append(n)
        self.consts = {i.name: i for i in model.graph.initializer}
        self._np = numpy_helper
        self.outputs = {o.name for o in model.graph.output}

    def const(self, name):
        """numpy value of an initializer or Constant node output, else None."""
        if name in self.consts:
            return self._np.to_array(self.consts[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return self._np.to_array(a.t)
        return None

    def parent(self, node, index, op_type):
        if index >= len(node.input):
            return None
        p = self.producer.get(node.input[index])
        return p if p is not None and p.op_type == op_type else None

    def only_consumer(self, name):
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and name not in self.outputs else None


def _attr(node, name, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _ranks(model):
    """Tensor name -> rank, from onnx shape inference (None when unknown)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    ranks = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        t = v.type.tensor_type
        if t.HasField("shape"):
            ranks[v.name] = len(t.shape.dim)
    return ranks


def _operands(g, node, op_type, const_other=False):
    """(the input of binary `node` produced by an `op_type` node, the other input's name), either
    order; with `const_other` the other input must be a constant. (None, None) when neither fits."""
    for j in (0, 1):
        p = g.parent(node, j, op_type)
        if p is not None and (not const_other or g.const(node.input[1 - j]) is not None):
            return p, node.input[1 - j]
    return None, None


def _layer_norms(model, ranks):
    """Keras 3 LayerNormalization (tf2onnx lowering) -> ONNX LayerNormalization, last axis.

        mean = GAP(x); d = x - mean; var = GAP(d * d); r = 1 / sqrt(var + eps); m = r * gamma
        out  = x * m + (-mean * m + beta)                       (GAP: GlobalAveragePool)
    """
    from onnx import helper

    g = _Graph(model)
    new, drop, count = [], set(), 0
    for out_add in model.graph.node:
        if out_add.op_type != "Add" or len(out_add.input) != 2:
            continue
        for i in (0, 1):
            mul_x, add_beta = g.parent(out_add, i, "Mul"), g.parent(out_add, 1 - i, "Add")
            if mul_x and add_beta:
                break
        else:
            continue
        # add_beta = Mul(Neg(mean), m) + beta
        mul_neg, beta = _operands(g, add_beta, "Mul", const_other=True)
        neg, m_name = _operands(g, mul_neg, "Neg") if mul_neg is not None else (None, None)
        if neg is None or m_name not in mul_x.input:
            continue
        x = mul_x.input[1 - list(mul_x.input).index(m_name)]
        mean = g.producer.get(neg.input[0])
        m = g.producer.get(m_name)
        if mean is None or mean.op_type != "GlobalAveragePool" or mean.input[0] != x or m is None or m.op_type != "Mul":
            continue
        recip, gamma = _operands(g, m, "Reciprocal", const_other=True)
        if recip is None:
            continue
        sqrt = g.parent(recip, 0, "Sqrt")
        add_eps = sqrt and g.parent(sqrt, 0, "Add")
        if add_eps is None:
            continue
        var = eps = None
        for j in (0, 1):
            var = g.parent(add_eps, j, "GlobalAveragePool")
            if var is not None:
                eps = g.const(add_eps.input[1 - j])
                break
        sq = var and g.parent(var, 0, "Mul")
        sub = sq and g.parent(sq, 0, "Sub")
        if (eps is None or eps.size != 1 or sq is None or sub is None or sq.input[0] != sq.input[1]
                or list(sub.input) != [x, mean.output[0]] or ranks.get(x) != 3):
            continue
        hidden = g.const(gamma).size
        if g.const(gamma).size != g.const(beta).size:
            continue
        # 1-D gamma / beta for LayerNormalization (they may be stored as [1, 1, H])
        names = []
        for tag, src in (("gamma", gamma), ("beta", beta)):
            value = g.const(src).reshape(hidden).astype(np.float32)
            name = f"{out_add.name}/ln_{tag}"
            model.graph.initializer.append(g._np.from_array(value, name))
            names.append(name)
        new.append(helper.make_node("LayerNormalization", [x, *names], [out_add.output[0]],
                                    name=f"{out_add.name}/LayerNorm", axis=-1, epsilon=float(eps.reshape(()))))
        drop.add(id(out_add))
        count += 1
    _replace_nodes(model, drop, new)
    return count


def _through_casts(g, name):
    node = g.producer.get(name)
    while node is not None and node.op_type == "Cast":
        node = g.producer.get(node.input[0])
    return node


def _is_leading_dims_plus(g, name, source, last):
    """True when tensor `name` is Concat(shape(`source`)[:2], [`last`]) (through Casts): the
    target of tensordot's reshape back, [B, T, O]. Anything else (e.g. a reshape that also
    splits heads) is not the tensordot pattern."""
    concat = _through_casts(g, name)
    if concat is None or concat.op_type != "Concat" or len(concat.input) != 2:
        return False
    tail = g.const(concat.input[1])
    if tail is None or list(np.ravel(tail)) != [last]:
        return False
    head = _through_casts(g, concat.input[0])
    if head is None:
        return False
    if head.op_type == "Gather":
        idx = g.const(head.input[1])
        ok = idx is not None and list(np.ravel(idx)) == [0, 1] and _attr(head, "axis", 0) == 0
    elif head.op_type == "Slice":
        starts, ends = g.const(head.input[1]), g.const(head.input[2])
        axes = g.const(head.input[3]) if len(head.input) > 3 and head.input[3] else np.array([0])
        steps = g.const(head.input[4]) if len(head.input) > 4 and head.input[4] else np.array([1])
        ok = all(v is not None for v in (starts, ends, axes, steps)) and \
            [list(np.ravel(v)) for v in (starts, ends, axes, steps)] == [[0], [2], [0], [1]]
    else:
        return False
    shape = ok and _through_casts(g, head.input[0])
    return bool(shape) and shape.op_type == "Shape" and shape.input[0] == source and \
        _attr(shape, "start", 0) == 0 and _attr(shape, "end") is None


def _tensordots(model, ranks):
    """`tf.tensordot(x, W, 1)` lowerings -> MatMul(x, W) on the rank-3 x (ONNX MatMul broadcasts):

        Reshape(x, [-1, H]) | Squeeze(Reshape(x, [1, -1, 0]), [0])  -> MatMul(., W) -> Reshape(., shape(x)[:2] + [O])
    """
    g = _Graph(model)
    count = 0
    for mm in model.graph.node:
        if mm.op_type != "MatMul":
            continue
        w = g.const(mm.input[1])
        if w is None or w.ndim != 2:
            continue
        flat = g.producer.get(mm.input[0])
        if flat is None:
            continue
        if flat.op_type == "Squeeze":
            axes = g.const(flat.input[1]) if len(flat.input) > 1 else _attr(flat, "axes")
            inner = g.parent(flat, 0, "Reshape")
            if inner is None or axes is None or list(np.ravel(axes)) != [0] or \
                    list(np.ravel(g.const(inner.input[1]) if g.const(inner.input[1]) is not None else [])) != [1, -1, 0]:
                continue
            x = inner.input[0]
        elif flat.op_type == "Reshape":
            target = g.const(flat.input[1])
            if target is None or list(np.ravel(target)) != [-1, w.shape[0]]:
                continue
            x = flat.input[0]
        else:
            continue
        back = g.only_consumer(mm.output[0])
        if ranks.get(x) != 3 or back is None or back.op_type != "Reshape" or \
                not _is_leading_dims_plus(g, back.input[1], x, w.shape[1]):
            continue
        # MatMul(x, W) now produces what the Reshape back produced.
        mm.input[0] = x
        old = mm.output[0]
        mm.output[0] = back.output[0]
        back.output[0] = old + "/unused"
        count += 1
    _prune(model)
    return count


def _zero_biases(model, ranks):
    """MatMul(x, W) on a rank-3 x without a bias Add after it -> Add(MatMul(x, W), 0).

    tf2onnx drops the Add of an all-zero bias (a randomly initialised Dense); the fusions
    look for MatMul -> Add. Adding 0.0 changes no value."""
    from onnx import helper

    g = _Graph(model)
    count, new = 0, []
    for mm in list(model.graph.node):
        w = mm.op_type == "MatMul" and g.const(mm.input[1])
        if w is None or w is False or w.ndim != 2 or ranks.get(mm.input[0]) != 3 or mm.output[0] in g.outputs:
            continue
        users = g.consumers.get(mm.output[0], [])
        if any(u.op_type == "Add" and any(g.const(i) is not None and g.const(i).ndim == 1 for i in u.input)
               for u in users):
            continue
        out = mm.output[0]
        mm.output[0] = out + "/no_bias"
        zero = f"{mm.name}/zero_bias"
        model.graph.initializer.append(g._np.from_array(np.zeros(w.shape[1], w.dtype), zero))
        new.append(helper.make_node("Add", [mm.output[0], zero], [out], name=f"{mm.name}/bias"))
        count += 1
    _replace_nodes(model, set(), new)
    return count


def _attention_scales(model, head_size):
    """Softmax(MatMul(q, k) * c + mask) -> Softmax(MatMul(q, k) / (1 / c) + mask).

    TensorFlow's grappler turns `scores / sqrt(d)` into a product, and with the mask's product
    beside it on the same Add the attention matcher takes the wrong one. Only a scale equal to
    1 / sqrt(head_size) is rewritten: the fused Attention op applies that scale itself."""
    from onnx import helper

    g = _Graph(model)
    want = 1.0 / np.sqrt(head_size)
    count, new, drop = 0, [], set()
    for sm in model.graph.node:
        add = sm.op_type == "Softmax" and g.parent(sm, 0, "Add")
        if not add:
            continue
        for i, name in enumerate(add.input):
            mul = g.producer.get(name)
            if mul is None or mul.op_type != "Mul" or g.only_consumer(mul.output[0]) is None:
                continue
            j = 0 if g.producer.get(mul.input[0]) is not None and g.producer[mul.input[0]].op_type == "MatMul" else 1
            c = g.const(mul.input[1 - j])
            if g.parent(mul, j, "MatMul") is None or c is None or c.size != 1 or not np.isclose(float(c.reshape(())), want, rtol=1e-6):
                continue
            inv = f"{mul.name}/inv_scale"
            model.graph.initializer.append(g._np.from_array(np.array(1.0 / c.reshape(()), c.dtype), inv))
            new.append(helper.make_node("Div", [mul.input[j], inv], [mul.output[0]], name=f"{mul.name}/div"))
            drop.add(id(mul))
            if i != 0:  # the scaled scores first: Add(scores, mask), the order the matcher walks
                add.input[0], add.input[i] = add.input[i], add.input[0]
            count += 1
            break
    _replace_nodes(model, drop, new)
    return count


INT_TYPES = (6, 7)  # onnx TensorProto INT32, INT64
FLOAT_TYPES = (1, 10, 11)  # FLOAT, FLOAT16, DOUBLE


def _through_int_casts(g, name):
    """The tensor that `name` is a Cast (to int32 / int64, any number of them) of; `name` itself when
    no such Cast produces it. Used on shape tensors only, whose values fit in int32."""
    node = g.producer.get(name)
    while node is not None and node.op_type == "Cast" and _attr(node, "to") in INT_TYPES:
        name = node.input[0]
        node = g.producer.get(name)
    return name


def _is_const(g, name, value):
    v = g.const(name)
    return v is not None and v.size == np.size(value) and np.array_equal(np.ravel(v), np.ravel(value))


def _wrapped_index(g, name):
    """(i, V) when tensor `name` is Keras's negative-index wrap of an index tensor i, else (None, None):

        tf.where(i < 0, i + V, i)   ->   Add(Mul(Cast(Less(Cast(i, float), 0)), Add(i, V)),
                                             Mul(i, Cast(Not(that Less))))          (tf2onnx)

    (keras.layers.Embedding's lookup, `ops.take`, in the TensorFlow backend.)"""
    add = g.producer.get(name)
    if add is None or add.op_type != "Add" or len(add.input) != 2:
        return None, None
    muls = [g.producer.get(n) for n in add.input]
    if any(m is None or m.op_type != "Mul" for m in muls):
        return None, None
    for m_neg, m_pos in (muls, muls[::-1]):
        for j in (0, 1):
            cast_less, shifted = g.parent(m_neg, j, "Cast"), g.parent(m_neg, 1 - j, "Add")
            less = cast_less and g.parent(cast_less, 0, "Less")
            if not less or not shifted or _attr(cast_less, "to") not in INT_TYPES:
                continue
            to_float = g.parent(less, 0, "Cast")
            if to_float is None or _attr(to_float, "to") not in FLOAT_TYPES or not _is_const(g, less.input[1], 0):
                continue
            i = to_float.input[0]
            if i not in shifted.input:
                continue
            v = g.const(shifted.input[1 - list(shifted.input).index(i)])
            if v is None or v.size != 1:
                continue
            for k in (0, 1):
                cast_not = g.parent(m_pos, k, "Cast")
                not_ = cast_not and g.parent(cast_not, 0, "Not")
                if not_ and m_pos.input[1 - k] == i and not_.input[0] == less.output[0] and \
                        _attr(cast_not, "to") in INT_TYPES:
                    return i, int(v.reshape(()))
    return None, None


def _table_gathers(g, model):
    """Gather nodes that look up rows of a constant 2-D table (embedding lookups)."""
    for node in model.graph.node:
        if node.op_type == "Gather" and _attr(node, "axis", 0) == 0:
            table = g.const(node.input[0])
            if table is not None and table.ndim == 2:
                yield node, table


def _embedding_lookups(model):
    """Gather(table, wrap(i)) -> Gather(table, i), where wrap is Keras's negative-index wrap
    (`_wrapped_index`) with V = the table's rows.

    The same value for every index in [-V, V): ONNX Gather counts negative indices from the
    back as the wrap does, and an index outside fails in both. What it removes are the Casts,
    Less, Not, Mul and Add around each embedding lookup, which also hide the embedding pattern
    from onnxruntime's EmbedLayerNormalization fusion."""
    g = _Graph(model)
    count = 0
    for gather, table in list(_table_gathers(g, model)):
        i, v = _wrapped_index(g, gather.input[1])
        if i is not None and v == table.shape[0]:
            gather.input[1] = i
            count += 1
    _prune(model)
    return count


def _shape_length(g, name):
    """The tensor whose Shape()[1] tensor `name` is (Squeeze(Slice(shape, [1], [2], [0])) or
    Gather(shape, 1), through integer Casts), else None."""
    node = g.producer.get(name)
    if node is not None and node.op_type == "Squeeze":
        axes = g.const(node.input[1]) if len(node.input) > 1 and node.input[1] else _attr(node, "axes")
        sl = g.parent(node, 0, "Slice")
        if sl is None or (axes is not None and list(np.ravel(axes)) != [0]) or len(sl.input) < 4:
            return None
        steps_ok = len(sl.input) < 5 or not sl.input[4] or _is_const(g, sl.input[4], [1])
        if not (_is_const(g, sl.input[1], [1]) and _is_const(g, sl.input[2], [2]) and
                _is_const(g, sl.input[3], [0]) and steps_ok):
            return None
        shape_name = sl.input[0]
    elif node is not None and node.op_type == "Gather":
        if _attr(node, "axis", 0) != 0 or not _is_const(g, node.input[1], 1) or g.const(node.input[1]).ndim != 0:
            return None
        shape_name = node.input[0]
    else:
        return None
    shape = g.producer.get(_through_int_casts(g, shape_name))
    if shape is None or shape.op_type != "Shape" or _attr(shape, "start", 0) != 0 or _attr(shape, "end") is not None:
        return None
    return shape.input[0]


def _default_positions(g, name):
    """`ids` when tensor `name` is (through integer Casts) the default position ids of `ids`,
    `broadcast_to(range(T)[None, :], shape(ids))` with T = shape(ids)[1]:

        Expand([no-op Slice](Unsqueeze(Range(0, shape(ids)[1], 1), [0])), Shape(ids))

    (as tf2onnx writes modeling/encoder.py's, with int32 shape Casts and a Slice for `[None, :]`);
    else None."""
    expand = g.producer.get(_through_int_casts(g, name))
    if expand is None or expand.op_type != "Expand":
        return None
    shape = g.producer.get(_through_int_casts(g, expand.input[1]))
    if shape is None or shape.op_type != "Shape" or _attr(shape, "start", 0) != 0 or _attr(shape, "end") is not None:
        return None
    ids = shape.input[0]
    row = g.producer.get(expand.input[0])
    if row is not None and row.op_type == "Slice":  # `[None, :]`: starts 0, ends past any size, steps 1
        starts, ends = g.const(row.input[1]), g.const(row.input[2])
        steps = g.const(row.input[4]) if len(row.input) > 4 and row.input[4] else np.array([1])
        if starts is None or ends is None or steps is None or np.any(starts != 0) or np.any(ends < 10 ** 9) \
                or np.any(steps != 1):
            return None
        row = g.producer.get(row.input[0])
    if row is None or row.op_type != "Unsqueeze" or len(row.input) < 2 or not _is_const(g, row.input[1], [0]):
        return None
    rng = g.parent(row, 0, "Range")
    if rng is None or not _is_const(g, rng.input[0], 0) or not _is_const(g, rng.input[2], 1) \
            or _shape_length(g, rng.input[1]) != ids:
        return None
    return ids


def _embed_default_positions(model):
    """After the fusions: an EmbedLayerNormalization whose position_ids input (index 8) is the default
    0..T-1 of its own input_ids (`_default_positions`) loses that input; without it the op uses
    position t for token t, the same rows of the position table. (onnxruntime fuses our embeddings
    through its GPT-2 matcher, which keeps whatever feeds the position Gather as position_ids.)"""
    g = _Graph(model)
    count = 0
    for node in model.graph.node:
        if node.op_type != "EmbedLayerNormalization" or len(node.input) < 9 or not node.input[8]:
            continue
        ids = _default_positions(g, node.input[8])
        if ids is not None and _through_int_casts(g, node.input[0]) == _through_int_casts(g, ids):
            del node.input[8]
            while node.input and not node.input[-1]:  # no trailing empty optional inputs
                del node.input[-1]
            count += 1
    _prune(model)
    return count


def _replace_nodes(model, drop_ids, new_nodes):
    kept = [n for n in model.graph.node if id(n) not in drop_ids]
    del model.graph.node[:]
    model.graph.node.extend(kept + new_nodes)
    _prune(model)
    _toposort(model)


def _prune(model):
    """Drop nodes whose outputs nobody reads (the replaced subgraphs), then unused initializers."""
    outputs = {o.name for o in model.graph.output}
    while True:
        used = {i for n in model.graph.node for i in n.input} | outputs
        keep = [n for n in model.graph.node if any(o in used for o in n.output)]
        if len(keep) == len(model.graph.node):
            break
        del model.graph.node[:]
        model.graph.node.extend(keep)
    used = {i for n in model.graph.node for i in n.input}
    inits = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)


def _toposort(model):
    available = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer} | {""}
    pending, ordered = list(model.graph.node), []
    while pending:
        rest = []
        for n in pending:
            if all(i in available for i in n.input):
                ordered.append(n)
                available.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise ExportError(f"fusion: the rewritten graph has a cycle or a dangling input at {rest[0].name}")
        pending = rest
    del model.graph.node[:]
    model.graph.node.extend(ordered)


def canonicalize(model, head_size):
    """Rewrite `model` (in place) into the forms onnxruntime's BERT fusions match; returns counts."""
    counts = {"embedding_lookup": _embedding_lookups(model)}
    counts["layer_norm"] = _layer_norms(model, _ranks(model))
    counts["tensordot"] = _tensordots(model, _ranks(model))
    counts["zero_bias"] = _zero_biases(model, _ranks(model))
    counts["attention_scale"] = _attention_scales(model, head_size)
    return counts


def _basic(src, dst):
    """onnxruntime's basic (portable) graph optimisation: constant folding, redundant nodes."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])


def fuse(src, dst, num_heads, hidden_size):
    """Write the fused graph of `src` to `dst`; returns a report (op counts before/after, rewrites).

    Raises ExportError when the optimiser is unavailable or fails; a graph that it cannot fuse
    is still written (report["fused_ops"] == {}), the caller decides what to keep."""
    import onnx

    try:
        from onnxruntime.transformers.optimizer import optimize_model
    except ImportError as e:  # sympy / onnx missing
        raise ExportError(f"onnxruntime's transformer optimiser is unavailable: {e}") from None
    dst = Path(dst)
    log_names = ("onnxruntime.transformers", "fusion_base", "fusion_utils", "onnx_model", "fusion_attention",
                 "onnx_model_bert", "fusion_skiplayernorm", "fusion_layernorm", "shape_infer_helper",
                 "symbolic_shape_infer", "fusion_options")
    saved = {n: logging.getLogger(n).level for n in log_names}
    for n in log_names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory(prefix="fuse-") as tmp:
            before = _ops(onnx.load(str(src)))
            basic = Path(tmp) / "basic.onnx"
            _basic(src, basic)
            model = onnx.load(str(basic))
            rewrites = canonicalize(model, int(hidden_size) // int(num_heads))
            opt = optimize_model(model, model_type=MODEL_TYPE, num_heads=int(num_heads),
                                 hidden_size=int(hidden_size), opt_level=0, use_gpu=False)
            rewrites["embed_positions"] = _embed_default_positions(opt.model)
    except ExportError:
        raise
    except Exception as e:  # the optimiser raises whatever its matchers raise
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ExportError(f"{src}: onnxruntime's transformer optimiser failed: {first}") from None
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)
    after = _ops(opt.model)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp_dst:
        opt.save_model_to_file(str(tmp_dst))
    fused = {op: after[op] for op in FUSED_OPS if after[op] and op != "LayerNormalization"}
    return {"model_type": MODEL_TYPE, "rewrites": rewrites, "nodes_before": sum(before.values()),
            "nodes_after": sum(after.values()), "fused_ops": fused,
            "layer_norm_unfused": after["LayerNormalization"]}
