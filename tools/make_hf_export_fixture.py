#!/usr/bin/env python
"""Build the independent reference for the Hugging Face export (export/hf.py): what transformers
and sentence-transformers compute from the folders the export writes.

Step 1, with the project's venv: write the deterministic tiny models' hf folders
(tests/hf_tiny_models.py: weights from numpy RandomState, not Keras initialisers):

    .venv/bin/python tests/hf_tiny_models.py /tmp/hfexp

Step 2, with a throwaway venv that has PyTorch (NOT the project's; CPU torch first, so that pip
does not pull a CUDA build for the others):

    python3.11 -m venv /tmp/hfref
    /tmp/hfref/bin/pip install torch==2.13.0
    /tmp/hfref/bin/pip install transformers==5.23.0 sentence-transformers safetensors numpy
    /tmp/hfref/bin/python tools/make_hf_export_fixture.py /tmp/hfexp --out tests/fixtures/hf_export_reference.npz

The cross-encoder folder is loaded with `AutoModelForSequenceClassification` (must come back as
BertForSequenceClassification with no missing, unexpected or mis-shaped tensor), the sbert folders
with `SentenceTransformer(path)` (Transformer, Pooling with the model's mode, Normalize when
written). Stored per folder: the tokenizer's ids (AutoTokenizer / the ST model's tokenizer on the
folder's files), the logits or embeddings, and the folder's sha256 (tests/hf_tiny_models.py's
`folder_sha256`), so the test knows the fixture was made from the files CI writes.
Nothing is downloaded: the hub is forced offline.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import sentence_transformers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from hf_tiny_models import MODELS, folder_sha256  # noqa: E402  (numpy + safetensors only)


def cross_encoder(d, pairs, max_len, labels):
    tok = AutoTokenizer.from_pretrained(d)
    model, info = AutoModelForSequenceClassification.from_pretrained(
        d, attn_implementation="eager", dtype=torch.float32, output_loading_info=True)
    assert type(model).__name__ == "BertForSequenceClassification", type(model)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert [model.config.id2label[i] for i in range(model.config.num_labels)] == labels, model.config.id2label
    enc = tok([a for a, _ in pairs], [b for _, b in pairs], padding=True, truncation=True, max_length=max_len,
              return_tensors="pt")
    with torch.no_grad():
        logits = model.eval()(**enc).logits.numpy()
    return {"input_ids": enc["input_ids"].numpy(), "token_type_ids": enc["token_type_ids"].numpy(),
            "attention_mask": enc["attention_mask"].numpy(), "logits": logits}


def sbert(d, texts, max_len, settings):
    model = SentenceTransformer(str(d), device="cpu", model_kwargs={"attn_implementation": "eager"})
    names = [type(m).__name__ for m in model]
    assert names == ["Transformer", "Pooling"] + ["Normalize"] * settings["normalize"], names
    assert model.max_seq_length == max_len, model.max_seq_length
    assert model[1].pooling_mode == settings["pooling"], model[1].pooling_mode
    enc = model.tokenizer(texts, padding=True, truncation=True, max_length=max_len, return_tensors="np")
    emb = model.encode(texts, convert_to_numpy=True, batch_size=len(texts))
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "embeddings": emb}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", help="the directory step 1 wrote")
    ap.add_argument("--out", default="tests/fixtures/hf_export_reference.npz")
    ap.add_argument("--max-bytes", type=int, default=100_000, help="fail if the written file is larger")
    args = ap.parse_args()
    torch.manual_seed(0)
    root = Path(args.folders)
    spec = json.loads((root / "pairs.json").read_text(encoding="utf-8"))
    pairs, max_len = [tuple(p) for p in spec["pairs"]], spec["max_len"]
    arrays = {}
    for name, (kind, settings) in MODELS.items():
        d = root / name
        sha = folder_sha256(d)
        assert sha == spec["folders"][name], f"{d} changed since step 1 wrote it"
        if kind == "cross_encoder":
            out = cross_encoder(d, pairs, max_len, settings["labels"])
        else:
            out = sbert(d, [a for a, _ in pairs] + [b for _, b in pairs], max_len, settings)
        arrays.update({f"{name}.{k}": v for k, v in out.items()})
        arrays[f"{name}.folder_sha256"] = np.array(sha)
    arrays["meta"] = np.array([f"torch={torch.__version__}", f"transformers={transformers.__version__}",
                               f"sentence_transformers={sentence_transformers.__version__}",
                               f"numpy={np.__version__}", "attn_implementation=eager",
                               "made by tools/make_hf_export_fixture.py from tests/hf_tiny_models.py's folders"])
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    for k, v in arrays.items():
        print(f"{k:32s} {v.shape} {v.dtype}" if v.dtype.kind in "fiu" else f"{k:32s} {v}")
    size = os.path.getsize(args.out)
    print(f"wrote {args.out}: {size} bytes")
    if args.max_bytes and size > args.max_bytes:
        raise SystemExit(f"ERROR: {args.out} is {size} bytes > --max-bytes {args.max_bytes}")


if __name__ == "__main__":
    main()
