"""Helpers shared by the benchmarks: child processes that print one JSON line, the peer venv,
markdown tables, results saved as JSON + markdown, peak RSS."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEER_PYTHON = Path(os.environ.get("PEER_PYTHON", "/tmp/peer/bin/python"))  # a venv with torch + transformers

sys.path.append(str(ROOT))  # after site-packages: never shadows the peer venv's modules
from training.memory import peak_rss_mb  # noqa: E402,F401  (stdlib only: the peer venv imports it too)


def run_child(cmd, timeout=1800, env=None):
    """Run a child that prints its result as the last stdout line (JSON); None (reported) on failure."""
    try:
        out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})
    except subprocess.TimeoutExpired:
        print(f"{' '.join(map(str, cmd[:4]))}...: timed out after {timeout}s", file=sys.stderr)
        return None
    if out.returncode or not out.stdout.strip():
        print(f"{' '.join(map(str, cmd[:4]))}...: failed (rc={out.returncode})\n{out.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine():
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}, {datetime.now():%Y-%m-%d}"


def md_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def save(out, name, lines, payload):
    """Print the markdown and write `<out>/<name>.md` and `<out>/<name>.json`."""
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(text)
    (out / f"{name}.json").write_text(json.dumps({"machine": machine(), **payload}, indent=2, default=float))


def fixed_batch(batch, seq, vocab, seed=0):
    """The benchmarks' fixed batch (bench/peers.py, bench/same_process.py): random ids in
    [min(1000, vocab / 2), vocab) between [CLS] (101) and [SEP] (102), segment 0 then 1, no
    padding; (ids, token types, mask), int32."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = rng.integers(min(1000, vocab // 2), vocab, size=(batch, seq)).astype("int32")
    ids[:, 0], ids[:, -1] = 101, 102
    types = np.repeat([[0] * (seq // 2) + [1] * (seq - seq // 2)], batch, 0).astype("int32")
    return ids, types, np.ones_like(ids)
