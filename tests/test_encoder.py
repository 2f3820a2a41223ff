"""BertEncoder: parity with PyTorch transformers, masking, VIRT layout, graph/export paths."""

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from modeling.encoder import BertEncoder, pool
from modeling.pretrained import minilm_dir
from modeling.tokenization import PairTokenizer

FIXTURE = Path(__file__).parent / "fixtures" / "minilm_reference.npz"
NAMES = ("input_ids", "token_type_ids", "attention_mask")
SPEC = [tf.TensorSpec([None, None], tf.int32, name=n) for n in NAMES]

WORDS = ("the a cat dog sat ran on in mat park big red fast today is it how what do i my "
         "to ? . , ! ##s ##ing").split()


def tiny_encoder(seed=0, **kw):
    """2 layers, hidden 32, 4 heads, seeded random weights wide enough that attention
    is far from uniform (so masking and position mistakes show)."""
    args = dict(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4,
                intermediate_size=64, max_position=64)
    args.update(kw)
    enc = BertEncoder(**args).build_for_loading()
    rng = np.random.default_rng(seed)
    enc.set_weights([1 + rng.normal(0, 0.1, w.shape) if w.path.endswith("gamma") else rng.normal(0, 0.3, w.shape)
                     for w in enc.weights])
    return enc


def padded_batch(lengths, total=None, seed=0, vocab_size=100):
    """Random ids (>= 5, so no special tokens) right-padded with 0; mask 1 on tokens."""
    rng = np.random.default_rng(seed)
    t = total or max(lengths)
    ids = np.zeros((len(lengths), t), np.int32)
    mask = np.zeros_like(ids)
    types = np.zeros_like(ids)
    for b, n in enumerate(lengths):
        ids[b, :n] = rng.integers(5, vocab_size, n)
        mask[b, :n] = 1
        types[b, n // 2:n] = 1
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def enc():
    """One tiny encoder for the tests that only read it (building one costs ~1.5 s)."""
    return tiny_encoder()


# --------------------------------------------------------------------------- MiniLM vs PyTorch

@pytest.fixture(scope="module")
def minilm(minilm_checkpoint):
    ref = dict(np.load(FIXTURE))
    enc = minilm_checkpoint[0]
    out = enc({k: ref[k] for k in NAMES}, output_hidden_states=True, output_attentions=True)
    return ref, {k: (tuple(x.numpy() for x in v) if isinstance(v, tuple) else v.numpy())
                 for k, v in out.items()}


def test_minilm_last_hidden_state_matches_pytorch(minilm):
    ref, out = minilm
    valid = ref["attention_mask"].astype(bool)
    assert out["last_hidden_state"].shape == (4, 19, 384)
    assert np.isfinite(out["last_hidden_state"]).all()  # padded rows computed, not NaN
    diff = np.abs(out["last_hidden_state"][valid] - ref["last_hidden_state"][valid]).max()
    assert diff <= 1e-3, diff


def test_minilm_pooler_and_mean_pooling_match_pytorch(minilm):
    ref, out = minilm
    assert np.abs(out["pooler_output"] - ref["pooler_output"]).max() <= 1e-3
    mean = pool(tf.constant(out["last_hidden_state"]), ref["attention_mask"], "mean").numpy()
    assert np.abs(mean - ref["mean_pooled"]).max() <= 1e-3


def test_minilm_attentions_match_pytorch_on_valid_queries(minilm):
    ref, out = minilm
    valid = ref["attention_mask"].astype(bool)
    assert len(out["attentions"]) == 6
    for layer, probs in enumerate(out["attentions"]):
        ours = probs.transpose(0, 2, 1, 3)[valid]  # [valid queries, heads, keys]
        theirs = ref["attentions"][layer].astype(np.float32).transpose(0, 2, 1, 3)[valid]
        assert np.abs(ours - theirs).max() <= 2e-3, layer


def test_minilm_hidden_states_match_pytorch(minilm):
    ref, out = minilm
    valid = ref["attention_mask"].astype(bool)
    assert len(out["hidden_states"]) == 7
    for i, layer in enumerate(ref["hidden_states_layers"]):
        theirs = ref["hidden_states"][i].astype(np.float32)[valid]
        assert np.abs(out["hidden_states"][layer][valid] - theirs).max() <= 2e-3, layer


def test_pair_tokenizer_reproduces_fixture_ids():
    ref = np.load(FIXTURE)
    tok = PairTokenizer(minilm_dir() / "vocab.txt")
    lengths = ref["attention_mask"].sum(1)
    singles = [str(s) for s in ref["sentences"][:2]]
    pairs = [str(s).split(" ||| ") for s in ref["sentences"][2:]]
    ids = tok.encode_texts(singles, max_len=64)
    for b in range(2):
        assert ids[b] == ref["input_ids"][b, :lengths[b]].tolist()
    enc = tok.encode_pairs([a for a, _ in pairs], [b for _, b in pairs], max_len=64)
    for i, b in enumerate((2, 3)):
        assert enc["input_ids"][i] == ref["input_ids"][b, :lengths[b]].tolist()
        assert enc["token_type_ids"][i] == ref["token_type_ids"][b, :lengths[b]].tolist()


# --------------------------------------------------------------------------- masking

def test_attention_probs_sum_to_one_and_ignore_padding_keys(enc):
    batch = padded_batch([7, 4, 2])
    out = enc(batch, output_attentions=True)
    key_mask = batch["attention_mask"][:, None, None, :].astype(bool)  # [B, 1, 1, T]
    for probs in out["attentions"]:
        p = probs.numpy()
        np.testing.assert_allclose(np.where(key_mask, p, 0).sum(-1), 1.0, atol=1e-5)
        assert np.where(key_mask, 0, p).max() < 1e-7


def test_query_key_states_reproduce_attention_probs(enc):
    batch = padded_batch([6, 3])
    out = enc(batch, output_attentions=True, output_qk=True)
    bias = (1.0 - batch["attention_mask"][:, None, None, :]) * -1e9
    for q, k, probs in zip(out["query_states"], out["key_states"], out["attentions"]):
        q, k = q.numpy().astype(np.float64), k.numpy().astype(np.float64)
        assert q.shape == (2, 4, 6, 8)
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1]) + bias
        np.testing.assert_allclose(np_softmax(scores), probs.numpy(), atol=1e-5)


