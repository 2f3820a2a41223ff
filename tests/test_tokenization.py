"""PairTokenizer: pair layout, truncation, VIRT ids, CJK splitting, vocabulary errors."""

import re

import pytest

from modeling.tokenization import PairTokenizer, TokenizerError

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "big", "red", "fast", "today",
         ".", "?", "##s", "我", "爱", "北", "京", "天", "安", "门"]


@pytest.fixture
def vocab_file(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(SPECIALS + WORDS) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def tok(vocab_file):
    return PairTokenizer(vocab_file)


def ids_of(*tokens):
    vocab = SPECIALS + WORDS
    return [vocab.index(t) for t in tokens]


def test_pair_layout_and_segment_ids(tok):
    enc = tok.encode_pairs(["The Cat sat"], ["a dog ran"], max_len=32)
    assert enc["input_ids"] == [ids_of("[CLS]", "the", "cat", "sat", "[SEP]", "a", "dog", "ran", "[SEP]")]
    assert enc["token_type_ids"] == [[0] * 5 + [1] * 4]


def test_single_text_layout(tok):
    assert tok.encode_texts(["a dog", "cats"], max_len=8) == [
        ids_of("[CLS]", "a", "dog", "[SEP]"), ids_of("[CLS]", "cat", "##s", "[SEP]")]


def test_longest_first_truncation_keeps_tokens_of_both_texts(tok):
    long_a = "the cat sat on the mat " * 2  # 12 tokens
    enc = tok.encode_pairs([long_a], ["a dog ran"], max_len=10)
    assert enc["input_ids"][0] == ids_of("[CLS]", "the", "cat", "sat", "on", "[SEP]",
                                         "a", "dog", "ran", "[SEP]")
    enc = tok.encode_pairs([long_a], ["a big red dog ran fast today ."], max_len=11)  # 12 + 8 tokens
    types = enc["token_type_ids"][0]
    kept_a, kept_b = types.count(0) - 2, types.count(1) - 1
    assert len(types) == 11 and kept_a + kept_b == 8 and abs(kept_a - kept_b) <= 1


def test_virt_teacher_ids_align_with_student_positions(tok):
    v = tok.encode_virt(["the cat sat", "a dog"], ["a big red dog", "the mat"], max_len=16)
    assert v["x_ids"][0] == ids_of("[CLS]", "the", "cat", "sat", "[SEP]")
    assert v["y_ids"][1] == ids_of("[CLS]", "the", "mat", "[SEP]")
    for x, y in zip(v["x_ids"], v["y_ids"]):
        ids, types = tok.teacher_ids(x, y)
        m, n = len(x), len(y) - 1
        assert len(ids) == len(types) == m + n
        assert ids[:m] == x
        for j in range(n):
            assert ids[m + j] == y[j + 1]
        assert types == [0] * m + [1] * n
        assert ids.count(tok.cls_id) == 1 and ids[-1] == tok.sep_id


def test_chinese_is_split_per_character(tok):
    assert tok.tokenize("我爱北京天安门") == list("我爱北京天安门")
    assert tok.tokenize("我爱the cat") == ["我", "爱", "the", "cat"]
    assert tok.encode_texts(["北京"], max_len=8) == [ids_of("[CLS]", "北", "京", "[SEP]")]


def test_unknown_characters_become_unk(tok):
    assert tok.encode_texts(["我爱火星", "zebra"], max_len=16) == [
        ids_of("[CLS]", "我", "爱", "[UNK]", "[UNK]", "[SEP]"), ids_of("[CLS]", "[UNK]", "[SEP]")]


def test_vocab_without_cls_is_rejected_naming_the_file(tmp_path):
    path = tmp_path / "bad_vocab.txt"
    path.write_text("\n".join(["[PAD]", "[UNK]", "[SEP]", "the"]) + "\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match=re.escape(str(path))) as err:
        PairTokenizer(path)
    assert "[CLS]" in str(err.value)


def test_missing_vocab_file_is_rejected(tmp_path):
    with pytest.raises(TokenizerError, match="not found"):
        PairTokenizer(tmp_path / "nope" / "vocab.txt")


@pytest.mark.parametrize("lowercase", [True, False])
def test_the_tokenizers_pipeline_is_transformers_bert_tokenizer(vocab_file, lowercase):
    """The tokenizer is built with `tokenizers` alone (a server of an export has no transformers), as
    transformers' BertTokenizerFast builds it: the same serialised pipeline (vocabulary, normaliser,
    pre-tokeniser, special tokens, post-processor, decoder), hence the same ids."""
    import json
    import sys

    tok = PairTokenizer(vocab_file, lowercase=lowercase)
    assert "transformers" not in sys.modules or tok._hf is None  # not built until asked for
    assert json.loads(tok.raw.to_str()) == json.loads(tok.hf.backend_tokenizer.to_str())
