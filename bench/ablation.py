#!/usr/bin/env python
"""An ablation table on one labelled file: every model scored on the same pairs, then the paired tests.

    python bench/ablation.py --data test.csv [--set data.text_a=q ...] \\
        --model plain=runs/kd/baseline/model tinit=runs/tinit/model kd=runs/kd/model teacher=runs/t/model \\
        --compare tinit:plain kd:tinit --gap teacher:plain:kd [--json out.json]

Prints, per model, accuracy with its 95% bootstrap interval and the number of pairs; per `--compare
a:b`, the accuracy difference and the exact one-sided McNemar test both ways (the pairs only one model
gets right decide it); per `--gap teacher:baseline:student`, the share of the teacher-baseline gap
the student closed with its 95% interval (the pairs resampled jointly). The file is read with the
first model's data contract unless `--set` gives the keys. What docs/transfer.md's part-2 grid used.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from runtime.logs import quiet_start_up  # noqa: E402


def _named(items, what):
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"error: --{what} {item!r}: expected name=model_dir")
        out[name] = path
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="labelled pair file")
    p.add_argument("--set", nargs="*", default=[], help="data.* keys (default: the first model's data contract)")
    p.add_argument("--model", nargs="+", required=True, help="name=model_dir, scored in this order")
    p.add_argument("--compare", nargs="*", default=[], help="a:b, model names: does a beat b, does b beat a")
    p.add_argument("--gap", nargs="*", default=[], help="teacher:baseline:student, model names")
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args(argv)
    quiet_start_up()

    from compare_models import score
    from config import given_keys, load_config
    from training.contract import apply_contract
    from training.metrics import bootstrap_ci, gap_interval, mcnemar, point_metric

    models = _named(args.model, "model")
    for spec, k in [(c, 2) for c in args.compare] + [(g, 3) for g in args.gap]:
        names = spec.split(":")
        if len(names) != k or any(n not in models for n in names):
            raise SystemExit(f"error: {spec!r}: expected {k} of the --model names ({', '.join(models)}) joined by ':'")
    cfg = load_config(None, list(args.set))
    apply_contract(cfg, next(iter(models.values())), given_keys(None, list(args.set)))
    outs, res = {}, {"data": args.data, "models": {}, "compare": {}, "gap": {}}
    for name, path in models.items():
        outs[name] = o = score(path, cfg, args.data)
        ci = bootstrap_ci(o, ["accuracy"])["accuracy"]
        res["models"][name] = {"path": path, "n": int(len(o.labels)), "accuracy": point_metric("accuracy", o), "ci95": ci}
        print(f"{name:12s} accuracy {100 * res['models'][name]['accuracy']:.2f} [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}] "
              f"n={len(o.labels)}  ({path})", flush=True)
    for spec in args.compare:
        a, b = spec.split(":")
        ab, ba = mcnemar(outs[a], outs[b]), mcnemar(outs[b], outs[a])
        res["compare"][spec] = {"difference": ab["difference"], "right_only": ab["right_only"],
                                "p_a_beats_b": ab["p_value"], "p_b_beats_a": ba["p_value"]}
        print(f"{a} vs {b}: {100 * ab['difference']:+.2f} points, {ab['right_only'][0]} vs {ab['right_only'][1]} "
              f"pairs right for one only; exact McNemar one-sided p={ab['p_value']:.3g} ({a} better), "
              f"p={ba['p_value']:.3g} ({b} better)")
    for spec in args.gap:
        t, b, s = spec.split(":")
        lead = point_metric("accuracy", outs[t]) - point_metric("accuracy", outs[b])
        share = (point_metric("accuracy", outs[s]) - point_metric("accuracy", outs[b])) / lead if lead > 0 else None
        interval, dropped = gap_interval("accuracy", outs[t], outs[b], outs[s])
        res["gap"][spec] = {"teacher_lead": lead, "closed": share, "ci95": interval if share is not None else None,
                            "resamples_without_lead": dropped}
        shown = "the teacher does not lead" if share is None else f"{100 * share:.0f}%"
        ci = f" [{100 * interval[0]:.0f}%, {100 * interval[1]:.0f}%]" if interval and share is not None else ""
        print(f"gap {t} over {b} ({100 * lead:+.2f} points) closed by {s}: {shown}{ci} "
              f"({dropped} resamples where the teacher did not lead)")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=float), encoding="utf-8")


if __name__ == "__main__":
    main()
