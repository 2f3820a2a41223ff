#!/usr/bin/env python
"""Is model A better than model B? Both scored on the same labelled pairs, with a paired test.

    python bench/compare_models.py --a runs/new/model --b runs/old/model --data test.csv [--set data.text_a=q ...]

Prints, for each model, accuracy (and F1/AUC or macro-F1) with its 95% bootstrap interval and the
number of pairs, then the exact one-sided McNemar test both ways (the pairs only one model gets
right decide it). The file is read with model A's data contract (its column keys) unless `--set`
gives others. `--json FILE` writes the numbers. What docs/defaults.md's comparisons were run with.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.logs import quiet_start_up  # noqa: E402


def score(model_dir, cfg, path):
    """PairOutputs of the model directory on the labelled file `path`."""
    from modeling.model_dir import load_model_dir
    from training.inputs import read_data, tokenize
    from training.metrics import PairOutputs
    from training.trainer import predict_outputs

    loaded = load_model_dir(model_dir)
    pairs = read_data(cfg, path, loaded.labels)
    split = tokenize(loaded.model, loaded.tokenizer, pairs, loaded.labels, loaded.max_seq_len, "compare")
    probs = predict_outputs(loaded.model, split.features, cfg.train.eval_batch_size)["probs"]
    return PairOutputs(split.labels, probs, tuple(loaded.labels))


def compare(a_dir, b_dir, path, overrides=()):
    from config import given_keys, load_config
    from training.contract import apply_contract
    from training.metrics import bootstrap_ci, mcnemar, point_metric

    cfg = load_config(None, list(overrides))
    apply_contract(cfg, a_dir, given_keys(None, list(overrides)))
    out = {}
    a, b = score(a_dir, cfg, path), score(b_dir, cfg, path)
    if a.label_names != b.label_names:
        raise SystemExit(f"error: the models' labels differ ({a.label_names} vs {b.label_names})")
    for name, o in (("a", a), ("b", b)):
        ci = bootstrap_ci(o)
        out[name] = {m: {"value": point_metric(m, o), "ci95": ci.get(m)} for m in ci} | {"n": int(len(o.labels))}
    out["a_beats_b"], out["b_beats_a"] = mcnemar(a, b), mcnemar(b, a)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", required=True, help="model directory A")
    p.add_argument("--b", required=True, help="model directory B")
    p.add_argument("--data", required=True, help="labelled pair file")
    p.add_argument("--set", nargs="*", default=[], help="data.* keys (default: model A's data contract)")
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args(argv)
    quiet_start_up()
    res = compare(args.a, args.b, args.data, args.set)
    for name, path in (("a", args.a), ("b", args.b)):
        shown = ", ".join(f"{m} {v['value']:.4f} [{v['ci95'][0]:.4f}, {v['ci95'][1]:.4f}]"
                          for m, v in res[name].items() if m != "n")
        print(f"{name.upper()} {path} (n={res[name]['n']}): {shown}")
    for key, who in (("a_beats_b", "A over B"), ("b_beats_a", "B over A")):
        t = res[key]
        print(f"{who}: exact McNemar one-sided p={t['p_value']:.3g} ({t['right_only'][0]} vs {t['right_only'][1]} "
              f"pairs right for one model only; accuracy difference {100 * t['difference']:+.2f} points)")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=float), encoding="utf-8")


if __name__ == "__main__":
    main()
