"""What the VIRT-adapted head keeps of the two texts, on a trained model and a labelled pair file.

Eq. 5 pools `u = mean_x(softmax(Hx Hy^T/sqrt(d)) Hy)`: every x token picks the y tokens it
aligns with, so a y token no x token aligns with barely enters `u` (and likewise for `v`).
For paraphrase detection the unaligned content is often the very signal. Per pair this
script measures, on the model's own last-layer states:

- `cos_adapted` = cos(u, v) with Eq. 5's pooling, `cos_mean` = cos(mean Hx, mean Hy) of the
  same states; each used as a score of the positive label gives an AUC (which pooling keeps
  the label better, before any head is trained on it);
- `coverage_y` = exp(entropy(c / m)) / n with c_j = sum_i M[i, j] the attention mass y
  token j receives from the m x tokens: 1 when every y token weighs the same in u, 1/n when
  one token stands for y; `coverage_x` likewise for v;
- `peak` = mean over x tokens of max_j M[i, j] (how peaked the alignment is);
- `model_auc`: the model's own probabilities.

    python bench/virt_head.py --model runs/table-mrpc/virt/model --data ../shared/data/mrpc/test.tsv
    python bench/virt_head.py --model runs/table-bq/virt/model --data ../shared/data/bq/valid.csv --format bq

Writes `<out>/virt_head.{md,json}` (default out: the model directory's parent).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from benchlib import md_table, save  # noqa: E402


def _softmax_masked(scores, key_mask):
    scores = np.where(key_mask[:, None, :] > 0, scores, -np.inf)
    scores = scores - scores.max(axis=-1, keepdims=True)
    e = np.exp(scores)
    return e / e.sum(axis=-1, keepdims=True)


def _mean(h, mask):
    return (h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)


def _cos(a, b):
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)


def _coverage(m, q_mask, k_mask):
    """exp(entropy) / n of the mass each key gets from the valid queries: [B]."""
    c = (m * q_mask[:, :, None]).sum(1)  # [B, Tk], sums to the number of valid queries
    p = c / c.sum(-1, keepdims=True)
    ent = -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0) * k_mask).sum(-1)
    return np.exp(ent) / k_mask.sum(-1)


def head_stats(hx, x_mask, hy, y_mask):
    """Per-pair statistics of Eq. 5 on one batch: hx [B, Tx, H], x_mask [B, Tx], likewise y."""
    hx, hy = np.asarray(hx, np.float64), np.asarray(hy, np.float64)
    xm, ym = np.asarray(x_mask, np.float64), np.asarray(y_mask, np.float64)
    d = hx.shape[-1]
    m_xy = _softmax_masked(hx @ hy.transpose(0, 2, 1) / np.sqrt(d), ym)  # [B, Tx, Ty]
    m_yx = _softmax_masked(hy @ hx.transpose(0, 2, 1) / np.sqrt(d), xm)  # [B, Ty, Tx]
    u, v = _mean(m_xy @ hy, xm), _mean(m_yx @ hx, ym)  # [B, H]
    peak = (m_xy.max(-1) * xm).sum(1) / xm.sum(1)
    return {"u": u, "v": v, "cos_adapted": _cos(u, v), "cos_mean": _cos(_mean(hx, xm), _mean(hy, ym)),
            "coverage_y": _coverage(m_xy, xm, ym), "coverage_x": _coverage(m_yx, ym, xm), "peak": peak}


def run(model_dir, data, fmt="auto", max_rows=None, batch_size=64):
    from sklearn.metrics import roc_auc_score
    from tqdm import tqdm

    from data import read_pairs
    from modeling.model_dir import load_model_dir
    from modeling.tokenization import pad_ids
    from common.labels import positive_index

    loaded = load_model_dir(model_dir, expect_kind="virt")
    model, tok = loaded.model, loaded.tokenizer
    pairs = read_pairs(data, format=fmt, labels=loaded.labels)
    n = min(len(pairs), max_rows or len(pairs))
    pos = positive_index(loaded.labels)
    y_true = np.array([int(label) == pos for label in pairs.labels[:n]])
    stats, probs = [], []
    for start in tqdm(range(0, n, batch_size), desc="pairs", unit="batch"):
        sl = slice(start, min(n, start + batch_size))
        x, xm = pad_ids(tok.encode_texts(pairs.text_a[sl], loaded.max_seq_len), tok.pad_id)
        y, ym = pad_ids(tok.encode_texts(pairs.text_b[sl], loaded.max_seq_len), tok.pad_id)
        hx = model.encode(x, xm)["last_hidden_state"]
        hy = model.encode(y, ym)["last_hidden_state"]
        probs.append(np.asarray(model.score(hx, xm, hy, ym))[:, pos])
        stats.append(head_stats(hx, xm, hy, ym))
    per_pair = {k: np.concatenate([s[k] for s in stats]) for k in stats[0] if k not in ("u", "v")}
    probs = np.concatenate(probs)
    summary = {
        "pairs": n, "positive_share": float(y_true.mean()),
        "model_auc": float(roc_auc_score(y_true, probs)),
        "auc_cos_adapted": float(roc_auc_score(y_true, per_pair["cos_adapted"])),
        "auc_cos_mean": float(roc_auc_score(y_true, per_pair["cos_mean"])),
        **{f"{k}_{name}": float(per_pair[k][sel].mean()) for k in ("coverage_y", "coverage_x", "peak")
           for name, sel in (("pos", y_true), ("neg", ~y_true))},
    }
    return summary


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a VIRT model directory (virt task output)")
    p.add_argument("--data", required=True, help="a labelled pair file")
    p.add_argument("--format", default="auto", help="reader format (auto, tsv, csv, jsonl, bq, ...)")
    p.add_argument("--max-rows", type=int, default=None)
    p.add_argument("--out", default=None, help="directory for virt_head.{md,json} (default: beside the model)")
    args = p.parse_args(argv)
    s = run(args.model, args.data, args.format, args.max_rows)
    rows = [["AUC of the model's probabilities", f"{s['model_auc']:.4f}", ""],
            ["AUC of cos(u, v), Eq. 5 pooling", f"{s['auc_cos_adapted']:.4f}", ""],
            ["AUC of cos(mean Hx, mean Hy)", f"{s['auc_cos_mean']:.4f}", ""],
            ["coverage of y in u (1 = all tokens equal)", f"{s['coverage_y_pos']:.3f}", f"{s['coverage_y_neg']:.3f}"],
            ["coverage of x in v", f"{s['coverage_x_pos']:.3f}", f"{s['coverage_x_neg']:.3f}"],
            ["peak alignment weight", f"{s['peak_pos']:.3f}", f"{s['peak_neg']:.3f}"]]
    lines = [f"`{args.model}` on `{args.data}`: {s['pairs']} pairs, {100 * s['positive_share']:.1f}% positive", "",
             *md_table(["statistic", "positive pairs (or all)", "negative pairs"], rows)]
    save(args.out or Path(args.model).parent, "virt_head", lines, {"model": args.model, "data": args.data, **s})


if __name__ == "__main__":
    main()
