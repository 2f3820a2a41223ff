"""The index and search tasks.

    python run_tasks.py --task index  --set index.model=<sbert|virt model or export dir> index.corpus=texts.txt --out idx/
    python run_tasks.py --task search --set search.index=idx/ search.k=10 [search.rerank=<cross-encoder dir>|virt] \
        [search.queries=queries.txt] [--out results.jsonl]

The corpus is a text file (one candidate per line, or `id<TAB>text`) or a pair file
(csv/tsv/jsonl, or any file with `data.format` set), whose `data.text_b` column is used;
exact duplicate texts are indexed once (the first id). Queries come from `search.queries`
or stdin, in the same text format. Output: one JSON line per query,
`{"id", "query", "results": [{"rank", "id", "text", "cosine", "rerank"?, "score"}, ...]}`,
to `--out` or stdout.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)


def read_corpus(path, data_cfg):
    """(ids, texts) of a text file or of a pair file's text_b column."""
    from data.readers import is_pair_file, read_pairs, read_texts

    p = Path(path)
    if is_pair_file(p, data_cfg.format):
        pairs = read_pairs(p, format=data_cfg.format, text_a=data_cfg.text_a, text_b=data_cfg.text_b,
                           label=None, on_bad_row=data_cfg.on_bad_row)
        return [str(i) for i in range(1, len(pairs.text_b) + 1)], list(pairs.text_b)
    return read_texts(str(p))


def index_task(cfg):
    from runtime.backends import open_model
    from search.index import SearchError, build_index

    ic = cfg.index
    if ic.model is None or ic.corpus is None:
        raise SearchError("set index.model (an sbert or virt model / export directory) and index.corpus "
                          "(a text file or pair file)")
    backend = open_model(ic.model, ic.backend, encoders=True)
    if ic.max_seq_len:
        backend.max_len = ic.max_seq_len
    ids, texts = read_corpus(ic.corpus, cfg.data)
    out = Path(cfg.out) if cfg.out else Path("runs") / "index" / time.strftime("%Y%m%d-%H%M%S")
    meta = build_index(backend, ids, texts, out, ic.batch_size, corpus=str(ic.corpus))
    print(f"indexed {meta['n']} {meta['kind']} candidates ({meta['duplicates_dropped']} duplicates dropped, "
          f"dim {meta['dim']}, {meta['seconds']:.1f}s) -> {out}")
    return meta


def search_task(cfg):
    from data import read_texts
    from runtime.batching import drive, run_in_batches
    from runtime.progress import progress_bar
    from search.engine import open_searcher
    from search.index import SearchError

    sc = cfg.search
    if sc.index is None:
        raise SearchError("set search.index to an index directory (--task index)")
    if sc.k < 1:
        raise SearchError(f"search.k={sc.k}: must be >= 1")
    searcher = open_searcher(sc.index, sc.rerank, sc.recall, sc.backend)
    qids, queries = read_texts(sc.queries or "-")

    def run(call):
        return run_in_batches(call.backend, call.fn, call.rows, sc.batch_size)

    out = open(cfg.out, "w", encoding="utf-8") if cfg.out else sys.stdout
    t0 = time.time()
    try:
        with progress_bar(len(queries), "search", "query") as bar:
            for s in range(0, len(queries), sc.batch_size):
                chunk = queries[s:s + sc.batch_size]
                for qid, q, res in zip(qids[s:s + sc.batch_size], chunk, drive(searcher.plan(chunk, sc.k), run)):
                    out.write(json.dumps({"id": qid, "query": q, "results": res}, ensure_ascii=False) + "\n")
                bar.update(len(chunk))
    finally:
        if out is not sys.stdout:
            out.close()
    log.info("%d queries, k=%d, recall=%s, rerank=%s (%.2fs)", len(queries), sc.k, searcher.recall.method,
             sc.rerank or "none", time.time() - t0)
    return len(queries)
