"""Training throughput of the MiniLM-L6 cross-encoder step: fp32, XLA, bf16, XLA + bf16.

    python bench/train_throughput.py [--layers 6] [--batch 32] [--seq 64] [--steps 20] [--out bench-results]

Each configuration runs in its own subprocess (mixed precision is a global
policy), the same trainer step the tasks use, on a fixed batch of full-length
pairs. Configurations alternate over `--rounds` rounds so drifting machine load
hits all of them alike; the table shows the median pairs/s and the ratio to fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import peak_rss_mb  # noqa: E402

CONFIGS = {"fp32": (None, False), "xla": (None, True), "bf16": ("mixed_bfloat16", False),
           "xla+bf16": ("mixed_bfloat16", True)}


def measure(layers, batch, seq, steps, precision, jit):
    """One configuration, in this process: pairs/s after warm-up and the process's peak RSS."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(ROOT))
    import keras
    import numpy as np
    import tensorflow as tf

    from config import TrainConfig
    from crossenc.model import CrossEncoder
    from modeling.pretrained import load_pretrained
    from training.optim import build_optimizer
    from training.trainer import Trainer

    if precision:
        keras.mixed_precision.set_global_policy(precision)
    cfg = TrainConfig(batch_size=batch, jit_compile=jit, mixed_precision=precision)
    encoder, _ = load_pretrained("minilm", num_layers=layers)
    model = CrossEncoder(encoder, 2, pooling="mean", name="ce")
    model(model.dummy_inputs())
    opt = build_optimizer(cfg, 1000)
    opt.build(model.trainable_variables)
    step = Trainer(cfg, tf.distribute.get_strategy(), "/tmp")._make_train_step(model, opt)
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 30000, size=(batch, seq)).astype("int32")
    ids[:, 0], ids[:, -1] = 101, 102
    x = {"input_ids": tf.constant(ids), "token_type_ids": tf.constant(np.repeat([[0] * (seq // 2) + [1] * (seq - seq // 2)], batch, 0).astype("int32")),
         "attention_mask": tf.ones((batch, seq), tf.int32)}
    y = tf.constant(rng.integers(0, 2, batch).astype("int32"))
    for _ in range(3):
        float(step(x, y)[0])
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = float(step(x, y)[0])
    dt = time.perf_counter() - t0
    assert np.isfinite(loss)
    return {"pairs_per_s": batch * steps / dt, "peak_rss_mb": peak_rss_mb()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--configs", nargs="*", default=list(CONFIGS))
    p.add_argument("--out", default="bench-results")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        precision, jit = CONFIGS[args.child]
        print(json.dumps(measure(args.layers, args.batch, args.seq, args.steps, precision, jit)))
        return
    results = {c: [] for c in args.configs}
    for r in range(args.rounds):
        for c in args.configs:
            cmd = [sys.executable, __file__, "--child", c, "--layers", str(args.layers), "--batch", str(args.batch),
                   "--seq", str(args.seq), "--steps", str(args.steps)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                print(f"{c}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            results[c].append(json.loads(out.stdout.strip().splitlines()[-1])["pairs_per_s"])
            print(f"round {r + 1} {c}: {results[c][-1]:.1f} pairs/s", flush=True)
    base = statistics.median(results["fp32"]) if results.get("fp32") else None
    lines = [f"MiniLM-L{args.layers} cross-encoder train step, batch {args.batch}, seq {args.seq}, {os.cpu_count()} CPU cores",
             "", "| config | pairs/s (median) | vs fp32 |", "|---|---|---|"]
    summary = {}
    for c, vals in results.items():
        if vals:
            med = statistics.median(vals)
            summary[c] = {"pairs_per_s": med, "runs": vals}
            lines.append(f"| {c} | {med:.1f} | {med / base:.2f}x |" if base else f"| {c} | {med:.1f} | |")
    print("\n".join(lines))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_throughput.json").write_text(json.dumps({"args": vars(args), "results": summary}, indent=2))
    (out / "train_throughput.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
