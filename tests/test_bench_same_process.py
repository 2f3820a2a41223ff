"""bench/same_process.py on two tiny hand-built ONNX graphs: int32 and int64 inputs are each fed in
their declared dtype, every file gets one call per round, and the node counts are the graphs' own."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import same_process  # noqa: E402


def _graph(path, dtype):
    """sum(ids * mask): 4 nodes (Cast, Cast, Mul, ReduceSum) over inputs of `dtype`."""
    import onnx
    from onnx import TensorProto, helper

    elem = {"int32": TensorProto.INT32, "int64": TensorProto.INT64}[dtype]
    inputs = [helper.make_tensor_value_info(n, elem, ["B", "T"])
              for n in ("input_ids", "token_type_ids", "attention_mask")]
    nodes = [helper.make_node("Cast", ["input_ids"], ["ids_f"], to=TensorProto.FLOAT),
             helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["ids_f", "mask_f"], ["masked"]),
             helper.make_node("ReduceSum", ["masked"], ["y"], keepdims=0)]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [])
    model = helper.make_model(helper.make_graph(nodes, "tiny", inputs, [out]),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def test_same_process_runs_every_file_each_round_and_reports_them(tmp_path):
    a = _graph(tmp_path / "a.onnx", "int32")
    b = _graph(tmp_path / "b.onnx", "int64")
    same_process.main([f"ours={a}", f"peer={b}", "--calls", "5", "--batch", "3", "--seq", "8", "--vocab", "2000",
                       "--threads", "1", "--out", str(tmp_path / "out")])
    payload = json.loads((tmp_path / "out" / "same_process.json").read_text())
    assert set(payload["runs"]) == {"ours", "peer"}
    assert all(len(v) == 5 and min(v) > 0 for v in payload["runs"].values())
    md = (tmp_path / "out" / "same_process.md").read_text()
    assert "per-round ratio to ours" in md
    rows = [line.split("|")[1:-1] for line in md.splitlines() if line.startswith("| ours") or line.startswith("| peer")]
    assert [r[0].strip() for r in rows] == ["ours", "peer"] and [r[-1].strip() for r in rows] == ["4", "4"]
    assert rows[0][3].strip() == "1.00x"  # the reference against itself, round by round


def test_fixed_batch_worked_by_hand_and_shared_with_bench_peers(tmp_path):
    import peers
    from benchlib import fixed_batch

    ids, types, mask = fixed_batch(4, 10, 30522)
    assert ids.shape == (4, 10) and ids.dtype == np.int32
    assert (ids[:, 0] == 101).all() and (ids[:, -1] == 102).all()
    assert ((ids[:, 1:-1] >= 1000) & (ids[:, 1:-1] < 30522)).all()
    assert types[0].tolist() == [0] * 5 + [1] * 5 and mask.all() and types.dtype == mask.dtype == np.int32
    z = np.load(peers.batches_file(tmp_path, [[101, 7, 102]], [[0, 0, 0]], 30522))
    expected = fixed_batch(peers.BATCH, peers.SEQ, 30522)
    for name, want in zip(("fixed_ids", "fixed_types", "fixed_mask"), expected):
        np.testing.assert_array_equal(z[name], want)
