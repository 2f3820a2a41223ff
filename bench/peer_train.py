"""Training throughput against a peer: the MiniLM-L6 cross-encoder fine-tuning step (batch 32,
sequence 64, AdamW, clip 1.0) in this toolkit and in PyTorch `transformers`
(`BertForSequenceClassification` from the same all-MiniLM-L6-v2 checkpoint).

    python bench/peer_train.py [--steps 10] [--rounds 2] [--configs fp32 xla bf16 xla+bf16] [--quick]

Ours is `bench/train_throughput.py`'s measurement (the trainer's own step), one subprocess per
configuration; the peer runs in a separate venv with torch (never a project requirement):

    python3.11 -m venv /tmp/peer && /tmp/peer/bin/pip install torch==2.13.0 transformers==5.23.0 safetensors

(`PEER_PYTHON` points elsewhere). Runs alternate (ours fp32, peer, ours XLA, ..., then the
reverse order) over `--rounds` rounds so drifting load hits both alike; the table shows median pairs/s and the ratio to the peer.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import PEER_PYTHON, md_table, peak_rss_mb, run_child, save  # noqa: E402
from train_throughput import CONFIGS  # noqa: E402

HERE = Path(__file__).resolve()


def fixed_batch(batch, seq):
    """The batch train_throughput.measure uses: random ids, [CLS] ... [SEP], two segments, labels."""
    import numpy as np

    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 30000, size=(batch, seq)).astype("int64")
    ids[:, 0], ids[:, -1] = 101, 102
    types = np.repeat([[0] * (seq // 2) + [1] * (seq - seq // 2)], batch, 0)
    return ids, types, np.ones((batch, seq), "int64"), rng.integers(0, 2, batch)


def peer_measure(model_dir, batch, seq, steps):
    """In the peer venv: the same step with torch, pairs/s after 3 warm-up steps."""
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)
    ids, types, mask, y = (torch.as_tensor(a) for a in fixed_batch(batch, seq))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, token_type_ids=types, attention_mask=mask, labels=y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return float(loss)

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    assert loss == loss
    return {"pairs_per_s": batch * steps / (time.perf_counter() - t0), "peak_rss_mb": peak_rss_mb(),
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--quick", action="store_true", help="5 steps, 1 round, fp32 only")
    p.add_argument("--out", default="bench-results")
    p.add_argument("--peer-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.peer_child:
        import json

        print(json.dumps(peer_measure(args.peer_child, args.batch, args.seq, args.steps)))
        return
    if args.quick:
        args.steps, args.rounds, args.configs = 5, 1, ["fp32"]
    sys.path.insert(0, str(HERE.parents[1]))
    from modeling.pretrained import minilm_dir

    shape = ["--batch", args.batch, "--seq", args.seq, "--steps", args.steps]
    jobs = {c: [sys.executable, HERE.with_name("train_throughput.py"), "--child", c, "--layers", 6, *shape]
            for c in args.configs}
    if PEER_PYTHON.exists():
        jobs["peer"] = [PEER_PYTHON, HERE, "--peer-child", minilm_dir(), *shape]
    else:
        print(f"no peer venv at {PEER_PYTHON}: measuring ours only (see the docstring)", file=sys.stderr)
    results, rss, peer_info = {k: [] for k in jobs}, {k: [] for k in jobs}, {}
    order = [k for k in [args.configs[0], "peer", *args.configs[1:]] if k in jobs]  # peer next to ours fp32
    for r in range(args.rounds):
        for k in order if r % 2 == 0 else order[::-1]:
            res = run_child(jobs[k])
            if res is None:
                continue
            value = res["pairs_per_s"]
            peer_info = res if k == "peer" else peer_info
            results[k].append(value)
            rss[k].append(res["peak_rss_mb"])
            print(f"round {r + 1} {k}: {value:.1f} pairs/s, peak RSS {res['peak_rss_mb']:.0f} MB", flush=True)
    peer = statistics.median(results["peer"]) if results.get("peer") else None
    rows, summary = [], {}
    for k, vals in results.items():
        if vals:
            med = statistics.median(vals)
            summary[k] = {"pairs_per_s": med, "runs": vals, "peak_rss_mb": max(rss[k])}
            name = f"PyTorch {peer_info.get('torch', '')} transformers (peer)" if k == "peer" else f"textmatch {k}"
            rows.append([name, f"{med:.1f}", ", ".join(f"{v:.1f}" for v in vals),
                         f"{med / peer:.2f}x" if peer else "", f"{max(rss[k]):.0f}"])
    lines = [f"MiniLM-L6 cross-encoder train step, batch {args.batch}, seq {args.seq}, AdamW, {args.steps} steps "
             f"x {args.rounds} rounds", ""] + md_table(["config", "pairs/s (median)", "runs", "vs peer", "peak RSS MB"], rows)
    save(args.out, "peer_train", lines, {"args": {k: str(v) for k, v in vars(args).items()}, "results": summary,
                                         "peer": peer_info})


if __name__ == "__main__":
    main()
