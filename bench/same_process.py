"""Same-process check: onnxruntime sessions of several ONNX files side by side, interleaved.

    python bench/same_process.py ours=exports/qm/onnx/model.fused.int8.onnx peer-b=<peer dir>/model.fused.int8.onnx \
        [--calls 60] [--batch 28] [--seq 128] [--threads N] [--out DIR]

Every file is loaded once into one process (our session options: export/onnx.session_options),
then each round makes one call of every session on the same fixed batch (random ids in
[1000, vocab), [CLS] ... [SEP], segment 0 then 1, no padding: bench/peers.py's 28 x 128 batch),
in an order rotated every round, for `--calls` rounds. Calls a fraction of a second apart see
about the same machine, so on a machine shared with other jobs the per-round ratios to the first
file, and the median call times, are steadier than separate runs (bench/peers.py runs each
backend in its own process, minutes apart). Inputs are fed in the dtype each graph declares
(ours int32, a torch export int64). Prints pairs/s from the median call time, the quartiles,
the median per-round ratio to the first file, pairs per CPU second of the process (its
threads' CPU time: less sensitive to waiting for a core than wall time), the load average before and after, and the node
counts of each graph.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import ROOT, fixed_batch, md_table, save  # noqa: E402

sys.path.insert(0, str(ROOT))

DTYPES = {"tensor(int32)": "int32", "tensor(int64)": "int64"}


def feeds_for(sess, batch):
    return {i.name: batch[i.name].astype(DTYPES.get(i.type, "int32")) for i in sess.get_inputs()}


def node_counts(path):
    import onnx

    model = onnx.load(str(path))
    ops = collections.Counter(n.op_type for n in model.graph.node)
    return len(model.graph.node), dict(ops.most_common())


def load_average():
    return [round(x, 2) for x in os.getloadavg()]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", help="name=path.onnx; the first is the reference of the ratios")
    p.add_argument("--calls", type=int, default=60, help="rounds of one call per file")
    p.add_argument("--batch", type=int, default=28)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--vocab", type=int, default=30522, help="ids are drawn below this (MiniLM: 30522)")
    p.add_argument("--threads", type=int, help="intra-op threads (default: physical cores)")
    p.add_argument("--out", help="also write <out>/same_process.md and .json")
    args = p.parse_args(argv)
    from runtime.onnx import session

    named = [f.split("=", 1) if "=" in f else (Path(f).stem, f) for f in args.files]
    sessions = {name: session(path, args.threads) for name, path in named}
    batch = dict(zip(("input_ids", "token_type_ids", "attention_mask"), fixed_batch(args.batch, args.seq, args.vocab)))
    feeds = {name: feeds_for(s, batch) for name, s in sessions.items()}
    for name, s in sessions.items():  # one warm-up call each
        s.run(None, feeds[name])
    load_start, t_start = load_average(), time.time()
    import numpy as np

    names = list(sessions)
    runs = {name: [] for name in names}  # pairs/s of each call
    cpu = {name: [] for name in names}  # pairs per CPU second of this process (all its threads)
    for r in range(args.calls):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0, c0 = time.perf_counter(), time.process_time()
            sessions[name].run(None, feeds[name])
            c1, t1 = time.process_time(), time.perf_counter()
            runs[name].append(args.batch / (t1 - t0))
            cpu[name].append(args.batch / max(c1 - c0, 1e-9))
    load_end = load_average()

    ref = named[0][0]
    rows = []
    for name, path in named:
        q1, med, q3 = np.percentile(runs[name], [25, 50, 75])
        ratio = np.median(np.array(runs[name]) / np.array(runs[ref]))
        rows.append([name, f"{med:.1f}", f"{q1:.1f} - {q3:.1f}", f"{ratio:.2f}x", f"{np.median(cpu[name]):.1f}",
                     node_counts(path)[0]])
    lines = [f"Same-process check, batch {args.batch} x {args.seq} tokens, {args.calls} rounds of one call per file "
             f"(order rotated), wall {time.time() - t_start:.0f} s; load average {load_start} at the start, {load_end} "
             f"at the end", ""]
    lines += md_table(["file", "pairs/s (median call)", "quartiles", f"per-round ratio to {ref} (median)",
                       "pairs per CPU s (median)", "nodes"], rows)
    lines += [""] + [f"{name}: {path}: {node_counts(path)[1]}" for name, path in named]
    payload = {"args": vars(args), "runs": runs, "cpu": cpu, "load_average": {"start": load_start, "end": load_end},
               "files": dict(named)}
    if args.out:
        save(args.out, "same_process", lines, payload)
    else:
        print("\n".join(lines))


if __name__ == "__main__":
    main()
