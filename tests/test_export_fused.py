"""Fused ONNX graphs (export/fusion.py): the rewrites and onnxruntime's fusions on a tiny encoder,
the export's fused files and their checks, the server / predict choosing them, a failed fused
check withholding the fused files alone. The reference is the Keras model, as in test_export.py
(whose fixtures build the tiny models; every kind's fused files are in its artifact test).
"""

from __future__ import annotations

import collections
import importlib.util
import json

import numpy as np
import pytest
import tensorflow as tf

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("sympy")
if importlib.util.find_spec("tf2onnx") is None:
    pytest.skip("tf2onnx is not installed", allow_module_level=True)

from export import fusion  # noqa: E402
from export.onnx import convert_function  # noqa: E402
from export.task import export_loaded, load_for_export  # noqa: E402
from tests.test_export import (MAX_LEN, PAIRS, _batch, _cfg, model_dirs, tf2onnx_fast,  # noqa: E402,F401
                               vocab_file, workdir)

CONTRIB = {"Attention", "SkipLayerNormalization", "BiasGelu", "Gelu", "QAttention"}


def _run(path, feats):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feats)))


def _ops(path):
    import onnx

    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_a_trained_like_encoder_fuses_attention_skip_layernorm_and_gelu(workdir, tf2onnx_fast):
    """Every bias non-zero (as after training): each layer becomes one Attention, two
    SkipLayerNormalization and one BiasGelu, and the fused graph equals Keras on padded rows."""
    import keras

    from crossenc.model import CrossEncoder
    from modeling.encoder import BertEncoder

    keras.utils.set_random_seed(5)
    model = CrossEncoder(BertEncoder(vocab_size=120, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                                     max_position=64, name="encoder"), 2, name="cross_encoder")
    model(model.dummy_inputs())
    rng = np.random.default_rng(5)
    for w in model.weights:
        scale = 0.1 if len(w.shape) == 1 else 1.0 / np.sqrt(w.shape[0])
        if "norm" not in w.path:
            w.assign(rng.normal(0.0, scale, w.shape).astype("float32"))
    src = convert_function(model.serving_functions()["predict_ids"], workdir / "fuse" / "model.onnx")
    info = fusion.fuse(src, workdir / "fuse" / "model.fused.onnx", 4, 32)
    assert info["fused_ops"] == {"Attention": 2, "SkipLayerNormalization": 4, "BiasGelu": 2,
                                 "EmbedLayerNormalization": 1}
    assert info["rewrites"]["layer_norm"] == 5 and info["rewrites"]["attention_scale"] == 2
    assert info["rewrites"]["embedding_lookup"] == 3 and info["rewrites"]["embed_positions"] == 1
    assert info["layer_norm_unfused"] == 0
    assert not _ops(src) & CONTRIB  # the portable file is untouched
    _assert_embeddings_fused_like_peer_b(workdir / "fuse" / "model.fused.onnx", layers=2)

    ids = rng.integers(5, 120, (6, 20)).astype("int32")
    mask = np.ones_like(ids)
    for i, n in enumerate([20, 3, 11, 7, 20, 15]):
        mask[i, n:] = 0
    feats = {"input_ids": ids, "token_type_ids": (np.arange(20)[None] >= 8).astype("int32").repeat(6, 0),
             "attention_mask": mask}
    want = tf.nn.softmax(model({k: tf.constant(v) for k, v in feats.items()}, training=False)).numpy()
    got = _run(workdir / "fuse" / "model.fused.onnx", feats)["probs"]
    assert np.ptp(want[:, 1]) > 0.01
    np.testing.assert_allclose(got, want, atol=1e-4)


def _assert_embeddings_fused_like_peer_b(path, layers):
    """The embedding block is one EmbedLayerNormalization on the graph inputs (ids, token types, the
    three tables, gamma, beta, the mask; no position_ids input: the op's own 0..T-1), no Keras index
    wrap is left (Less / Not / Cast around the lookups), and every Attention takes its mask_index."""
    import onnx

    model = onnx.load(str(path))
    (embed,) = [n for n in model.graph.node if n.op_type == "EmbedLayerNormalization"]
    assert list(embed.input[:2]) == ["input_ids", "token_type_ids"] and list(embed.input[7:]) == ["attention_mask"]
    attention = [n for n in model.graph.node if n.op_type == "Attention"]
    assert len(attention) == layers and all(n.input[3] == embed.output[1] for n in attention)
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert not ops["Less"] and not ops["Not"] and not ops["ReduceSum"] and not ops["Range"], ops


