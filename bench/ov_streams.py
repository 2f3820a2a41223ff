#!/usr/bin/env python
"""One request on every thread, or the batch split across single-thread streams? Per batch shape, one IR.

    python bench/ov_streams.py --ir <export>/openvino/model.int8.xml [--rows 2 4 8 16 32 100]
        [--lengths 48 128] [--threads 2] [--rounds 2 --seconds 1.5] [--json out.json]

Times `runtime.openvino.Runner` with `streams=1` (the latency compile: one request uses every thread)
against `streams=threads` (the batch cut into one part per stream) on the same random batch of each shape,
in alternating order, and prints ms per batch (the best of `--rounds`, each `--seconds` long) and the ratio.
The split is forced at every size here (`min_rows=1`), so the table shows where it pays: what
`runtime.openvino.SPLIT_MIN_ROWS` was chosen from (docs/inference.md, "Streams").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def ms_per_call(run, feeds, seconds):
    for _ in range(2):  # the first call of a shape compiles its kernels
        run(feeds)
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < seconds:
        run(feeds)
        n += 1
    return (time.perf_counter() - t0) / n * 1000


def batch(runner, rows, length, seed=0):
    """Random ids of `length` tokens (no padding) for a cross-encoder IR's inputs."""
    rng = np.random.default_rng(seed)
    shape = (rows, length)
    made = {"input_ids": rng.integers(1000, 20000, shape), "token_type_ids": np.zeros(shape, np.int64),
            "attention_mask": np.ones(shape, np.int64)}
    missing = [k for k in runner.inputs if k not in made]
    if missing:
        raise SystemExit(f"{runner.path}: inputs {missing}: expected a cross-encoder IR (input_ids, token_type_ids, "
                         f"attention_mask)")
    return {k: made[k] for k in runner.inputs}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ir", required=True, help="a cross-encoder OpenVINO IR (.xml)")
    p.add_argument("--rows", type=int, nargs="+", default=[2, 4, 8, 16, 32, 100])
    p.add_argument("--lengths", type=int, nargs="+", default=[48, 128])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "f32"])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seconds", type=float, default=1.5)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import runtime.openvino as rov

    if not Path(args.ir).is_file():
        raise SystemExit(f"--ir {args.ir}: no such file")
    prec = rov.precision(args.precision)
    one = rov.Runner(args.ir, args.threads, prec, streams=1)
    split = rov.Runner(args.ir, args.threads, prec, streams=args.threads)
    split.min_rows = 1  # split every batch, small ones too: the table is what decides the threshold
    rows_out = []
    print(f"{args.ir}: {args.threads} threads, {prec}; ms per batch (best of {args.rounds} rounds)")
    print(f"{'tokens':>6} {'rows':>5} {'one request':>12} {'split':>8} {'ratio':>6}")
    for length in args.lengths:
        for rows in args.rows:
            feeds = batch(one, rows, length)
            times = {"one": [], "split": []}
            for r in range(args.rounds):
                for name in (("one", "split") if r % 2 == 0 else ("split", "one")):
                    times[name].append(ms_per_call(one if name == "one" else split, feeds, args.seconds))
            a, b = min(times["one"]), min(times["split"])
            rows_out.append({"tokens": length, "rows": rows, "one_ms": a, "split_ms": b, "ratio": a / b,
                             "rounds": times})
            print(f"{length:>6} {rows:>5} {a:>12.2f} {b:>8.2f} {a / b:>6.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"ir": args.ir, "threads": args.threads, "precision": prec,
                                               "split_min_rows": rov.SPLIT_MIN_ROWS, "shapes": rows_out}, indent=1))


if __name__ == "__main__":
    main()
