#!/usr/bin/env python
"""Which NNCF options for the OpenVINO int8 IR? Accuracy on a labelled file and speed, one export.

    python bench/int8_options.py --export <export dir> --train train.csv --test test.csv [--max-len 64]
        [--variants default all_sqoff ffnout_kept] [--rounds 4 --seconds 4] [--json out.json]

Quantises the export's fused ONNX graph once per variant (NNCF on 300 pairs of --train, seed 0, as the
export draws them), then scores --test (sorted by length, batches of 32) with onnxruntime fp32 (the
reference), the export's IR in bf16 and every int8 variant, printing accuracy, the change against fp32
and the discordant pairs (fp32-only / variant-only). With --rounds, each IR is timed in alternating
rounds on the same batches (pairs/s, 2 threads) and the per-round figures and medians are printed.
What docs/export.md's "int8 options, second pass" was measured with.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.logs import quiet_start_up  # noqa: E402

POOLER_CLASSIFIER = [r".*pooler.*", r".*classifier.*"]
FFN_OUT = r".*layer_\d+(_\d+)?/output(_\d+)?/Tensordot/MatMul"
PROJECTIONS = r".*output(_\d+)?/Tensordot/MatMul"
VARIANTS = {  # name -> options over export.openvino.INT8_OPTIONS
    "default": {},
    "all_sqoff": {"smooth_quant_alpha": -1.0, "ignored": POOLER_CLASSIFIER},
    "projections_kept": {"smooth_quant_alpha": None, "ignored": [PROJECTIONS] + POOLER_CLASSIFIER},
    "ffnout_kept": {"smooth_quant_alpha": None, "ignored": [FFN_OUT] + POOLER_CLASSIFIER},
    "ffnout_kept_sqoff": {"smooth_quant_alpha": -1.0, "ignored": [FFN_OUT] + POOLER_CLASSIFIER},
}


def batches_of(tok, text_a, text_b, max_len, size=32):
    from modeling.tokenization import pad_ids

    enc = tok.encode_pairs(text_a, text_b, max_len)
    order = sorted(range(len(text_a)), key=lambda i: len(enc["input_ids"][i]))
    out = []
    for i in range(0, len(order), size):
        idx = order[i:i + size]
        ids, mask = pad_ids([enc["input_ids"][j] for j in idx], 0)
        types, _ = pad_ids([enc["token_type_ids"][j] for j in idx], 0)
        out.append({"input_ids": ids, "token_type_ids": types, "attention_mask": mask})
    return order, out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--export", required=True, help="a cross-encoder export directory (onnx/model.fused.onnx)")
    p.add_argument("--train", required=True, help="pair file the calibration pairs are drawn from")
    p.add_argument("--test", required=True, help="labelled pair file to score")
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--work", default=None, help="where the int8 IRs go (default: <export>/../int8-options)")
    p.add_argument("--rounds", type=int, default=0, help="timing rounds (0: accuracy only)")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    quiet_start_up()

    from data import read_pairs
    from export.openvino import int8_coverage, quantize
    from runtime.backends import open_model
    from runtime.openvino import Runner

    exp = Path(args.export)
    work = Path(args.work or exp.parent / "int8-options")
    work.mkdir(parents=True, exist_ok=True)
    ref_backend = open_model(exp, backend="onnx")
    tok, labels = ref_backend.tokenizer, ref_backend.labels
    train = read_pairs(args.train, label=None)
    rows = np.random.default_rng(0).permutation(len(train.text_a))[:300]
    _, calib = batches_of(tok, [train.text_a[i] for i in rows], [train.text_b[i] for i in rows], args.max_len, 1)
    files = {"bf16": exp / "openvino" / "model.xml"}
    for name in args.variants:
        path = work / f"{name}.xml"
        if not path.exists():
            _, seconds = quantize(exp / "onnx" / "model.fused.onnx", path, calib, VARIANTS[name])
            print(f"{name}: quantised in {seconds:.0f} s", flush=True)
        files[name] = path

    test = read_pairs(args.test)
    order, batches = batches_of(tok, test.text_a, test.text_b, args.max_len)
    y = np.array([labels.index(str(test.labels[i])) for i in order])
    ref = np.concatenate([ref_backend.run("predict_ids", b)["probs"] for b in batches])
    right_ref = ref.argmax(-1) == y
    result = {"export": str(exp), "test": args.test, "n": len(y), "fp32": float(right_ref.mean()), "variants": {}}
    print(f"{exp}: {len(y)} pairs of {args.test}, onnxruntime fp32 accuracy {100 * right_ref.mean():.2f}")
    runners = {name: Runner(f, 2, "bf16") for name, f in files.items()}
    for name, run in runners.items():
        probs = np.concatenate([run(b)[run.outputs[0]] for b in batches])
        right = probs.argmax(-1) == y
        cover = int8_coverage(files[name]) if name != "bf16" else {"int8": [], "kept": []}
        r = {"accuracy": float(right.mean()), "fp32_only": int((right_ref & ~right).sum()),
             "variant_only": int((right & ~right_ref).sum()), "int8_matmuls": len(cover["int8"]),
             "kept_matmuls": len(cover["kept"])}
        result["variants"][name] = r
        print(f"  {name:18s} accuracy {100 * r['accuracy']:.2f} ({100 * (r['accuracy'] - result['fp32']):+.2f}), "
              f"fp32-only / variant-only {r['fp32_only']} / {r['variant_only']}, int8 MatMuls {r['int8_matmuls']} "
              f"(kept {r['kept_matmuls']})", flush=True)

    n_pairs = sum(len(b["input_ids"]) for b in batches)
    for rnd in range(args.rounds):
        for name, run in runners.items():
            t0, n = time.perf_counter(), 0
            while time.perf_counter() - t0 < args.seconds:
                for b in batches:
                    run(b)
                n += n_pairs
            rate = n / (time.perf_counter() - t0)
            result["variants"][name].setdefault("pairs_per_s", []).append(round(rate, 1))
            print(f"  round {rnd + 1} {name:18s} {rate:.1f} pairs/s", flush=True)
    if args.rounds:
        for name, r in result["variants"].items():
            print(f"  median {name:18s} {statistics.median(r['pairs_per_s']):.1f} pairs/s ({r['pairs_per_s']})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
