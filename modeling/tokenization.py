"""WordPiece tokenisation of text pairs, for cross-encoders, siamese models and VIRT.

A thin layer over `transformers.BertTokenizerFast` built from a `vocab.txt`, so
the same file drives Python training and the in-graph tokeniser of exports.
Outputs are ragged (lists of ids); batches are padded later, per batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def pad_ids(rows, pad_id=0):
    """Ragged id lists -> `ids` [B, longest] int32 padded with `pad_id`, and its 0/1 `mask`."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
        mask[i, :len(r)] = 1
    return ids, mask


class TokenizerError(ValueError):
    """The vocabulary cannot be used or a text cannot be encoded."""


class PairTokenizer:
    """Encodes single texts, `[CLS] a [SEP] b [SEP]` pairs and VIRT's split layout.

    Args:
        vocab_file: BERT `vocab.txt` (one token per line; id = line number).
        lowercase: lower-case and strip accents before WordPiece (uncased models).

    Example:
    >>> tok = PairTokenizer("vocab.txt")                        # doctest: +SKIP
    >>> tok.encode_pairs(["hi there"], ["hello"], max_len=16)   # doctest: +SKIP
    {'input_ids': [[101, 7632, 2045, 102, 7592, 102]], 'token_type_ids': [[0, 0, 0, 0, 1, 1]]}
    """

    def __init__(self, vocab_file, lowercase=True):
        from transformers import BertTokenizerFast

        self.vocab_file = str(vocab_file)
        self.lowercase = bool(lowercase)
        path = Path(vocab_file)
        if not path.is_file():
            raise TokenizerError(f"{vocab_file}: vocabulary file not found")
        vocab = path.read_text(encoding="utf-8").splitlines()
        missing = [t for t in SPECIAL_TOKENS[:4] if t not in vocab]
        if missing:
            raise TokenizerError(f"{vocab_file}: vocabulary lacks special tokens {missing}")
        # transformers 5 takes `vocab=`; its old `vocab_file=` is silently ignored.
        self.hf = BertTokenizerFast(vocab=self.vocab_file, do_lower_case=self.lowercase,
                                    tokenize_chinese_chars=True, strip_accents=None)
        self.vocab_size = len(vocab)
        if len(self.hf) < self.vocab_size - len(vocab) + len(set(vocab)):
            raise TokenizerError(f"{vocab_file}: tokenizer read {len(self.hf)} of {self.vocab_size} tokens")
        self.pad_id = self.hf.convert_tokens_to_ids("[PAD]")
        self.cls_id = self.hf.convert_tokens_to_ids("[CLS]")
        self.sep_id = self.hf.convert_tokens_to_ids("[SEP]")
        self.unk_id = self.hf.convert_tokens_to_ids("[UNK]")
        self.mask_id = self.hf.convert_tokens_to_ids("[MASK]") if "[MASK]" in vocab else self.unk_id

    def tokenize(self, text):
        return self.hf.tokenize(text)

    def encode_texts(self, texts, max_len):
        """Texts -> `[CLS] t [SEP]` id lists, each at most `max_len` long."""
        enc = self.hf(list(texts), truncation=True, max_length=max_len, add_special_tokens=True)
        return enc["input_ids"]

    def encode_pairs(self, texts_a, texts_b, max_len):
        """Pairs -> `[CLS] a [SEP] b [SEP]` ids and segment ids (0 for a, 1 for b).

        Truncation is longest-first, so both texts keep tokens.
        """
        enc = self.hf(list(texts_a), list(texts_b), truncation="longest_first",
                      max_length=max_len, add_special_tokens=True, return_token_type_ids=True)
        return {"input_ids": enc["input_ids"], "token_type_ids": enc["token_type_ids"]}

    def encode_virt(self, texts_a, texts_b, max_len):
        """VIRT's layout: `ids_x = [CLS] x [SEP]`, `ids_y = [CLS] y [SEP]`, each <= max_len.

        The teacher sees `ids_x + ids_y[1:]` (see `teacher_ids`), so teacher
        position i < m is student x position i and m + j is y position j + 1.
        """
        return {"x_ids": self.encode_texts(texts_a, max_len), "y_ids": self.encode_texts(texts_b, max_len)}

    @staticmethod
    def teacher_ids(x_ids, y_ids):
        """One example's contiguous teacher input: ids and segment ids."""
        ids = list(x_ids) + list(y_ids[1:])
        return ids, [0] * len(x_ids) + [1] * (len(y_ids) - 1)

    def decode_tokens(self, ids):
        return self.hf.convert_ids_to_tokens([i for i in ids if i != self.pad_id])