def test_extra_padding_does_not_change_valid_token_states(enc):
    short = padded_batch([5], seed=3)
    long = {k: np.pad(v, [(0, 0), (0, 6)]) for k, v in short.items()}  # 6 more [PAD]s, mask 0
    a = enc(short, output_hidden_states=True)
    b = enc(long, output_hidden_states=True)
    for ha, hb in zip(a["hidden_states"], b["hidden_states"]):
        np.testing.assert_allclose(ha.numpy(), hb.numpy()[:, :5], atol=1e-5)
    np.testing.assert_allclose(a["pooler_output"].numpy(), b["pooler_output"].numpy(), atol=1e-5)


# --------------------------------------------------------------------------- position ids / VIRT

def test_explicit_arange_position_ids_equal_default(enc):
    batch = padded_batch([6, 4])
    arange = np.broadcast_to(np.arange(6, dtype=np.int32), (2, 6))
    default = enc(batch)["last_hidden_state"].numpy()
    explicit = enc({**batch, "position_ids": arange})["last_hidden_state"].numpy()
    shifted = enc({**batch, "position_ids": arange + 1})["last_hidden_state"].numpy()
    np.testing.assert_allclose(explicit, default, atol=1e-6)
    assert np.abs(shifted - default).max() > 1e-2  # position_ids are really used


@pytest.fixture
def tiny_tokenizer(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n",
                     encoding="utf-8")
    return PairTokenizer(vocab)


