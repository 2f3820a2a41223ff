"""First-request latency of a fresh server, with and without `serve.warmup`.

    python bench/first_request.py --model <export dir or model dir> [--repeats 3] [--warmup 32 128] [--out DIR]

Each run is a fresh process (the first call of a shape is slow once per process): it builds the
server state as `--task serve` does (serve/task.build_state, which runs the warm-up), starts the
server on a loopback port, then times three requests, each from a new client connection: a short
pair (the first request), the same pair again, and a longer pair (a shape no request has had). Runs alternate
between `serve.warmup=[]` and the given lengths, `--repeats` times each; medians are reported
with the start-up time (build_state: imports, loading the model, the warm-up) and the warm-up's share.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import ROOT, md_table, run_child, save  # noqa: E402

HERE = Path(__file__).resolve()
SHORT = ("How do I reset my password?", "how do i change my password")
LONG = ("The quarterly report, which was published on Tuesday after a delay of two weeks, shows that "
        "revenue grew in every region except the north.",
        "Revenue grew everywhere but in the north, according to the quarterly report released on Tuesday.")


def child(model, warmup):
    sys.path.insert(0, str(ROOT))
    from config.schema import load_config
    from export.serving_client import RestClient
    from serve.task import BackgroundServer, build_state

    cfg = load_config(None, [f"serve.model={model}", f"serve.warmup={json.dumps(warmup)}"])
    t0 = time.perf_counter()
    state = build_state(cfg)
    startup = time.perf_counter() - t0
    out = {"startup_s": startup, "warmup_s": state.warmup_seconds, "warmup": warmup}
    with BackgroundServer(state) as url:
        for key, (a, b) in (("first_ms", SHORT), ("second_ms", SHORT), ("new_shape_ms", LONG)):
            # a new connection each: with one reused connection the later requests took ~40 ms more here
            # (it looks like a delayed-ACK stall; not investigated)
            with RestClient(url, state.backend.name) as client:
                t = time.perf_counter()
                client.predict_pairs([a], [b])
                out[key] = 1000 * (time.perf_counter() - t)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="export directory or model directory")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, nargs="+", default=[32, 128])
    p.add_argument("--out")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.model, json.loads(args.child))))
        return
    runs = {"none": [], "warm": []}
    for _ in range(args.repeats):
        for mode, warmup in (("none", []), ("warm", args.warmup)):
            res = run_child([sys.executable, HERE, "--model", args.model, "--child", json.dumps(warmup)])
            if res:
                runs[mode].append(res)
                print(f"{mode}: " + ", ".join(f"{k} {v:.1f}" for k, v in res.items() if k != "warmup"), flush=True)

    def median(xs):
        xs = sorted(xs)
        return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2

    rows = []
    for mode, rs in runs.items():
        if rs:
            rows.append([f"serve.warmup={json.dumps(rs[0]['warmup'])}", len(rs),
                         *(f"{median([r[k] for r in rs]):.1f}" for k in ("first_ms", "second_ms", "new_shape_ms")),
                         f"{median([r['startup_s'] for r in rs]):.2f}", f"{median([r['warmup_s'] for r in rs]):.2f}"])
    lines = [f"First-request latency of a fresh server ({args.model}); medians of {args.repeats} alternating runs", ""]
    lines += md_table(["warm-up", "runs", "first request ms", "second request ms", "a new shape ms",
                       "start-up s (build_state, incl. warm-up)", "of which warm-up s"], rows)
    if args.out:
        save(args.out, "first_request", lines, {"args": vars(args), "runs": runs})
    else:
        print("\n".join(lines))


if __name__ == "__main__":
    main()
