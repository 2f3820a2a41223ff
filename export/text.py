"""In-graph tokenisation that reproduces `modeling.tokenization.PairTokenizer` (HF `BertTokenizerFast`).

Used by the exported SavedModel's string signatures, so a client sends raw text and
TF Serving tokenises it exactly as training did. The pipeline, per text:

1. split off literal special tokens (`[CLS]`, `[SEP]`, ... found in the text): HF
   matches them on the raw text before normalising and maps each to its id;
2. HF's `BertNormalizer`, written with core TF / tf-text ops: clean (drop NUL, U+FFFD,
   control/format/private-use characters except \\t \\n \\r), every Unicode separator
   to a space, then, for uncased models, NFD, drop non-spacing marks (accents), lower-case;
3. tf-text's `FastBertTokenizer` (or `BertTokenizer`) on the *already normalised*
   text with its own normalisation off: whitespace/punctuation/CJK split and
   WordPiece over the same vocab list;
4. HF's longest-first truncation (its exact arithmetic, see `longest_first`), then
   `[CLS] a [SEP] b [SEP]` with segment ids and mask, padded to the longest row of
   the batch, assembled with a few dense gathers.

Why not tf-text's own lower-casing: `lower_case=True` / `lower_case_nfd_strip_accents=True`
apply NFKC case folding, which maps full-width `？，！` to ASCII `?,!`, `ß` to `ss`,
`ﬁ` to `fi`, `²` to `2`: the HF tokenizer keeps those characters, and Chinese
text is full of full-width punctuation. Why not `ShrinkLongestTrimmer`: it breaks
ties the other way (a=3, b=2 tokens, budget 3: HF keeps 2+1, the trimmer 1+2).
Why not `combine_segments` + `pad_model_inputs`: same result, but with their ragged
checks the pair tokeniser graph had ~2700 nodes (5 s to trace on a busy 2-core machine)
against ~830 with the dense assembly. Remaining differences from the
Python tokenizer are listed in docs/export.md, "Tokenisation parity".
"""

from __future__ import annotations

import re

import tensorflow as tf
import tensorflow_text as tft

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# Removed by HF's clean_text: \0, U+FFFD and control/format/private-use characters (RE2's \pC:
# Cc, Cf, Co, Cs) except \t \n \r. Unassigned code points (Cn) are kept by both.
_CLEAN = r"[^\PC\t\n\r]|\x{FFFD}"
_SPACE = r"[\t\n\r\pZ]"  # HF's is_whitespace for what survives cleaning: \t \n \r and Zs/Zl/Zp
TOKENIZERS = ("fast", "bert")