def test_virt_split_teacher_layout_equals_contiguous_layout(enc, tiny_tokenizer):
    tok = tiny_tokenizer
    assert tok.vocab_size <= enc.vocab_size
    xs, ys = ["the cat sat on the mat", "a dog"], ["a dog ran", "the big red cat sat in the park today"]
    v = tok.encode_virt(xs, ys, max_len=32)
    ms = [len(x) for x in v["x_ids"]]
    ns = [len(y) - 1 for y in v["y_ids"]]
    lx, ly = max(ms), max(ns)
    assert ms[0] != ms[1] and ns[0] != ns[1]

    ids, types, mask, pos = (np.zeros((2, lx + ly), np.int32) for _ in range(4))
    for b, (x, y) in enumerate(zip(v["x_ids"], v["y_ids"])):
        m, n = ms[b], ns[b]
        ids[b, :m], ids[b, lx:lx + n] = x, y[1:]
        mask[b, :m], mask[b, lx:lx + n] = 1, 1
        types[b, lx:] = 1
        pos[b, :lx] = np.arange(lx)
        pos[b, lx:] = m + np.arange(ly)
    split = enc({"input_ids": ids, "token_type_ids": types, "attention_mask": mask, "position_ids": pos},
                output_hidden_states=True, output_attentions=True)

    for b, (x, y) in enumerate(zip(v["x_ids"], v["y_ids"])):
        m, n = ms[b], ns[b]
        t_ids, t_types = tok.teacher_ids(x, y)
        assert t_ids[m:] == y[1:] and len(t_ids) == m + n
        ref = enc({"input_ids": np.array([t_ids]), "token_type_ids": np.array([t_types])},
                  output_hidden_states=True, output_attentions=True)
        for hs, hr in zip(split["hidden_states"], ref["hidden_states"]):
            np.testing.assert_allclose(hs.numpy()[b, :m], hr.numpy()[0, :m], atol=1e-5)
            np.testing.assert_allclose(hs.numpy()[b, lx:lx + n], hr.numpy()[0, m:], atol=1e-5)
        for ps, pr in zip(split["attentions"], ref["attentions"]):  # the x -> y block VIRT distils
            np.testing.assert_allclose(ps.numpy()[b, :, :m, lx:lx + n], pr.numpy()[0, :, :m, m:], atol=1e-5)

    # Control: without the explicit positions the shorter-x example's y part is shifted.
    b = int(np.argmin(ms))
    wrong = enc({"input_ids": ids, "token_type_ids": types, "attention_mask": mask})["last_hidden_state"]
    assert np.abs(wrong.numpy()[b, lx:lx + ns[b]]
                  - split["last_hidden_state"].numpy()[b, lx:lx + ns[b]]).max() > 1e-2


# --------------------------------------------------------------------------- config, graph, distribution

def test_get_config_round_trip_rebuilds_same_encoder():
    enc = tiny_encoder(use_pooler=False, layer_norm_eps=1e-7, max_position=40)
    clone = BertEncoder.from_config(enc.get_config()).build_for_loading()
    assert clone.architecture() == enc.architecture()
    assert [w.shape for w in clone.weights] == [w.shape for w in enc.weights]
    clone.set_weights(enc.get_weights())
    batch = padded_batch([5, 3])
    np.testing.assert_array_equal(clone(batch)["last_hidden_state"].numpy(),
                                  enc(batch)["last_hidden_state"].numpy())
    assert "pooler_output" not in clone(batch)


def test_encoder_in_tf_function_matches_eager_without_retracing(enc):

    @tf.function(input_signature=SPEC)
    def run(input_ids, token_type_ids, attention_mask):
        return enc({"input_ids": input_ids, "token_type_ids": token_type_ids,
                    "attention_mask": attention_mask},
                   output_hidden_states=True, output_attentions=True, output_qk=True)

    for lengths in ([6, 3], [9, 9, 2]):
        batch = padded_batch(lengths)
        graph, eager = run(**batch), enc(batch, output_hidden_states=True, output_attentions=True,
                                         output_qk=True)
        for key in ("last_hidden_state", "pooler_output"):
            np.testing.assert_allclose(graph[key].numpy(), eager[key].numpy(), atol=1e-5)
        for key in ("hidden_states", "attentions", "query_states", "key_states"):
            for g, e in zip(graph[key], eager[key]):
                np.testing.assert_allclose(g.numpy(), e.numpy(), atol=1e-5)
    assert run.experimental_get_tracing_count() == 1


