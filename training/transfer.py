"""Teacher-labelled transfer pairs for distillation (distill, virt): pairs beyond the labelled set that
the student learns from through the teacher's outputs alone (the `transfer.*` keys, docs/transfer.md).

Sources: a user's file of unlabelled pairs (`transfer.unlabeled`), and pairs built from the training
texts (`transfer.sources`): `swap` (b, a); `random` (a, the b of another pair); `hard` (a, the b of
another pair nearest to a by cosine of mean-pooled embeddings of the student's initial encoder, and
(the a nearest to b, b)); `replace` (TinyBERT's augmentation: each word piece replaced with
probability `replace_prob` by one of its `replace_k` nearest neighbours by cosine over the input
embedding matrix; no checkpoint we load carries an MLM head for TinyBERT's first choice).

A transfer pair's label is `None` (the placeholder `NO_LABEL` once tokenised) and its hard-label
weight 0: the cross-entropy never reads it (`modeling.task_model.cross_entropy`). Every draw is a
function of the training pairs, `transfer.seed` and the keys.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np

from data.readers import DataError, PairData, read_pairs
from training.inputs import NO_LABEL, init_encoder  # noqa: F401 (NO_LABEL)  a transfer pair's label index once tokenised

log = logging.getLogger(__name__)

EMBED_SOURCES = ("hard", "replace")  # the sources that need the student's initial encoder


def pair_data(text_a, text_b, path="", lines=None):
    """Label-less pairs (labels all None: teacher-labelled)."""
    return PairData(list(text_a), list(text_b), [None] * len(text_a),
                    list(lines) if lines is not None else [0] * len(text_a), path)


def concat_pairs(first, rest):
    """`first` followed by each of `rest` (PairData), labels and source lines kept."""
    out = dataclasses.replace(first, text_a=list(first.text_a), text_b=list(first.text_b),
                              labels=list(first.labels), lines=list(first.lines))
    for p in rest:
        out.text_a += p.text_a
        out.text_b += p.text_b
        out.labels += p.labels
        out.lines += p.lines
    return out


def with_transfer(splits, transfer):
    """`splits` whose train is followed by the `transfer` pairs, and the per-row weight of the hard-label
    term: 0 for transfer rows; N / N_gold for gold rows, so the batch mean of weight x CE has the
    scale of the gold rows' mean CE whatever the mix (training/transfer.py's module docstring)."""
    n, m = len(splits.train), len(transfer)
    weight = np.concatenate([np.full(n, (n + m) / n, np.float32), np.zeros(m, np.float32)])
    return dataclasses.replace(splits, train=concat_pairs(splits.train, [transfer])), weight


# ----------------------------------------------------------------------------- the sources
def swapped(train, rows):
    return pair_data([train.text_b[i] for i in rows], [train.text_a[i] for i in rows], train.path,
                     [train.lines[i] for i in rows])


def partner_sets(text_a, text_b):
    """Every text -> the texts it is paired with in training (either order): a re-pairing that
    gives a text one of these would reproduce a training pair."""
    partners = {}
    for a, b in zip(text_a, text_b):
        partners.setdefault(a, set()).add(b)
        partners.setdefault(b, set()).add(a)
    return partners


def random_repairs(text_a, text_b, count, rng):
    """`count` pairs (a_i, b_j), i cycling over a seeded order, j drawn at random among the pairs whose b
    is neither a_i nor one of a_i's training partners. Returns the index pairs `[(i, j)]`."""
    n = len(text_a)
    partners = partner_sets(text_a, text_b)
    rows = np.concatenate([rng.permutation(n) for _ in range(-(-count // n))])[:count] if count else []
    out = []
    for i in rows:
        bad = partners[text_a[i]] | {text_a[i]}
        for _ in range(1000):  # a text paired with nearly every other one is left out
            j = int(rng.integers(n))
            if text_b[j] not in bad:
                out.append((int(i), j))
                break
    return out


def nearest_other(queries, query_texts, keys, key_texts, partners, chunk=1024):
    """For each query row, the index of the key row of highest cosine whose text is neither the query's
    own text nor one of its training partners (-1 when every key is excluded)."""
    q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    k = keys / np.maximum(np.linalg.norm(keys, axis=1, keepdims=True), 1e-12)
    by_text = {}
    for j, t in enumerate(key_texts):
        by_text.setdefault(t, []).append(j)
    out = np.full(len(q), -1, np.int64)
    for start in range(0, len(q), chunk):
        sims = q[start:start + chunk] @ k.T
        for r in range(len(sims)):
            text = query_texts[start + r]
            for t in partners.get(text, set()) | {text}:
                sims[r, by_text.get(t, [])] = -np.inf
            best = int(np.argmax(sims[r]))
            out[start + r] = best if np.isfinite(sims[r, best]) else -1
    return out


def hard_repairs(text_a, text_b, embed):
    """Both directions of hard re-pairing over the distinct texts: (a, the nearest other b) for each a,
    then (the nearest other a, b) for each b, as `[(text_a, text_b)]`; `embed(texts) -> [n, H]`."""
    ua, ub = list(dict.fromkeys(text_a)), list(dict.fromkeys(text_b))
    ea, eb = np.split(embed(ua + ub), [len(ua)])
    partners = partner_sets(text_a, text_b)
    b_of_a = nearest_other(ea, ua, eb, ub, partners)
    a_of_b = nearest_other(eb, ub, ea, ua, partners)
    return ([(a, ub[j]) for a, j in zip(ua, b_of_a) if j >= 0] +
            [(ua[j], b) for b, j in zip(ub, a_of_b) if j >= 0])


def replaceable(tokens):
    """Per vocabulary id: whether it may replace or be replaced (no special or [unusedN] token)."""
    return np.array([not (t.startswith("[") and t.endswith("]")) for t in tokens])


def embedding_neighbours(matrix, ids, k, tokens, chunk=512):
    """`{id: the k ids of highest cosine to it}` over the rows of the embedding `matrix`, among the
    replaceable ids of the same kind (a word start or a `##` continuation, so the text keeps its
    word boundaries), itself excluded; best first."""
    e = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    ok = replaceable(tokens)
    cont = np.array([t.startswith("##") for t in tokens])
    ids = [i for i in dict.fromkeys(int(i) for i in ids) if ok[i]]
    out = {}
    for start in range(0, len(ids), chunk):
        part = np.array(ids[start:start + chunk])
        sims = e[part] @ e.T
        sims[~(ok[None, :] & (cont[None, :] == cont[part][:, None]))] = -np.inf
        sims[np.arange(len(part)), part] = -np.inf
        kk = min(k, sims.shape[1] - 1)
        top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        for r, i in enumerate(part):
            order = top[r][np.argsort(-sims[r, top[r]], kind="stable")]
            out[int(i)] = [int(j) for j in order if np.isfinite(sims[r, j])]
    return out


def replace_pieces(ids, neighbours, prob, rng):
    """`ids` with each piece that has neighbours replaced, with probability `prob`, by one of them
    drawn uniformly (TinyBERT's augmentation)."""
    out = list(ids)
    for n, i in enumerate(out):
        cand = neighbours.get(int(i))
        if cand and rng.random() < prob:
            out[n] = cand[int(rng.integers(len(cand)))]
    return out


def replaced_pairs(train, rows, tokenizer, matrix, t):
    """Pairs `rows` of train with both texts' word pieces replaced (`transfer.replace_prob`, `replace_k`)."""
    raw = tokenizer.raw
    texts = sorted(set(train.text_a[i] for i in rows) | set(train.text_b[i] for i in rows))
    pieces = {s: e.ids for s, e in zip(texts, raw.encode_batch(texts, add_special_tokens=False))}
    tokens = [raw.id_to_token(i) or "" for i in range(matrix.shape[0])]
    neighbours = embedding_neighbours(matrix, [i for p in pieces.values() for i in p], t.replace_k, tokens)
    rng = np.random.default_rng([t.seed, 4])
    new = lambda s: raw.decode(replace_pieces(pieces[s], neighbours, t.replace_prob, rng))  # noqa: E731
    a = [new(train.text_a[i]) for i in rows]
    b = [new(train.text_b[i]) for i in rows]
    return pair_data(a, b, train.path, [train.lines[i] for i in rows])


def read_unlabeled(cfg):
    """`transfer.unlabeled` read as `data.format` / `data.text_a` / `data.text_b` say, labels ignored."""
    path, d = cfg.transfer.unlabeled, cfg.data
    try:
        pairs = read_pairs(path, format=d.format, text_a=d.text_a, text_b=d.text_b, label=None,
                           on_bad_row=d.on_bad_row)
    except (DataError, OSError) as e:
        raise DataError(f"transfer.unlabeled={path}: {e}") from None
    if not len(pairs):
        raise DataError(f"transfer.unlabeled={path}: no usable rows")
    return pair_data(pairs.text_a, pairs.text_b, str(path), pairs.lines)


# ----------------------------------------------------------------------------- all together
def active_sources(t):
    return (["unlabeled"] if t.unlabeled else []) + list(t.sources)


def shares(t, n_gold):
    """`{source: pairs asked of it}`: `transfer.ratio` x the gold pairs, capped at `transfer.max_pairs`,
    in equal shares (the first sources take the remainder)."""
    names = active_sources(t)
    total = int(round(t.ratio * n_gold))
    if t.max_pairs is not None:
        total = min(total, t.max_pairs)
    per, extra = divmod(total, len(names)) if names else (0, 0)
    return {s: per + (k < extra) for k, s in enumerate(names)}


def _take(pool_size, count, rng):
    """`count` distinct rows of a pool of `pool_size`, a seeded draw, in pool order."""
    return np.sort(rng.permutation(pool_size)[:count])


def build_transfer(cfg, train, encoder=None):
    """The transfer pairs of `cfg.transfer` over the gold `train` pairs, and what was built per source.

    `encoder`: `(tokenizer, encoder)`, the student's initial encoder, for `hard` and `replace`.
    Returns `(PairData, {"pairs": {source: count}, "seconds": ...})`.
    """
    t, start = cfg.transfer, time.time()
    asked = shares(t, len(train))
    parts, counts = [], {}
    rng = lambda k: np.random.default_rng([t.seed, k])  # noqa: E731  (one stream per source)
    for source, count in asked.items():
        if source == "unlabeled":
            pool = read_unlabeled(cfg)
            part = pool if count >= len(pool) else _subset(pool, _take(len(pool), count, rng(0)))
        elif source == "swap":
            part = swapped(train, _take(len(train), count, rng(1)))
        elif source == "random":
            idx = random_repairs(train.text_a, train.text_b, count, rng(2))
            part = pair_data([train.text_a[i] for i, _ in idx], [train.text_b[j] for _, j in idx], train.path,
                             [train.lines[i] for i, _ in idx])
        elif source == "hard":
            tok, enc = encoder
            pool = hard_repairs(train.text_a, train.text_b, lambda texts: mean_embeddings(
                enc, tok, texts, cfg.train.max_seq_len, cfg.train.eval_batch_size))
            rows = _take(len(pool), count, rng(3))
            part = pair_data([pool[i][0] for i in rows], [pool[i][1] for i in rows], train.path)
        else:  # replace
            tok, enc = encoder
            n = len(train)
            rows = np.concatenate([rng(5).permutation(n) for _ in range(-(-count // n))])[:count] if count else []
            part = replaced_pairs(train, [int(i) for i in rows], tok, input_embeddings(enc), t)
        parts.append(part)
        counts[source] = len(part)
    out = concat_pairs(pair_data([], [], train.path), parts)
    info = {"sources": active_sources(t), "pairs": counts, "build_seconds": round(time.time() - start, 1)}
    if t.unlabeled:
        info["unlabeled"] = str(t.unlabeled)
    log.info("transfer pairs: %s (%.1fs)", counts, time.time() - start)
    return out, info


def _subset(pairs, rows):
    return pair_data([pairs.text_a[i] for i in rows], [pairs.text_b[i] for i in rows], pairs.path,
                     [pairs.lines[i] for i in rows])


def input_embeddings(encoder):
    """The encoder's input (word-piece) embedding matrix as a numpy array [V, H]."""
    return np.asarray(encoder.word_embeddings.embeddings.numpy(), np.float32)


def mean_embeddings(encoder, tokenizer, texts, max_len, batch_size):
    """Mean-pooled last-layer states of `[CLS] t [SEP]` for each text: [n, H] (float32)."""
    import tensorflow as tf

    from modeling.encoder import pool
    from training.trainer import predict_outputs

    fn = tf.function(lambda x: pool(encoder(x, training=False)["last_hidden_state"], x["attention_mask"], "mean"),
                     reduce_retracing=True)
    feats = {"input_ids": tokenizer.encode_texts(texts, max_len)}
    return predict_outputs(None, feats, batch_size, fn=fn).astype(np.float32)


def student_encoder(model_cfg, train, run_dir):
    """`(tokenizer, encoder)` of the student's initial encoder (`model_cfg`: the student's model
    configuration), loaded for the embedding-based sources only."""
    if model_cfg.init is None:
        log.warning("transfer.sources hard/replace: the student's initial encoder is random (model.init=null), "
                    "its embeddings' neighbours carry no meaning")
    encoder, tokenizer = init_encoder(model_cfg, train.text_a + train.text_b, run_dir)
    return tokenizer, encoder


def add_transfer(cfg, splits, model_cfg, run_dir):
    """`(splits, hard_weight, info)`: train followed by `cfg.transfer`'s pairs (None when it is off)."""
    if not active_sources(cfg.transfer):
        return splits, None, None
    encoder = None
    if set(cfg.transfer.sources) & set(EMBED_SOURCES):
        encoder = student_encoder(model_cfg, splits.train, run_dir)
    transfer, info = build_transfer(cfg, splits.train, encoder)
    if not len(transfer):
        raise DataError(f"transfer: no pairs built from {info['sources']} (transfer.ratio={cfg.transfer.ratio}, "
                        f"transfer.max_pairs={cfg.transfer.max_pairs})")
    splits, weight = with_transfer(splits, transfer)
    return splits, weight, info
