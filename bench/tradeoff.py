"""Accuracy against online latency: which model to deploy for a ranking stage.

    python bench/tradeoff.py --out runs/tradeoff                     # the embedded sample set
    python bench/tradeoff.py --data ../shared/data/mrpc --out runs/tradeoff-mrpc \\
        --set train.epochs=3 train.max_seq_len=128 --student-layers 3

Trains (or takes, when a run directory already holds a finished run) four kinds of model on
one data set, each in a subprocess (`run_tasks.py`, memory returned between runs):

    <out>/virt            --task virt: the cross-encoder teacher (<out>/virt/teacher, unless
                          --teacher), the siamese baseline (<out>/virt/baseline: sbert's
                          (u, v, |u-v|) head at the student's depth) and the VIRT student
    <out>/tiny            --task distill: the tiny cross-encoder fine-tuned alone
                          (<out>/tiny/baseline) and distilled from the same teacher

then measures each model's online cost the way a ranking stage pays it (`bench/rerank.py`):
one query against K candidates whose side was encoded offline (cross-encoders score the K
joint pairs), with the data's median query / candidate token lengths, and writes
<out>/tradeoff.md, tradeoff.json and tradeoff.png (accuracy against ms per query).
`make demo` runs it on the VIRT run it has just trained (`--out runs/demo`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy_table import dataset_files  # noqa: E402
from benchlib import ROOT, machine, md_table, save  # noqa: E402

if str(ROOT) not in sys.path[:2]:
    sys.path.insert(0, str(ROOT))


def plan(out, teacher, student_layers, tiny_layers):
    """(name, task, overrides, run directory) of the two training runs, in dependency order."""
    out = Path(out)
    teacher = teacher or out / "virt" / "teacher" / "model"
    depth = f"model.num_layers={student_layers or 'null'}"
    return [("virt", "virt", [depth] + ([f"virt.teacher={teacher}"] if (Path(teacher) / "model.json").exists() else []),
             out / "virt"),
            ("tiny", "distill", [f"distill.teacher={teacher}", f"model.num_layers={tiny_layers}"], out / "tiny")]


def train(out, data, overrides, teacher=None, student_layers=None, tiny_layers=2):
    """Run what is missing; returns the run directories. A finished run is never retrained."""
    dirs = {}
    for name, task, own, run_dir in plan(out, teacher, student_layers, tiny_layers):
        dirs[name] = run_dir
        if (run_dir / "metrics.json").exists():
            print(f"{name}: reusing the finished run {run_dir}")
            continue
        cmd = [sys.executable, str(ROOT / "run_tasks.py"), "--task", task, "--out", str(run_dir),
               "--set", *data, *overrides, *own]
        print("$", " ".join(cmd), flush=True)
        t0 = time.time()
        if subprocess.run(cmd).returncode:
            sys.exit(f"{name}: {task} failed; its output is above")
        print(f"{name}: {time.time() - t0:.0f} s", flush=True)
    return dirs


def models(dirs, teacher=None):
    """(label, model directory, metrics.json) of every model to place on the curve."""
    virt, tiny = (json.loads((dirs[k] / "metrics.json").read_text()) for k in ("virt", "tiny"))
    where = lambda block, default: Path(block.get("model_dir", default))  # noqa: E731  (runs before it was recorded)
    layers = lambda d: json.loads((Path(d) / "model.json").read_text())["model"]["config"]["encoder"]["num_layers"]  # noqa: E731
    rows = [("cross-encoder", where(virt["teacher"], teacher or dirs["virt"] / "teacher" / "model"), virt["teacher"]),
            ("tiny cross-encoder", where(tiny["baseline"], dirs["tiny"] / "baseline" / "model"), tiny["baseline"]),
            ("distilled tiny", dirs["tiny"] / "model", tiny),
            ("siamese (sbert head)", where(virt["baseline"], dirs["virt"] / "baseline" / "model"), virt["baseline"]),
            ("VIRT", dirs["virt"] / "model", virt)]
    return [(f"{label}, {layers(path)} layer{'s' * (layers(path) != 1)}", path, m) for label, path, m in rows]


def median_lengths(model_dir, data_file, cfg_overrides=()):
    """Median token counts ([CLS] text [SEP]) of the data's first and second texts."""
    import numpy as np

    from config import load_config, parse_overrides
    from modeling.model_dir import load_model_dir
    from training.inputs import read_data

    cfg = load_config(ROOT / "config" / "finetune.yaml", parse_overrides([list(cfg_overrides)]))
    pairs = read_data(cfg, data_file)
    tok = load_model_dir(model_dir).tokenizer
    lengths = [int(np.median([len(ids) for ids in tok.encode_texts(texts, 512)])) for texts in (pairs.text_a, pairs.text_b)]
    return lengths[0], lengths[1]


