#!/usr/bin/env python
"""Retrieval quality of the search pipeline on a labelled pair file: recall@k and MRR@k of the
cosine recall of each index model, and after reranking its top k.

    python bench/retrieval_eval.py --pairs ../shared/data/bq/valid.csv --format bq \
        --index-model runs/sbert/<stamp>/model --index-model runs/virt/<stamp>/model \
        --rerank runs/finetune/<stamp>/model --k 10 --max-queries 1000 --out runs/retrieval/bq

The retrieval set is built from the positives: queries = the distinct `sentence1` of positive
rows, relevant candidates of a query = the `sentence2` of its positive rows, corpus = every
distinct `sentence2` of the file (positives and negatives). recall@k = share of queries with a
relevant candidate in the top k; MRR@k = mean of 1 / rank of the first relevant one (0 when none
is in the top k). A reranker reorders the recalled top k, so recall@k is unchanged by it and
MRR@k is what it can improve. `virt` as a reranker = the virt index's own `score`.
Writes `<out>/retrieval.json` and `<out>/retrieval.md`.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def retrieval_set(path, fmt, positive="1"):
    """(queries, relevant: list of sets of corpus indices, corpus texts)."""
    from data import read_pairs

    pairs = read_pairs(path, format=fmt)
    labels = pairs.labels  # strings, as in the file
    if labels is None:
        raise SystemExit(f"{path}: no labels: the retrieval set needs labelled positives")
    corpus = list(dict.fromkeys(pairs.text_b))
    where = {t: i for i, t in enumerate(corpus)}
    relevant = {}
    for a, b, y in zip(pairs.text_a, pairs.text_b, labels):
        if str(y) == positive:
            relevant.setdefault(a, set()).add(where[b])
    return list(relevant), [relevant[q] for q in relevant], corpus


def score(results, relevant, k):
    hits, rr = 0, 0.0
    for res, rel in zip(results, relevant):
        ranks = [c["rank"] for c in res[:k] if c["_index"] in rel]
        if ranks:
            hits += 1
            rr += 1.0 / min(ranks)
    return {"recall": hits / len(relevant), "mrr": rr / len(relevant)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", required=True, help="labelled pair file")
    p.add_argument("--format", default="auto")
    p.add_argument("--positive", default="1", help="label of the positive class (default 1)")
    p.add_argument("--index-model", action="append", required=True, help="sbert / virt model or export dir (repeat)")
    p.add_argument("--rerank", action="append", default=[], help="cross-encoder model or export dir, or virt (repeat)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--max-queries", type=int, default=1000, help="seeded sample of the queries (0 = all)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--backend", default="onnx", choices=("onnx", "tf"))
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    from search.engine import Searcher
    from search.index import Index, build_index
    from runtime.backends import open_model
    from runtime.batching import drive, run_in_batches

    out = Path(args.out or ROOT / "runs" / "retrieval" / datetime.now().strftime("%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    queries, relevant, corpus = retrieval_set(args.pairs, args.format, args.positive)
    if args.max_queries and len(queries) > args.max_queries:
        keep = sorted(random.Random(0).sample(range(len(queries)), args.max_queries))
        queries, relevant = [queries[i] for i in keep], [relevant[i] for i in keep]
    print(f"{len(queries)} queries, {len(corpus)} candidates", flush=True)

    def run(call):
        return run_in_batches(call.backend, call.fn, call.rows, args.batch_size)

    rerankers = {}
    rows = []
    for model in args.index_model:
        backend = open_model(model, args.backend, kinds=("sbert", "virt"))
        index_dir = out / f"index-{len(rows)}-{backend.kind}"
        t0 = time.time()
        build_index(backend, [str(i) for i in range(len(corpus))], corpus, index_dir, args.batch_size)
        t_index = time.time() - t0
        index = Index(index_dir)
        for rerank in [None] + args.rerank:
            if rerank == "virt" and not backend.spec.late_interaction:  # VIRT reranks with its own states
                continue
            if rerank not in (None, "virt") and rerank not in rerankers:
                rerankers[rerank] = open_model(rerank, args.backend, kinds=("cross_encoder",))
            searcher = Searcher(index, backend, rerankers.get(rerank, rerank))
            t0 = time.time()
            results = []
            for s in range(0, len(queries), args.batch_size):
                results += drive(searcher.plan(queries[s:s + args.batch_size], args.k), run)
            for res in results:
                for c in res:
                    c["_index"] = int(c["id"])
            m = score(results, relevant, args.k)
            rows.append({"index_model": str(model), "kind": backend.kind, "rerank": rerank or "none",
                         f"recall@{args.k}": m["recall"], f"mrr@{args.k}": m["mrr"], "queries": len(queries),
                         "candidates": len(corpus), "index_seconds": round(t_index, 1),
                         "search_seconds": round(time.time() - t0, 1)})
            print(json.dumps(rows[-1]), flush=True)
    k = args.k
    table = [f"| index model | kind | rerank | recall@{k} | MRR@{k} | search s |", "|---|---|---|---|---|---|"]
    table += [f"| {r['index_model']} | {r['kind']} | {r['rerank']} | {100 * r[f'recall@{k}']:.2f} | "
              f"{100 * r[f'mrr@{k}']:.2f} | {r['search_seconds']} |" for r in rows]
    md = "\n".join(table)
    print("\n" + md)
    (out / "retrieval.json").write_text(json.dumps({"date": datetime.now().isoformat(timespec="seconds"),
                                                    "args": vars(args), "rows": rows}, indent=2), encoding="utf-8")
    (out / "retrieval.md").write_text(md + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