def longest_first(len_a, len_b, budget):
    """HF tokenizers' longest-first truncation of a pair to `budget` tokens, per row.

    Fits: unchanged. Else with n1 <= n2 the two lengths: the shorter keeps
    min(n1, budget // 2) and the longer the rest; on equal lengths the first
    text is the "shorter" one (so with an odd budget text b keeps one more).
    """
    budget = tf.cast(budget, len_a.dtype)
    swap = len_a > len_b
    short, long_ = tf.minimum(len_a, len_b), tf.maximum(len_a, len_b)
    short_kept = tf.minimum(short, budget // 2)
    long_kept = budget - short_kept
    fits = len_a + len_b <= budget
    keep_a = tf.where(fits, len_a, tf.where(swap, long_kept, short_kept))
    keep_b = tf.where(fits, len_b, tf.where(swap, short_kept, long_kept))
    return keep_a, keep_b


class GraphTokenizer(tf.Module):
    """Texts -> padded model inputs inside a TensorFlow graph (no Python at serving time).

    Args:
        vocab: the tokens of vocab.txt (id = position).
        lowercase: the model's uncased flag (meta["tokenizer"]["lowercase"]).
        max_len: longest output row, special tokens included (truncation like HF).
        kind: "fast" (`FastBertTokenizer`) or "bert" (`BertTokenizer`); same ids.
    """

    def __init__(self, vocab, lowercase, max_len, kind="fast", name=None):
        super().__init__(name=name)
        if kind not in TOKENIZERS:
            raise ValueError(f"tokenizer {kind!r}: expected one of {'|'.join(TOKENIZERS)}")
        if max_len < 4:
            raise ValueError(f"max_len {max_len}: a pair needs at least 4 positions")
        vocab = list(vocab)
        # HF builds a dict from the file, so a duplicated token gets its LAST line number.
        index = {t: i for i, t in enumerate(vocab)}
        missing = [t for t in SPECIAL_TOKENS[:4] if t not in index]
        if missing:
            raise ValueError(f"vocabulary lacks special tokens {missing}")
        self.lowercase, self.max_len, self.kind = bool(lowercase), int(max_len), kind
        self.pad_id, self.unk_id = index["[PAD]"], index["[UNK]"]
        self.cls_id, self.sep_id = index["[CLS]"], index["[SEP]"]
        specials = [t for t in SPECIAL_TOKENS if t in index]
        self._special_pattern = "|".join(re.escape(t) for t in specials)
        self._special_tokens = tf.constant(specials)
        self._special_ids = tf.constant([index[t] for t in specials], tf.int64)
        if kind == "fast":
            # FastBertTokenizer refuses duplicated tokens; HF keeps the last line of a duplicate,
            # so earlier copies become placeholders no text can produce (punctuation is split).
            unique = [t if index[t] == i else f"[duplicate-line-{i}]" for i, t in enumerate(vocab)]
            self._wordpiece = tft.FastBertTokenizer(
                vocab=unique, token_out_type=tf.int64, unknown_token="[UNK]",
                lower_case_nfd_strip_accents=False, support_detokenization=False)
        else:
            table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
                tf.constant(list(index)), tf.constant(list(index.values()), tf.int64)), default_value=-1)
            self._table = table
            self._wordpiece = tft.BertTokenizer(table, token_out_type=tf.int64, unknown_token="[UNK]",
                                                lower_case=False, normalization_form=None)

    # ---- text -> token ids ---------------------------------------------------
    def normalize(self, texts):
        """HF BertNormalizer(clean_text, strip_accents=lowercase, lowercase) on a string tensor."""
        s = tf.strings.regex_replace(texts, _CLEAN, "")
        s = tf.strings.regex_replace(s, _SPACE, " ")
        if self.lowercase:
            s = tft.normalize_utf8(s, "NFD")
            s = tf.strings.regex_replace(s, r"\p{Mn}", "")
            # ICU lower-cases a word-final capital sigma to ς; HF maps character by character (σ).
            s = tf.strings.regex_replace(s, "\u03a3", "\u03c3")
            s = tf.strings.lower(s, encoding="utf-8")
        return s

    def _wordpieces(self, texts):
        toks = self._wordpiece.tokenize(texts)
        return toks.merge_dims(1, -1) if toks.ragged_rank > 1 else toks  # [N, (T)]

    def token_ids(self, texts):
        """[B] strings -> ragged [B, (T)] int64 ids, no special tokens added."""
        texts = tf.convert_to_tensor(texts, tf.string)
        # regex_split stops at a NUL byte (C string); U+FFFD is removed by cleaning, as NUL is,
        # and cannot join its neighbours into a special token.
        texts = tf.strings.regex_replace(texts, r"\x00", "\uFFFD")
        pieces = tft.regex_split(texts, self._special_pattern, self._special_pattern)  # [B, (P)]
        flat = pieces.flat_values  # [NP]
        toks = self._wordpieces(self.normalize(flat))  # [NP, (T)]
        hit = tf.equal(flat[:, None], self._special_tokens[None, :])  # [NP, S]
        is_special = tf.reduce_any(hit, axis=1)
        nrows = tf.shape(flat, out_type=tf.int64)[0]
        rowids = toks.value_rowids()
        keep = tf.gather(~is_special, rowids)
        words = tf.RaggedTensor.from_value_rowids(tf.boolean_mask(toks.values, keep),
                                                  tf.boolean_mask(rowids, keep), nrows=nrows,
                                                  validate=False)
        special = tf.RaggedTensor.from_value_rowids(
            tf.gather(self._special_ids, tf.argmax(tf.cast(hit, tf.int32), axis=1))[is_special],
            tf.where(is_special)[:, 0], nrows=nrows, validate=False)
        per_piece = tf.concat([words, special], axis=1)  # a piece is either words or one special token
        return pieces.with_flat_values(per_piece).merge_dims(1, 2)  # [B, (T)]

    # ---- model inputs --------------------------------------------------------
    def _dense(self, rt):
        """Ragged [B, (T)] -> dense [B, T + 1] (one extra pad column: never zero-width)."""
        dense = rt.to_tensor(default_value=self.pad_id)
        return tf.pad(dense, [[0, 0], [0, 1]], constant_values=self.pad_id)

    def _assemble(self, segments):
        """`[CLS] s1 [SEP] s2 [SEP] ...` from (dense ids, kept length) per segment, padded
        to the longest row: input_ids, token_type_ids (segment index), attention_mask."""
        starts, start = [], tf.ones_like(segments[0][1])  # position after [CLS]
        for _, keep in segments:
            starts.append(start)
            start = start + keep + 1
        total = start  # [CLS] + sum(keep + [SEP])
        width = tf.reduce_max(tf.concat([total, tf.constant([0], total.dtype)], 0))
        pos = tf.range(width, dtype=total.dtype)[None, :]  # [1, W]
        ids = tf.fill(tf.shape(pos + total[:, None]), tf.constant(self.pad_id, tf.int64))
        types = tf.zeros_like(ids)
        ids = tf.where(pos == 0, tf.constant(self.cls_id, tf.int64), ids)
        for i, ((dense, keep), s0) in enumerate(zip(segments, starts)):
            rel = pos - s0[:, None]  # position inside segment i
            idx = tf.clip_by_value(rel, 0, tf.cast(tf.shape(dense)[1] - 1, rel.dtype))
            tokens = tf.gather(dense, idx, batch_dims=1)
            inside = (rel >= 0) & (rel < keep[:, None])
            ids = tf.where(inside, tokens, ids)
            ids = tf.where(rel == keep[:, None], tf.constant(self.sep_id, tf.int64), ids)
            types = tf.where((rel >= 0) & (rel <= keep[:, None]), tf.constant(i, tf.int64), types)
        mask = pos < total[:, None]
        return {"input_ids": tf.cast(ids, tf.int32), "token_type_ids": tf.cast(types, tf.int32),
                "attention_mask": tf.cast(mask, tf.int32)}

    def encode_pairs(self, texts_a, texts_b):
        """`[CLS] a [SEP] b [SEP]` -> dict input_ids, token_type_ids, attention_mask (int32 [B, T])."""
        n = tf.shape(texts_a, out_type=tf.int64)[0]
        both = self.token_ids(tf.concat([texts_a, texts_b], 0))  # one tokeniser pass for a and b
        a, b = both[:n], both[n:]
        keep_a, keep_b = longest_first(a.row_lengths(), b.row_lengths(), self.max_len - 3)
        return self._assemble([(self._dense(a), keep_a), (self._dense(b), keep_b)])

    def encode_texts(self, texts):
        """`[CLS] t [SEP]` -> dict input_ids, attention_mask (int32 [B, T])."""
        t = self.token_ids(texts)
        out = self._assemble([(self._dense(t), tf.minimum(t.row_lengths(), self.max_len - 2))])
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}