def test_forward_under_mirrored_strategy_matches_plain_call():
    cpus = tf.config.list_logical_devices("CPU")
    assert len(cpus) >= 2, "tests/conftest.py should split the CPU into 2 logical devices"
    strategy = tf.distribute.MirroredStrategy([d.name for d in cpus[:2]])
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        enc = tiny_encoder()
    batch = padded_batch([7, 5, 3, 6])
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda ctx: {k: tf.constant(v[2 * ctx.replica_id_in_sync_group:][:2]) for k, v in batch.items()})

    @tf.function
    def step(inputs):
        return strategy.run(lambda x: enc(x)["last_hidden_state"], args=(inputs,))

    parts = strategy.experimental_local_results(step(per_replica))
    assert len(parts) == 2
    np.testing.assert_allclose(np.concatenate([p.numpy() for p in parts]),
                               enc(batch)["last_hidden_state"].numpy(), atol=1e-5)


# --------------------------------------------------------------------------- export paths

def serving_function(encoder):
    """The tf.function an export wraps: int32 [None, None] ids, types and mask."""

    @tf.function(input_signature=SPEC)
    def serve(input_ids, token_type_ids, attention_mask):
        out = encoder({"input_ids": input_ids, "token_type_ids": token_type_ids,
                       "attention_mask": attention_mask})
        return {"last_hidden_state": out["last_hidden_state"], "pooler_output": out["pooler_output"]}

    return serve


@pytest.fixture(scope="module")
def served(enc):
    """The tiny encoder and the one tf.function that SavedModel and ONNX export."""
    return enc, serving_function(enc)


def test_saved_model_reload_matches_keras(served, tmp_path):
    enc, serve = served
    module = tf.Module()
    module.encoder, module.serve = enc, serve
    tf.saved_model.save(module, str(tmp_path / "sm"))
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    batch = padded_batch([9, 4])
    got = loaded.serve(**{k: tf.constant(v) for k, v in batch.items()})
    want = enc(batch)
    for key in ("last_hidden_state", "pooler_output"):
        np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), atol=1e-5)


@pytest.fixture(scope="module")
def onnx_export(served):
    """init -> (encoder, ONNX ModelProto); "random" converts `served`'s own tf.function."""
    tf2onnx = pytest.importorskip("tf2onnx")
    cache = {}

    def get(init):
        if init not in cache:
            if init == "random":
                encoder, fn = served
            else:  # as constructed: every Dense bias is zero
                encoder = BertEncoder(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4,
                                      intermediate_size=64, max_position=64).build_for_loading()
                fn = serving_function(encoder)
            cache[init] = encoder, tf2onnx.convert.from_function(fn, input_signature=SPEC, opset=17)[0]
        return cache[init]

    return get


def test_onnx_graph_has_exact_gelu_without_erfc(onnx_export):
    model = onnx_export("random")[1]
    ops = {n.op_type for n in model.graph.node}
    assert "Erfc" not in ops
    assert "Erf" in ops  # exact GELU is still there, as erf
    assert [i.name for i in model.graph.input] == list(NAMES)


# "fresh" (all-zero Dense biases) once broke ONNX Runtime: tf2onnx 1.17 drops the zero bias
# Add and rewires tf.shape() of the Dense output to the flattened [B*T, H] MatMul.
@pytest.mark.parametrize("init", ["random", "fresh"])
def test_onnx_runtime_matches_keras_with_dynamic_batch_and_length(onnx_export, init):
    ort = pytest.importorskip("onnxruntime")
    enc, model = onnx_export(init)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert all(isinstance(d, str) or d is None for i in sess.get_inputs() for d in i.shape)
    batch = padded_batch([13, 7, 2], seed=5)  # batch 3, length 13: shapes never traced
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, batch)))
    np.testing.assert_allclose(got["last_hidden_state"], enc(batch)["last_hidden_state"].numpy(), atol=1e-4)


def test_mixed_bfloat16_forward_is_finite_and_normalised():
    try:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        enc = tiny_encoder()
        batch = padded_batch([8, 3])
        out = enc(batch, output_attentions=True)
        assert out["last_hidden_state"].dtype == tf.bfloat16  # the policy is in effect
        assert np.isfinite(tf.cast(out["last_hidden_state"], tf.float32).numpy()).all()
        key_mask = batch["attention_mask"][:, None, None, :].astype(bool)
        for probs in out["attentions"]:
            p = tf.cast(probs, tf.float32).numpy()
            np.testing.assert_allclose(np.where(key_mask, p, 0).sum(-1), 1.0, atol=1e-3)
            assert np.where(key_mask, 0, p).max() < 1e-7
    finally:
        keras.mixed_precision.set_global_policy("float32")
