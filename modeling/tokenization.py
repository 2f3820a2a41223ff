"""WordPiece tokenisation of text pairs, for cross-encoders, siamese models and VIRT.

A thin layer over a `tokenizers` WordPiece pipeline built from a `vocab.txt` as transformers'
BertTokenizerFast builds it (no transformers or TensorFlow import: the server needs neither), so
the same file drives Python training and the in-graph tokeniser of exports.
Outputs are ragged (lists of ids); batches are padded later, per batch.

Long texts are cut before they reach the tokenizer (`PairTokenizer.pieces`): its pair
truncation builds every combination of the two texts' overflow windows, so memory and time
grew with the product of the lengths (+640 MB for a pair of 4,000 CJK characters a side
at max_len 64). Truncation is done here instead, as tokenizers' LongestFirst does it, on a
prefix of each text that is known to hold all the tokens that can be kept.
"""

from __future__ import annotations

import re
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


# A text may be cut just before one of these characters without changing any token in front of
# the cut, whatever the Unicode tables of the tokenizer: each one ends a word (ASCII whitespace,
# ASCII punctuation, the CJK ideographs of Unicode 1.1) and is a starter, so no combining mark
# after it can move in front of it under NFD. ']' is left out: it ends special-token literals
# such as "[SEP]", which are matched in the raw text.
CUT_BEFORE = re.compile(r"[\t\n\r !-/:-@\[\\^_`{-~\u4e00-\u9fa5]")
# A run of ASCII whitespace separates words as one space does (the normaliser maps each to a
# space, the pre-tokeniser drops them): collapsed first, so such runs cost no tokenising.
SPACES = re.compile(r"[\t\n\r ]{2,}")


def longest_first(na, nb, budget, a_longer):
    """Tokens kept of two texts of `na`, `nb` tokens: tokenizers' LongestFirst truncation
    (utils/truncation.rs) to `budget` tokens. `a_longer`: the first text is strictly the
    longer, which decides who gets the odd token when both must be cut."""
    if na + nb <= budget:
        return na, nb
    n1, n2 = (nb, na) if a_longer else (na, nb)  # n1: the shorter text's
    n2 = n1 if n1 > budget else max(n1, budget - n1)
    if n1 + n2 > budget:
        n1, n2 = budget // 2, budget // 2 + budget % 2
    if a_longer:
        n1, n2 = n2, n1
    return min(na, n1), min(nb, n2)


# Bump when the ids of a text can change (the pair truncation of 2026-12-02 changed some):
# cached token ids (<out>/.cache/tokens, or train.cache_dir) are keyed by it, so a stale cache is never read.
IDS_VERSION = 2


