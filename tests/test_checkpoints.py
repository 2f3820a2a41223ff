"""Checkpoint readers: Google TF1 and HF safetensors round trips, truncation, error reporting."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from safetensors.numpy import save_file

from modeling.checkpoints import CheckpointError
from modeling.encoder import BertEncoder
from modeling.pretrained import load_pretrained, read_checkpoint

FIXTURE = Path(__file__).parent / "fixtures" / "minilm_reference.npz"
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(95)]
ARCH = dict(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
            max_position=64, type_vocab_size=2)


def random_encoder(seed=0):
    """A tiny encoder whose every weight (LayerNorms and biases too) is random."""
    enc = BertEncoder(**ARCH).build_for_loading()
    rng = np.random.default_rng(seed)
    enc.set_weights([rng.normal(0, 0.3, w.shape).astype(np.float32) for w in enc.get_weights()])
    return enc


def google_arrays(enc):
    """Google's TF1 variable names -> arrays (kernels [in, out]), read off the Keras layers."""
    a = {"bert/embeddings/word_embeddings": enc.word_embeddings.embeddings,
         "bert/embeddings/position_embeddings": enc.position_embeddings.embeddings,
         "bert/embeddings/token_type_embeddings": enc.token_type_embeddings.embeddings,
         "bert/embeddings/LayerNorm/gamma": enc.embeddings_norm.gamma,
         "bert/embeddings/LayerNorm/beta": enc.embeddings_norm.beta,
         "bert/pooler/dense/kernel": enc.pooler.kernel, "bert/pooler/dense/bias": enc.pooler.bias}
    for i, layer in enumerate(enc.encoder_layers):
        p = f"bert/encoder/layer_{i}"
        dense = {"attention/self/query": layer.attention.query, "attention/self/key": layer.attention.key,
                 "attention/self/value": layer.attention.value, "attention/output/dense": layer.attention_output,
                 "intermediate/dense": layer.intermediate, "output/dense": layer.output_dense}
        for name, d in dense.items():
            a[f"{p}/{name}/kernel"], a[f"{p}/{name}/bias"] = d.kernel, d.bias
        for name, n in {"attention/output/LayerNorm": layer.attention_norm,
                        "output/LayerNorm": layer.output_norm}.items():
            a[f"{p}/{name}/gamma"], a[f"{p}/{name}/beta"] = n.gamma, n.beta
    return {k: np.asarray(v.numpy()) for k, v in a.items()}


def hf_arrays(enc, prefix=""):
    """HF names -> arrays: Linear weights transposed to [out, in], LayerNorm weight/bias."""
    out = {}
    for name, value in google_arrays(enc).items():
        n = name[len("bert/"):]
        n = re.sub(r"layer_(\d+)", r"layer.\1", n).replace("/", ".")
        if n.endswith("_embeddings"):
            n += ".weight"
        elif n.endswith(".kernel"):
            n, value = n[:-len("kernel")] + "weight", value.T
        n = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", n))
        out[prefix + n] = np.ascontiguousarray(value)
    return out


def bert_config(**over):
    cfg = {"attention_probs_dropout_prob": 0.1, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
           "hidden_size": 32, "initializer_range": 0.02, "intermediate_size": 64,
           "max_position_embeddings": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
           "type_vocab_size": 2, "vocab_size": 100}
    cfg.update(over)
    return cfg


def write_vocab(d):
    (d / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")


def write_tf1(d, arrays, **cfg):
    """A Google-format release: v1 Saver names are exactly the variable names."""
    d.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        var_list = {name: tf.compat.v1.Variable(value, name=name) for name, value in arrays.items()}
        saver = tf.compat.v1.train.Saver(var_list)
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, str(d / "bert_model.ckpt"), write_meta_graph=False)
    (d / "bert_config.json").write_text(json.dumps(bert_config(directionality="bidi", **cfg)))
    write_vocab(d)
    return d


def write_hf(d, tensors, **cfg):
    d.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(bert_config(model_type="bert", layer_norm_eps=1e-12,
                                                          architectures=["BertModel"], **cfg)))
    write_vocab(d)
    return d


def batch():
    ids = np.array([[2, 17, 40, 9, 3, 55, 61, 3], [2, 88, 12, 3, 0, 0, 0, 0]], np.int32)
    types = np.array([[0, 0, 0, 0, 0, 1, 1, 1], [0] * 8], np.int32)
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": (ids > 0).astype(np.int32)}


def assert_same_outputs(a, b, atol=1e-6):
    oa, ob = a(batch()), b(batch())
    for key in ("last_hidden_state", "pooler_output"):
        np.testing.assert_allclose(oa[key].numpy(), ob[key].numpy(), atol=atol)


@pytest.fixture(scope="module")
def original():
    return random_encoder()


# --------------------------------------------------------------------------- round trips