def plot(rows, path, K, query_len, cand_len):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        ax.scatter(r["p50_ms"], 100 * r["accuracy"], s=60, color="tab:red" if "VIRT" in r["model"] else "tab:blue")
        ax.annotate(r["model"], (r["p50_ms"], 100 * r["accuracy"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(f"online latency per query, p50 ms (rerank K={K}, query {query_len} / candidate {cand_len} tokens, "
                  "candidates cached)", fontsize=8)
    ax.set_ylabel(f"{rows[0]['split']} accuracy (%)")
    ax.set_title("accuracy against latency: pick a point on the curve", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def gap_cell(row):
    """'67% [29%, 100%]' for a student's row, '' for the others."""
    if row.get("gap_closed") is None:
        return ""
    ci = row.get("gap_closed_ci95")
    return f"{100 * row['gap_closed']:.0f}%" + (f" [{100 * ci[0]:.0f}%, {100 * ci[1]:.0f}%]" if ci else "")


def report(out, entries, K, query_len, cand_len, backend, seconds, note):
    from rerank import rerank_latency

    rows = []
    for label, path, m in entries:
        split = "test" if "test" in m else "valid"
        lat = rerank_latency(path, K=K, query_len=query_len, cand_len=cand_len, backend=backend, seconds=seconds)
        rows.append({"model": label, "model_dir": str(path), "split": split, "accuracy": m[split]["accuracy"],
                     "auc": m[split].get("auc"), "p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"], "qps": lat["qps"],
                     # a student's run: the share of its teacher's lead over its baseline it closed, and the interval
                     "gap_closed": (m.get("gap_closed") or {}).get(split),
                     "gap_closed_ci95": (m.get("gap_closed_ci95") or {}).get(split)})
        print(f"{label}: {split} accuracy {100 * m[split]['accuracy']:.2f}, p50 {lat['p50_ms']:.1f} ms/query", flush=True)
    ce = rows[0]
    table = md_table(["model", f"{ce['split']} accuracy", "AUC", "gap closed [95%]", "p50 ms / query", "p99 ms",
                      "queries/s", "vs cross-encoder"],
                     [[r["model"], f"{100 * r['accuracy']:.2f}", "" if r["auc"] is None else f"{100 * r['auc']:.2f}",
                       gap_cell(r), f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", f"{r['qps']:.1f}",
                       f"{r['qps'] / ce['qps']:.1f}x"] for r in rows])
    shape = f"rerank of K={K} cached candidates per query, query {query_len} / candidate {cand_len} tokens, {backend}"
    lines = [f"Trade-off ({shape}; {machine()}; {note})", ""] + table + [
        "", "Gap closed: a student's share of its teacher's accuracy lead over the same-depth model trained without "
        "the teacher (the distilled tiny over the tiny cross-encoder, VIRT over the siamese), "
        "(student - baseline) / (teacher - baseline) on the same pairs; [95%]: the pairs resampled jointly "
        "(1,000 resamples), blank where the teacher does not lead."]
    save(out, "tradeoff", lines, {"rows": rows, "K": K, "query_len": query_len, "cand_len": cand_len,
                                  "backend": backend, "note": note})
    plot(rows, Path(out) / "tradeoff.png", K, query_len, cand_len)
    print(f"wrote {Path(out) / 'tradeoff.md'} and {Path(out) / 'tradeoff.png'}")
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="directory of the runs and the report")
    p.add_argument("--data", help="directory with train/(valid)/test files; default: the generated sample set")
    p.add_argument("--set", nargs="*", default=[], help="overrides for every training run (e.g. train.epochs=3)")
    p.add_argument("--teacher", help="a trained cross-encoder model directory (default: trained in <out>/virt/teacher)")
    p.add_argument("--student-layers", type=int, default=None, help="VIRT / siamese depth (default: all layers)")
    p.add_argument("--tiny-layers", type=int, default=2)
    p.add_argument("--K", type=int, default=100, help="candidates reranked per query")
    p.add_argument("--backend", default="keras", choices=("keras", "onnx", "onnx-int8"))
    p.add_argument("--seconds", type=float, default=2.0, help="timing per model")
    p.add_argument("--note", default="", help="e.g. 'idle machine' or 'shared with two jobs'")
    args = p.parse_args(argv)
    data = []
    if args.data:
        tr, va, te = dataset_files(args.data)
        data = [f"data.train={tr}"] + ([f"data.valid={va}"] if va else []) + ([f"data.test={te}"] if te else [])
    dirs = train(args.out, data, args.set, args.teacher, args.student_layers, args.tiny_layers)
    entries = models(dirs, args.teacher)
    import yaml

    run_data = yaml.safe_load((dirs["virt"] / "config.yaml").read_text())["data"]  # the sample set's paths too
    sample = run_data.get("test") or run_data.get("valid") or run_data["train"]
    data_keys = [f"data.{k}={run_data[k]}" for k in ("format", "text_a", "text_b", "label") if run_data.get(k)]
    query_len, cand_len = median_lengths(entries[0][1], sample, data_keys)
    report(args.out, entries, args.K, query_len, cand_len, args.backend, args.seconds, args.note)


if __name__ == "__main__":
    main()