def bert_wordpiece(vocab_file, lowercase):
    """A BERT WordPiece `tokenizers.Tokenizer` built as transformers 5's BertTokenizerFast builds it
    (models/bert/tokenization_bert.py): no truncation or padding, the special tokens matched in raw text."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    tok = Tokenizer(WordPiece.from_file(str(vocab_file), unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                                lowercase=bool(lowercase))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tok


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
        self.vocab_file = str(vocab_file)
        self.lowercase = bool(lowercase)
        path = Path(vocab_file)
        if not path.is_file():
            raise TokenizerError(f"{vocab_file}: vocabulary file not found")
        try:
            vocab = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:  # the codec's message names no file
            raise TokenizerError(f"{vocab_file}: not a UTF-8 vocabulary file (byte {e.object[e.start]:#04x} at "
                                 f"offset {e.start}); vocab.txt holds one token per line") from None
        missing = [t for t in SPECIAL_TOKENS[:4] if t not in vocab]
        if missing:
            raise TokenizerError(f"{vocab_file}: vocabulary lacks special tokens {missing}")
        # Built with `tokenizers` alone, so a server needs neither transformers nor TensorFlow;
        # the same pipeline as transformers' BertTokenizerFast (tests/test_tokenization.py compares them).
        self.raw = bert_wordpiece(self.vocab_file, self.lowercase)
        self.vocab_size = len(vocab)
        if self.raw.get_vocab_size(with_added_tokens=True) < self.vocab_size - len(vocab) + len(set(vocab)):
            raise TokenizerError(f"{vocab_file}: tokenizer read {self.raw.get_vocab_size(with_added_tokens=True)} of "
                                 f"{self.vocab_size} tokens")
        self.pad_id = self.raw.token_to_id("[PAD]")
        self.cls_id = self.raw.token_to_id("[CLS]")
        self.sep_id = self.raw.token_to_id("[SEP]")
        self.unk_id = self.raw.token_to_id("[UNK]")
        self.mask_id = self.raw.token_to_id("[MASK]") if "[MASK]" in vocab else self.unk_id
        self._hf = None

    @property
    def hf(self):
        """transformers' BertTokenizerFast on the same vocabulary (tests compare with it; never the server)."""
        if self._hf is None:
            from transformers import BertTokenizerFast

            # transformers 5 takes `vocab=`; its old `vocab_file=` is silently ignored.
            self._hf = BertTokenizerFast(vocab=self.vocab_file, do_lower_case=self.lowercase,
                                         tokenize_chinese_chars=True, strip_accents=None)
        return self._hf

    def tokenize(self, text):
        return self.raw.encode(text, add_special_tokens=False).tokens

    def pieces(self, texts, need):
        """Texts -> (ids, complete) each: the word-piece ids (no special tokens) of the whole
        text (complete) or of a prefix that holds at least the text's first `need` tokens.

        The first prefix ends before a `CUT_BEFORE` character at or after `need` characters
        (a token covers at least one). While a prefix yields fewer than `need` tokens it is
        lengthened by the characters per token seen so far (at least doubled): English
        needs about 4.5 characters a token, a word of over 100 characters is one [UNK], and
        stripped accents or control characters make none. A first cut from the longest
        vocabulary piece (19 characters a token for MiniLM) would tokenise 19 times what is
        kept of a CJK text, one token a character: 3 s for 256 pairs of 2,000 characters.
        So the cost follows `need`, not the text's length.
        """
        texts = [t if len(t) <= need else SPACES.sub(" ", t) for t in texts]
        out, todo, chars = [None] * len(texts), list(range(len(texts))), [max(need, 1)] * len(texts)
        while todo:
            cuts = [CUT_BEFORE.search(texts[i], chars[i]) if len(texts[i]) > chars[i] else None for i in todo]
            encs = self.raw.encode_batch([texts[i][:m.start()] if m else texts[i] for i, m in zip(todo, cuts)],
                                         add_special_tokens=False)
            later = []
            for i, m, e in zip(todo, cuts, encs):
                ids = e.ids
                if m and len(ids) < need:
                    later.append(i)
                    chars[i] = max(2 * chars[i], int(1.25 * m.start() * need / max(len(ids), 1)))
                else:
                    out[i] = (ids, m is None)
            todo = later
        return out

    def encode_texts(self, texts, max_len):
        """Texts -> `[CLS] t [SEP]` id lists, each at most `max_len` long."""
        n = max_len - 2
        return [[self.cls_id, *ids[:n], self.sep_id] for ids, _ in self.pieces(list(texts), n)]

    def encode_pairs(self, texts_a, texts_b, max_len):
        """Pairs -> `[CLS] a [SEP] b [SEP]` ids and segment ids (0 for a, 1 for b).

        Truncation is longest-first, so both texts keep tokens. Ids equal those of the fast
        tokenizer's own truncation, except in one case: both texts have more tokens than fit
        (both over `max_len - 3`), `max_len - 3` is odd, and the text with more tokens has
        fewer characters. The odd token goes to the longer text, and when neither has been
        tokenized to its end, "longer" is judged by characters.
        """
        texts_a, texts_b = list(texts_a), list(texts_b)
        budget = max_len - 3
        ids, types = [], []
        for ta, tb, (a, a_all), (b, b_all) in zip(texts_a, texts_b, self.pieces(texts_a, budget + 1),
                                                  self.pieces(texts_b, budget + 1)):
            if a_all and b_all:
                a_longer = len(a) > len(b)
            elif a_all and len(a) < len(b):  # b has more tokens even before its cut
                a_longer = False
            elif b_all and len(b) < len(a):
                a_longer = True
            else:
                a_longer = len(ta) > len(tb)
            ka, kb = longest_first(len(a), len(b), budget, a_longer)
            ids.append([self.cls_id, *a[:ka], self.sep_id, *b[:kb], self.sep_id])
            types.append([0] * (ka + 2) + [1] * (kb + 1))
        return {"input_ids": ids, "token_type_ids": types}

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

    def convert_ids_to_tokens(self, ids):
        return [self.raw.id_to_token(int(i)) for i in ids]

    def decode_tokens(self, ids):
        return self.convert_ids_to_tokens([i for i in ids if i != self.pad_id])