def test_tf1_google_checkpoint_round_trip(original, tmp_path):
    arrays = google_arrays(original)
    arrays["cls/predictions/output_bias"] = np.zeros(100, np.float32)
    arrays["global_step"] = np.int64(1000)
    d = write_tf1(tmp_path / "rbt", arrays)
    names = set(tf.train.load_checkpoint(str(d / "bert_model.ckpt")).get_variable_to_shape_map())
    assert "bert/encoder/layer_1/attention/self/query/kernel" in names  # Google's names, verbatim

    enc, tok, report = read_checkpoint(d)
    assert_same_outputs(enc, original)
    assert sorted(report.ignored) == ["cls.predictions.output_bias", "global_step"]
    assert report.ok and len(report.loaded) == len(original.weights)
    assert tok.vocab_size == 100


@pytest.mark.parametrize("prefix", ["bert.", ""], ids=["bert-prefix", "no-prefix"])
def test_hf_safetensors_round_trip(original, tmp_path, prefix):
    tensors = hf_arrays(original, prefix)
    if prefix:  # BertForPreTraining-style extras, as in hub checkpoints
        tensors["cls.predictions.bias"] = np.zeros(100, np.float32)
    enc, _, report = read_checkpoint(write_hf(tmp_path / "hf", tensors))
    assert_same_outputs(enc, original)
    assert report.ok and len(report.loaded) == len(original.weights)


# --------------------------------------------------------------------------- truncation

def test_num_layers_keeps_the_first_layers(original, tmp_path):
    d = write_hf(tmp_path / "hf", hf_arrays(original))
    small, _, report = read_checkpoint(d, num_layers=1)
    assert small.num_layers == 1 and len(small.encoder_layers) == 1
    full = original(batch(), output_hidden_states=True)["hidden_states"][1]
    np.testing.assert_allclose(small(batch())["last_hidden_state"].numpy(), full.numpy(), atol=1e-6)
    assert report.truncated and all(n.startswith("encoder.layer.1.") for n in report.truncated)
    assert len(report.truncated) == len(original.encoder_layers[1].weights)


def test_num_layers_beyond_checkpoint_fails(original, tmp_path):
    d = write_hf(tmp_path / "hf", hf_arrays(original))
    with pytest.raises(CheckpointError, match="num_layers=3"):
        read_checkpoint(d, num_layers=3)


# --------------------------------------------------------------------------- mismatch reporting

SHAPE = "encoder.layer.0.intermediate.dense.weight"
MISSING = "encoder.layer.1.output.LayerNorm.bias"
EXTRA = "encoder.layer.0.attention.self.rotary.weight"


def broken(original, kind):
    t = hf_arrays(original)
    if kind in ("shape", "all"):
        t[SHAPE] = np.zeros((64, 31), np.float32)
    if kind in ("missing", "all"):
        del t[MISSING]
    if kind in ("unexpected", "all"):
        t[EXTRA] = np.zeros((4, 4), np.float32)
    return t


@pytest.mark.parametrize("kind,name", [("shape", SHAPE), ("missing", MISSING), ("unexpected", EXTRA)])
def test_mismatch_fails_naming_the_tensor(original, tmp_path, kind, name):
    d = write_hf(tmp_path / "hf", broken(original, kind))
    with pytest.raises(CheckpointError, match=re.escape(name)):
        read_checkpoint(d)


def test_allow_mismatch_loads_and_reports(original, tmp_path):
    d = write_hf(tmp_path / "hf", broken(original, "all"))
    enc, _, report = read_checkpoint(d, allow_mismatch=True)
    assert [m.split(":")[0] for m in report.mismatched] == [SHAPE]
    assert "(31, 64)" in report.mismatched[0]  # checkpoint shape, in Keras layout
    assert report.missing == [MISSING] and report.unexpected == [EXTRA]
    assert not report.ok
    np.testing.assert_array_equal(enc.word_embeddings.embeddings.numpy(),
                                  original.word_embeddings.embeddings.numpy())


# --------------------------------------------------------------------------- bad inputs

def test_empty_directory_fails_naming_it(tmp_path):
    with pytest.raises(CheckpointError, match=re.escape(str(tmp_path))):
        read_checkpoint(tmp_path)


def test_relu_hidden_act_is_rejected(original, tmp_path):
    d = write_hf(tmp_path / "hf", hf_arrays(original), hidden_act="relu")
    with pytest.raises(CheckpointError, match="relu"):
        read_checkpoint(d)


def test_corrupt_safetensors_is_a_checkpoint_error(tmp_path):
    d = write_hf(tmp_path / "hf", {"x": np.zeros(2, np.float32)})
    (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        read_checkpoint(d)


# --------------------------------------------------------------------------- the bundled MiniLM

def test_load_pretrained_minilm_first_two_layers(minilm_checkpoint):
    ref = np.load(FIXTURE)
    inputs = {k: ref[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
    small, tok = load_pretrained("minilm", num_layers=2)
    assert small.num_layers == 2 and len(small.encoder_layers) == 2
    full = minilm_checkpoint[0]
    want = full(inputs, output_hidden_states=True)["hidden_states"][2].numpy()
    got = small(inputs)["last_hidden_state"].numpy()
    valid = ref["attention_mask"].astype(bool)
    np.testing.assert_allclose(got[valid], want[valid], atol=1e-5)
    assert tok.vocab_size == 30522
