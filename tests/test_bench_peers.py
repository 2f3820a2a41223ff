"""bench/peers.py and the session options it measures: real-length batches (sorted, padded per
batch), the int8 GEMM reference computes what MatMulInteger should, physical-core threads."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import peers  # noqa: E402
from runtime.onnx import physical_cores, session_options  # noqa: E402


def test_mrpc_batches_are_sorted_by_length_and_padded_per_batch(tmp_path):
    from modeling.tokenization import PairTokenizer

    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away", "today"]
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tok = PairTokenizer(tmp_path / "vocab.txt", lowercase=True)
    rows = [("1", "the cat sat on a mat today", "a dog ran far away"), ("0", "cat", "dog"),
            ("1", "the dog", "a cat sat"), ("0", "the cat sat on a mat", "the dog ran far away today")] * 9
    mrpc = tmp_path / "mrpc"
    mrpc.mkdir()
    (mrpc / "test.tsv").write_text("\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\r\n" + "".join(
        f"{q}\t{i}\t{i + 1}\t{a}\t{b}\r\n" for i, (q, a, b) in enumerate(rows)), encoding="utf-8")
    ids, types, labels = peers.mrpc_rows(mrpc, tok)
    lengths = [len(r) for r in ids]
    assert len(ids) == 36 and lengths == sorted(lengths) and sorted(labels) == sorted(q for q, _, _ in rows)
    fixed, batches = peers.load_batches(peers.batches_file(tmp_path, ids, types, tok.vocab_size))
    assert fixed[0].shape == (peers.BATCH, peers.SEQ) and len(batches) == 2  # 36 pairs: 28 + 8
    start = 0
    for b_ids, b_types, b_mask in batches:
        n = len(b_ids)
        assert b_ids.shape[1] == max(lengths[start:start + n])  # padded to the batch's own longest row
        assert b_mask.sum(1).tolist() == lengths[start:start + n]
        assert all(list(b_ids[i, :lengths[start + i]]) == ids[start + i] for i in range(n))
        start += n


def test_the_int8_gemm_reference_is_a_real_int8_product():
    """The graph gemm() times, on a small size, against numpy's integer product."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    n, rng = 64, np.random.default_rng(1)
    w = rng.integers(-127, 128, (n, n)).astype(np.int8)
    a = rng.integers(0, 256, (n, n)).astype(np.uint8)
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "w", "a_zero"], ["y"])], "g",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])],
                              [helper.make_tensor("w", TensorProto.INT8, [n, n], w.tobytes(), raw=True),
                               helper.make_tensor("a_zero", TensorProto.UINT8, [], [128])])
    sess = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
                                .SerializeToString(), providers=["CPUExecutionProvider"])
    want = (a.astype(np.int64) - 128) @ w.astype(np.int64)
    np.testing.assert_array_equal(sess.run(None, {"a": a})[0], want)


def test_session_options_use_the_physical_cores_and_sequential_execution():
    import onnxruntime as ort

    cores = physical_cores()
    assert 1 <= cores <= len(os.sched_getaffinity(0))
    opts = session_options()
    assert opts.intra_op_num_threads == cores and opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert session_options(1, sequential=False).execution_mode == ort.ExecutionMode.ORT_PARALLEL


@pytest.mark.parametrize("xs,want", [([3.0, 1.0, 2.0], 2.0), ([4.0, 1.0], 2.5), ([], None)])
def test_median(xs, want):
    assert peers._median(xs) == want
