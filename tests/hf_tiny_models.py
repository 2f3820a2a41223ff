"""Deterministic tiny models for the Hugging Face export's reference fixture (test_hf_export.py).

Every weight comes from numpy's RandomState(seed), in the order of `model.weights` (fixed by the
model's construction), not from Keras's initialisers: the test rebuilds the exact model the
fixture was computed from. `python tests/hf_tiny_models.py DIR` writes each model's hf folder
into DIR/<name> (step 1 of tools/make_hf_export_fixture.py).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(ROOT))

VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
         + "the a cat dog sat on mat is are how do i reset my password what way to change it raining weather "
           "sunny today play ##s ##ed ##ing , . ? ! café 我 想 密 码".split())
# Text pairs for the fixture: punctuation, upper case (the tokenizer lower-cases), a suffix piece, an
# unknown word, an accent (stripped when lower-casing: "cafe" is [UNK]), CJK, padding between rows.
PAIRS = [
    ("The cat sat on the mat.", "A dog sat on it!"),
    ("How do I reset my PASSWORD?", "what is the way to change my password"),
    ("Is it raining today?", "The weather is sunny."),
    ("dogs playing", "cats played, zebra café 我想改密码"),
]
MAX_LEN = 24
# name -> (kind, settings); the seeds make every model's weights different.
MODELS = {
    "cross_encoder": ("cross_encoder", {"labels": ["contradiction", "entailment", "neutral"], "seed": 11}),
    "sbert_mean_norm": ("sbert", {"pooling": "mean", "normalize": True, "objective": "softmax", "seed": 12}),
    "sbert_max": ("sbert", {"pooling": "max", "normalize": False, "objective": "cosine", "seed": 13}),
    "sbert_cls": ("sbert", {"pooling": "cls", "normalize": False, "objective": "mnrl", "seed": 14}),
}
ARCH = dict(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, max_position=64)


def write_vocab(path):
    Path(path).write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return Path(path)


def set_weights(model, seed):
    """Every weight from RandomState(seed): unit-variance embeddings, kernels N(0, 1/fan_in), LayerNorm
    gammas around 1, small non-zero biases, so that outputs differ visibly between inputs."""
    rng = np.random.RandomState(seed)
    for w in model.weights:
        shape, path = tuple(w.shape), w.path
        if len(shape) == 2:
            std = 1.0 if "embeddings" in path else 1.0 / np.sqrt(shape[0])
            value = rng.normal(0.0, std, shape)
        elif "gamma" in path:
            value = 1.0 + rng.normal(0.0, 0.1, shape)
        else:
            value = rng.normal(0.0, 0.1, shape)
        w.assign(value.astype(np.float32))


def build(name, vocab_file):
    """`LoadedModel` of the fixture model `name` (in memory: no model directory needed)."""
    import keras

    from crossenc.model import CrossEncoder
    from modeling.encoder import BertEncoder
    from modeling.model_dir import LoadedModel
    from modeling.tokenization import PairTokenizer
    from senbert.model import SentenceBert

    kind, s = MODELS[name]
    tok = PairTokenizer(vocab_file, lowercase=True)
    encoder = BertEncoder(vocab_size=tok.vocab_size, **ARCH, name="encoder")
    if kind == "cross_encoder":
        model = CrossEncoder(encoder, len(s["labels"]), pooling="cls", name="cross_encoder")
        labels = s["labels"]
    else:
        model = SentenceBert(encoder, 2, objective=s["objective"], pooling=s["pooling"], normalize=s["normalize"],
                             name="sbert")
        labels = ["0", "1"]
    model(model.dummy_inputs())
    set_weights(model, s["seed"])
    return LoadedModel(model, tok, {"kind": kind, "labels": labels, "max_seq_len": MAX_LEN}, Path(name))


def weights_sha256(path):
    """sha256 over the tensors of a safetensors file (names sorted, dtype, shape, bytes): the
    values, independent of how a safetensors version lays out the header."""
    from safetensors.numpy import load_file

    h = hashlib.sha256()
    for k, v in sorted(load_file(str(path)).items()):
        h.update(f"{k}|{v.dtype}|{v.shape}|".encode())
        h.update(np.ascontiguousarray(v).tobytes())
    return h.hexdigest()


def folder_sha256(d):
    """sha256 over a written folder: every file's relative path and bytes (model.safetensors by its
    tensor values), every directory (2_Normalize/ is empty)."""
    d = Path(d)
    h = hashlib.sha256()
    for p in sorted(d.rglob("*")):
        rel = p.relative_to(d).as_posix()
        if p.is_dir():
            h.update(f"dir {rel}\n".encode())
        elif p.name == "model.safetensors":
            h.update(f"{rel} {weights_sha256(p)}\n".encode())
        else:
            h.update(f"{rel} {hashlib.sha256(p.read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()


def write_all(out):
    """Write every fixture model's hf folder into out/<name>; returns name -> folder sha256."""
    from export import hf

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vocab = write_vocab(out / "vocab.txt")
    shas = {}
    for name in MODELS:
        hf.write(build(name, vocab), out / name, MAX_LEN)
        shas[name] = folder_sha256(out / name)
    (out / "pairs.json").write_text(json.dumps({"pairs": PAIRS, "max_len": MAX_LEN, "folders": shas}, indent=2,
                                               ensure_ascii=False), encoding="utf-8")
    return shas


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/hf_tiny_models.py OUT_DIR")
    for n, sha in write_all(sys.argv[1]).items():
        print(n, sha)