def test_the_embedding_lookup_rewrite_keeps_every_valid_index_and_leaves_other_wraps_alone(workdir, tf2onnx_fast):
    """Keras's lookup (`ops.take`: i < 0 -> i + V) becomes a plain Gather with the same values for all
    i in [-V, V), negative ones included (ONNX Gather counts them from the back); a wrap by anything
    other than the table's row count is not an embedding lookup and is left as it was."""
    import keras
    import onnx

    table = np.arange(7 * 3, dtype="float32").reshape(7, 3)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="ids")])
    def lookup(ids):
        return {"rows": keras.ops.take(tf.constant(table), ids, axis=0),
                "other": tf.gather(tf.constant(table), tf.where(ids < 0, ids + 5, ids))}

    src = convert_function(lookup, workdir / "wrap" / "lookup.onnx")
    model = onnx.load(str(src))
    assert fusion._embedding_lookups(model) == 1
    gathers = [n for n in model.graph.node if n.op_type == "Gather"]
    assert sorted(n.input[1] == "ids" for n in gathers) == [False, True]
    ids = np.array([[0, 3, 6, -1], [-7, -3, 2, 1]], np.int32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rows, other = sess.run(["rows", "other"], {"ids": ids})
    np.testing.assert_array_equal(rows, table[ids])
    np.testing.assert_array_equal(other, _run(src, {"ids": ids})["other"])


@pytest.fixture(scope="module")
def ce_export(model_dirs, workdir, tf2onnx_fast):
    loaded = load_for_export(model_dirs["cross_encoder"])
    out = workdir / "fused_ce"
    return {"loaded": loaded, "out": out,
            "report": export_loaded(loaded, _cfg(out, "export.formats=[saved_model,onnx]", "export.portable_onnx=true"))}


def test_the_export_publishes_fused_graphs_equal_to_keras(ce_export):
    out, report, loaded = ce_export["out"], ce_export["report"], ce_export["loaded"]
    files = {p.name for p in (out / "onnx").iterdir()}
    assert files == {"model.onnx", "model.int8.onnx", "model.fused.onnx", "model.fused.int8.onnx"}
    assert report["status"]["onnx.fused"] == report["status"]["onnx.fused.int8"] == "published"
    assert report["checks"]["onnx.fused"]["ok"] and report["checks"]["onnx.fused"]["tolerance"] == 1e-4
    assert report["checks"]["onnx.fused.int8"]["gate"] == "agreement"
    fused = report["fusion"]["predict_ids"]
    # This untrained fixture (all-zero biases) fuses no Attention, so its embeddings cannot become an
    # EmbedLayerNormalization (the optimiser wants an Attention after it): their Add + LayerNorm is a
    # fifth SkipLayerNormalization (test_a_trained_like_encoder_... has the full fusion).
    assert fused["fused"] and fused["fused_ops"].get("SkipLayerNormalization") == 5
    assert json.loads((out / "parity.json").read_text())["fusion"] == json.loads(json.dumps(report["fusion"]))
    assert _ops(out / "onnx" / "model.fused.onnx") & CONTRIB and not _ops(out / "onnx" / "model.onnx") & CONTRIB
    int8_ops = _ops(out / "onnx" / "model.fused.int8.onnx")  # int8 kernels, on the fused graph
    assert int8_ops & {"MatMulInteger", "DynamicQuantizeMatMul", "QAttention"} and int8_ops & CONTRIB
    # independent of the parity code: Keras on a padded batch vs the fused file
    feats, ref = _batch(loaded, *PAIRS)
    assert feats["attention_mask"].min() == 0  # the batch has padding
    np.testing.assert_allclose(_run(out / "onnx" / "model.fused.onnx", feats)["probs"], ref["probs"], atol=1e-4)


def test_the_server_and_predict_load_the_fused_graphs(ce_export, workdir, monkeypatch, capsys):
    import run_tasks
    import runtime.onnx as onnx_mod
    from runtime.backends import open_model
    from tests.tiny_runs import write_csv

    out, loaded = ce_export["out"], ce_export["loaded"]
    assert open_model(out, "onnx").files["predict_ids"].name == "model.fused.onnx"
    assert open_model(out, "onnx", int8=True).files["predict_ids"].name == "model.fused.int8.onnx"
    assert open_model(out, "onnx", fused=False).files["predict_ids"].name == "model.onnx"
    assert "model.fused.onnx" in open_model(out, "onnx").describe()

    opened = []
    real = onnx_mod.session
    monkeypatch.setattr(onnx_mod, "session", lambda path, *a, **k: opened.append(path) or real(path, *a, **k))
    a, b = PAIRS
    pairs = write_csv(workdir / "predict.csv", zip(a[:2] + a[3:], b[:2] + b[3:]), header=("sentence1", "sentence2"))
    scores = workdir / "scores.jsonl"
    code = run_tasks.main(["--task", "predict", "--set", f"model.init={out}", f"data.test={pairs}", "serve.backend=onnx", "--out", str(scores)])
    assert code == 0, capsys.readouterr().err[-2000:]
    assert [p.name for p in opened] == ["model.fused.onnx"]
    rows = [json.loads(line) for line in scores.read_text().splitlines()]
    _, ref = _batch(loaded, a[:2] + a[3:], b[:2] + b[3:])
    got = np.array([[r["probs"][n] for n in loaded.labels] for r in rows])
    np.testing.assert_allclose(got, ref["probs"], atol=1e-4)  # sorted by length, padded per batch, back in order
    assert [r["text_a"] for r in rows] == a[:2] + a[3:]


def test_a_fused_graph_that_fails_parity_is_withheld_and_fp32_published(model_dirs, workdir, monkeypatch, capsys):
    """The fused file is made wrong on purpose (probabilities x 1.01): its real check fails, the
    fused files go to withheld/, the unfused ones are published, and the server falls back."""
    import onnx
    from onnx import helper, numpy_helper

    from runtime.backends import open_model

    real = fusion.fuse

    def wrong(src, dst, *args):
        info = real(src, dst, *args)
        model = onnx.load(str(dst))
        (producer,) = [n for n in model.graph.node if "probs" in n.output]
        producer.output[list(producer.output).index("probs")] = "probs_right"
        model.graph.initializer.append(numpy_helper.from_array(np.array(1.01, np.float32), "off"))
        model.graph.node.append(helper.make_node("Mul", ["probs_right", "off"], ["probs"]))
        onnx.save(model, str(dst))
        return info

    monkeypatch.setattr(fusion, "fuse", wrong)
    out = workdir / "fused_withheld"
    report = export_loaded(load_for_export(model_dirs["cross_encoder"]), _cfg(out, "export.formats=[saved_model,onnx]"))
    err = capsys.readouterr().err
    check = report["checks"]["onnx.fused"]
    assert not check["ok"] and check["max_abs_diff"] > 1e-4
    # model.int8.onnx is made after the check, from the graph published instead (model.onnx), and checked
    assert report["status"] == {"saved_model": "published", "onnx.predict_ids": "published", "onnx.int8": "published",
                                "onnx.fused": "withheld", "onnx.fused.int8": "withheld"}
    assert report["failed"] == ["onnx.fused"] and report["checks"]["onnx.int8"]["ok"]
    assert {p.name for p in (out / "onnx").iterdir()} == {"model.onnx", "model.int8.onnx"}
    assert {p.name for p in (out / "withheld").iterdir()} == {"model.fused.onnx", "model.fused.int8.onnx"}
    assert report["withheld"]["onnx.fused"] == str(out / "withheld" / "model.fused.onnx")
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {w}" for w in report["warnings"]] and len(warnings) == 2
    assert warnings[0].startswith(f"warning: onnx.fused withheld, the unfused ONNX files published: max|diff| "
                                  f"{check['max_abs_diff']:.3g} > 0.0001; the file is in {out / 'withheld'}")
    assert "its fused fp32 graph (onnx.fused) failed its check" in warnings[1]
    assert open_model(out, "onnx").files["predict_ids"].name == "model.onnx"
    assert open_model(out, "onnx", int8=True).files["predict_ids"].name == "model.int8.onnx"


def test_an_unfusable_graph_keeps_the_unfused_files(model_dirs, workdir, monkeypatch):
    """The optimiser raising (or fusing nothing) costs the fused files only, with the reason in parity.json."""
    from export import ExportError

    def broken(src, *args):
        raise ExportError(f"{src}: onnxruntime's transformer optimiser failed: no luck")

    monkeypatch.setattr(fusion, "fuse", broken)
    out = workdir / "fused_none"
    report = export_loaded(load_for_export(model_dirs["cross_encoder"]), _cfg(out, "export.formats=[saved_model,onnx]"))
    assert report["ok"] and {p.name for p in (out / "onnx").iterdir()} == {"model.onnx", "model.int8.onnx"}
    assert report["fusion"]["predict_ids"]["fused"] is False
    assert report["fusion"]["predict_ids"]["reason"].endswith("optimiser failed: no luck")
