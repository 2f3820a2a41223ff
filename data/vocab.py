"""Build a BERT ``vocab.txt`` from training texts, for models trained from scratch.

``lang="zh"``: character vocabulary like Google's Chinese BERT: the texts are split
exactly as ``BertTokenizerFast(do_lower_case=True, tokenize_chinese_chars=True)`` splits
them before WordPiece (one token per CJK character; lowercased ASCII words, numbers and
punctuation split off), tokens kept when seen >= min_freq times, most frequent first.
Each word's characters are also counted as "c" / "##c" pieces, so a word too rare to be
a token is spelled out instead of becoming [UNK].

``lang="en"``: WordPiece trained with the ``tokenizers`` library (lowercased, BERT
normalisation), ``vocab_size`` default 8000.

Both start with ``[PAD] [UNK] [CLS] [SEP] [MASK]`` (so [PAD] has id 0).
"""
from __future__ import annotations

import collections
from pathlib import Path

__all__ = ["build_vocab", "SPECIAL_TOKENS"]

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _bert_split():
    """The normaliser + pre-tokenizer pair of BertTokenizerFast (lowercase, split CJK)."""
    from tokenizers import normalizers, pre_tokenizers
    norm = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                      strip_accents=None, lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    return lambda text: [w for w, _ in pre.pre_tokenize_str(norm.normalize_str(text))]


def _char_vocab(texts, min_freq, vocab_size):
    split = _bert_split()
    counts = collections.Counter()
    for text in texts:
        for word in split(text):
            counts[word] += 1
            if len(word) > 1:
                counts[word[0]] += 1
                counts.update("##" + c for c in word[1:])
    for t in SPECIAL_TOKENS:
        counts.pop(t.lower(), None)
    # Frequency, then the token itself: the same texts always give the same file.
    tokens = sorted((t for t, n in counts.items() if n >= min_freq), key=lambda t: (-counts[t], t))
    if vocab_size is not None:
        tokens = tokens[:max(0, vocab_size - len(SPECIAL_TOKENS))]
    return list(SPECIAL_TOKENS) + tokens


def _wordpiece_vocab(texts, min_freq, vocab_size):
    from tokenizers import BertWordPieceTokenizer
    tok = BertWordPieceTokenizer(clean_text=True, handle_chinese_chars=True,
                                 strip_accents=None, lowercase=True)
    tok.train_from_iterator(texts, vocab_size=vocab_size or 8000, min_frequency=min_freq,
                            special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    vocab = tok.get_vocab()
    return sorted(vocab, key=vocab.get)


def build_vocab(texts, out_path, lang="zh", min_freq=2, vocab_size=None) -> Path:
    """Write a BERT vocab.txt built from ``texts`` (an iterable of str) to ``out_path``.
    ``vocab_size`` caps the total size, special tokens included (en default: 8000)."""
    if lang not in ("zh", "en"):
        raise ValueError(f"lang must be 'zh' or 'en', not {lang!r}")
    texts = list(texts)
    if not texts:
        raise ValueError("build_vocab needs at least one text")
    tokens = (_char_vocab if lang == "zh" else _wordpiece_vocab)(texts, min_freq, vocab_size)
    assert list(tokens[:len(SPECIAL_TOKENS)]) == list(SPECIAL_TOKENS), tokens[:8]
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    return out
