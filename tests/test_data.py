"""Tests for the data package: readers, the smoke-test sample generator, vocab builders."""
import collections
import csv
import time
from pathlib import Path

import pytest

from data import (DataError, PairData, build_vocab, clean_text, label_map, make_sample,
                  read_pairs, swap_augment)
from data import sample as sample_mod

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def write(path, text, newline="\n", encoding="utf-8"):
    """Write text with the given line ending (the text itself uses \\n)."""
    path.write_bytes(text.replace("\n", newline).encode(encoding))
    return path


# ---------------------------------------------------------------- formats and presets

def test_csv_custom_columns_and_string_labels(tmp_path):
    f = write(tmp_path / "nli.csv", "premise,hypothesis,gold\n"
                                    "A man sleeps.,A person rests.,ENTAILMENT\n"
                                    "A dog runs.,A cat sleeps.,CONTRADICTION\n")
    p = read_pairs(f, text_a="premise", text_b="hypothesis", label="gold")
    assert isinstance(p, PairData) and len(p) == 2
    assert p.text_a == ["A man sleeps.", "A dog runs."]
    assert p.labels == ["ENTAILMENT", "CONTRADICTION"]
    assert p.lines == [2, 3] and p.path == str(f) and p.skipped == 0


def test_csv_without_label_column_is_for_predict(tmp_path):
    f = write(tmp_path / "x.csv", "sentence1,sentence2\nhello,hi\n")
    assert read_pairs(f).labels is None
    with pytest.raises(DataError, match="column 'label' not found"):
        read_pairs(f, labels=["0", "1"])  # labels given: a label column is required
    f2 = write(tmp_path / "y.csv", "sentence1,sentence2,label\nhello,hi,1\n")
    assert read_pairs(f2, label=None).labels is None


def test_bq_crlf_quotes_and_control_chars(tmp_path):
    f = write(tmp_path / "train.csv",
              'sentence1,sentence2,label\n'
              '"""借款失败""了解",微粒失败原因,1\n'
              '\x08在钱包找不到微粒贷,开通微粒贷,0\n'
              '为什么总是在审核,\u200d审核什么,0\n'
              '"之前还款了,为什么不能借",\u202d额度\u202c,1\n', newline="\r\n")
    for fmt in ("bq", "auto", "csv"):
        p = read_pairs(f, format=fmt)
        assert len(p) == 4 and p.skipped == 0
        assert p.text_a == ['"借款失败"了解', "在钱包找不到微粒贷", "为什么总是在审核",
                            "之前还款了,为什么不能借"]
        assert p.text_b[2:] == ["审核什么", "额度"]
        assert p.labels == ["1", "0", "0", "1"] and p.lines == [2, 3, 4, 5]


def test_clean_text():
    assert clean_text("  a\tb\x08c\u200dd\r\n") == "a bcd"
    assert clean_text("\u3000全角\u3000") == "全角"
    assert clean_text("plain") == "plain"


def test_tsv_header_quotes_are_plain_characters(tmp_path):
    f = write(tmp_path / "x.tsv", 'sentence1\tsentence2\tlabel\n'
                                  'He said "hi\tShe said "bye"\t0\n')
    p = read_pairs(f)
    assert p.text_a == ['He said "hi'] and p.text_b == ['She said "bye"'] and p.lines == [2]


def test_lcqmc_no_header(tmp_path):
    f = write(tmp_path / "train.txt", "喜欢打篮球的男生喜欢什么样的女生\t爱打篮球的男生喜欢什么样的女生\t1\n"
                                      "我手机丢了，我想换个手机\t我想买个新手机，求推荐\t1\n")
    p = read_pairs(f, format="lcqmc")
    assert len(p) == 2 and p.labels == ["1", "1"] and p.lines == [1, 2]
    f2 = write(tmp_path / "test.txt", "a b\tc d\n")
    p2 = read_pairs(f2, format="lcqmc")
    assert p2.labels is None and p2.text_b == ["c d"]


def test_afqmc_and_jsonl(tmp_path):
    f = write(tmp_path / "train.json",
              '{"sentence1": "蚂蚁借呗等额还款可以换成先息后本吗", "sentence2": "借呗有先息到期还本吗", "label": "0"}\n'
              '\n'
              '{"sentence1": "花呗怎么开通", "sentence2": "怎样开通花呗", "label": 1}\n')
    for fmt in ("afqmc", "auto", "jsonl"):
        p = read_pairs(f, format=fmt)
        assert p.labels == ["0", "1"] and p.lines == [1, 3]
    g = write(tmp_path / "x.jsonl", '{"q": "a", "d": "b", "y": "yes"}\n')
    p = read_pairs(g, text_a="q", text_b="d", label="y")
    assert (p.text_a, p.text_b, p.labels) == (["a"], ["b"], ["yes"])
    h = write(tmp_path / "predict.jsonl", '{"sentence1": "a", "sentence2": "b"}\n')
    assert read_pairs(h).labels is None


MRPC = ("\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        '1\t702876\t702977\tAmrozi accused his brother, whom he called "the witness", of '
        'deliberately distorting his evidence.\tReferring to him as only "the witness", Amrozi '
        'accused his brother of deliberately distorting his evidence.\n'
        "0\t2108705\t2108831\tYucaipa owned Dominick's before selling the chain.\t"
        'Yucaipa bought Dominick\'s "in 1995".\n'
        "0\t-1\t-1\tI like green apples.\tI don't like green apples.\n")


@pytest.mark.parametrize("name,fmt", [("train.tsv", "mrpc"), ("train.tsv", "auto"),
                                      ("msr_paraphrase_train.txt", "auto")])
def test_mrpc_raw_release(tmp_path, name, fmt):
    f = write(tmp_path / name, MRPC, newline="\r\n")
    p = read_pairs(f, format=fmt)
    assert len(p) == 2 and p.labels == ["1", "0"] and p.lines == [2, 3]
    assert p.text_a[0].startswith('Amrozi accused his brother, whom he called "the witness"')
    assert p.text_b[1] == 'Yucaipa bought Dominick\'s "in 1995".'
    assert p.skipped == 1 and p.skip_reasons == {"bogus row (id -1)": 1}


# ---------------------------------------------------------------- bad rows

HEADER = "sentence1,sentence2,label\n"


@pytest.mark.parametrize("body,where,reason", [
    ("a,b,1\nc,,0\n", 3, "empty text in column 'sentence2'"),
    ("a,b,1\n   ,d,0\n", 3, "empty text in column 'sentence1'"),
    ("a,b,1\nc,d,\n", 3, "missing label in column 'label'"),
    ("a,b,1\nc,d,NaN\n", 3, "missing label"),
    ("a,b,1\nc,d,7\n", 3, "label '7' is not one of labels ['0', '1']"),
    ("a,b,1\nc,d,1,extra\n", 3, "expected 3 fields, found 4"),
    # a quoted text spanning lines 2-3: the next row is physical line 4
    ('"multi\nline",b,1\nc,,0\n', 4, "empty text in column 'sentence2'"),
])
def test_csv_bad_row_names_file_and_line(tmp_path, body, where, reason):
    f = write(tmp_path / "train.csv", HEADER + body)
    with pytest.raises(DataError) as e:
        read_pairs(f, labels=["0", "1"])
    assert f"train.csv:{where}: " in str(e.value) and reason in str(e.value)


@pytest.mark.parametrize("name,body,where,reason", [
    ("x.tsv", "sentence1\tsentence2\tlabel\na\tb\t1\nc\td\n", 3, "expected 3 fields, found 2"),
    ("x.jsonl", '{"sentence1": "a", "sentence2": "b", "label": 1}\n{"sentence1": "a", \n', 2,
     "invalid JSON"),
    ("x.jsonl", '{"sentence1": "a", "sentence2": "b", "label": 1}\n\n{"sentence1": "a", "label": 0}\n',
     3, "missing key 'sentence2'"),
    ("x.jsonl", '{"sentence1": "a", "sentence2": "b", "label": 1}\n[1, 2]\n', 2, "not an object"),
    ("x.jsonl", "\nnot json\n", 2, "invalid JSON (Expecting value at column 1)"),
    ("x.jsonl", '{"sentence1": "a", "sentence2": "b", "label": NaN}\n', 1,
     "missing label in column 'label'"),
    ("x.jsonl", '{"sentence1": NaN, "sentence2": "b", "label": 1}\n', 1,
     "missing text in column 'sentence1'"),
    ("x.jsonl", '{"sentence1": "a", "sentence2": null, "label": 1}\n', 1,
     "missing text in column 'sentence2'"),
])
def test_tsv_jsonl_bad_rows(tmp_path, name, body, where, reason):
    f = write(tmp_path / name, body)
    with pytest.raises(DataError) as e:
        read_pairs(f)
    assert f"{name}:{where}: " in str(e.value) and reason in str(e.value)


def test_nan_text_and_label_in_csv(tmp_path):
    # the cells pandas would read as NaN: an empty label, an empty text
    f = write(tmp_path / "x.csv", HEADER + "a,b,\n,b,1\nNA,None,1\n")
    p = read_pairs(f, on_bad_row="skip")
    assert p.skip_reasons == {"missing label": 1, "empty text": 1}
    assert (p.text_a, p.text_b, p.lines) == (["NA"], ["None"], [4])  # words, not NaN


def test_skip_counts_reasons(tmp_path):
    f = write(tmp_path / "train.csv", HEADER + "a,b,1\n,b,1\nc,,0\nc,d,9\nc,d\ne,f,0\n")
    p = read_pairs(f, labels=[0, 1], on_bad_row="skip")  # int labels from a YAML config
    assert p.text_a == ["a", "e"] and p.lines == [2, 7] and p.labels == ["1", "0"]
    assert p.skipped == 4
    assert p.skip_reasons == collections.Counter(
        {"empty text": 2, "label not in labels": 1, "wrong number of fields": 1})


def test_long_text(tmp_path):
    long = "x" * 100_000
    f = write(tmp_path / "x.csv", HEADER + f"a,b,1\n{long},b,0\n")
    with pytest.raises(DataError, match=r"x.csv:3: text in column 'sentence1' has 100000 "
                                        r"characters \(max_text_chars=10000\)"):
        read_pairs(f)
    p = read_pairs(f, on_bad_row="skip")
    assert len(p) == 1 and p.skip_reasons == {"text too long": 1}
    assert read_pairs(f, max_text_chars=None).text_a[1] == long


def test_bad_on_bad_row_value(tmp_path):
    with pytest.raises(ValueError, match="on_bad_row"):
        read_pairs(tmp_path / "x.csv", on_bad_row="ignore")


# ---------------------------------------------------------------- whole-file problems

def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv: file not found"):
        read_pairs(tmp_path / "nope.csv")


@pytest.mark.parametrize("content", [b"", b"\n\r\n  \n", b"\xef\xbb\xbf"])
def test_empty_file(tmp_path, content):
    f = tmp_path / "x.csv"
    f.write_bytes(content)
    with pytest.raises(DataError, match=r"x\.csv: file is empty"):
        read_pairs(f)


@pytest.mark.parametrize("name,text", [("x.csv", HEADER), ("x.tsv", "sentence1\tsentence2\n\n")])
def test_header_only(tmp_path, name, text):
    with pytest.raises(DataError, match=r"x\.[ct]sv: no data rows \(header only\)"):
        read_pairs(write(tmp_path / name, text))


def test_missing_column_lists_columns(tmp_path):
    f = write(tmp_path / "x.csv", "q1,q2,label\na,b,1\n")
    with pytest.raises(DataError) as e:
        read_pairs(f)
    assert "x.csv:1: column 'sentence1' not found; the header has columns ['q1', 'q2', 'label']" \
        in str(e.value)


def test_missing_jsonl_key(tmp_path):
    f = write(tmp_path / "x.jsonl", '{"q1": "a", "q2": "b"}\n')
    with pytest.raises(DataError, match=r"x\.jsonl: key 'sentence1' not found in any line; "
                                        r"keys present: \['q1', 'q2'\]"):
        read_pairs(f)


def test_wrong_delimiter(tmp_path):
    tsv_named_csv = write(tmp_path / "x.csv", "sentence1\tsentence2\tlabel\na\tb\t1\n")
    with pytest.raises(DataError) as e:
        read_pairs(tsv_named_csv)
    assert ("x.csv:1: column 'sentence1' not found; the header has one column "
            "'sentence1\\tsentence2\\tlabel' — is the delimiter right?") in str(e.value)
    csv_as_tsv = write(tmp_path / "y.csv", HEADER + "a,b,1\n")
    with pytest.raises(DataError, match="is the delimiter right"):
        read_pairs(csv_as_tsv, format="tsv")


def test_not_utf8_names_the_line(tmp_path):
    f = tmp_path / "gbk.csv"
    f.write_bytes((HEADER + "a,b,1\n").encode() + "如何修改密码,怎么更改登录密码,1\n".encode("gbk"))
    with pytest.raises(DataError, match=r"gbk\.csv:3: not valid UTF-8"):
        read_pairs(f)


def test_all_rows_bad_and_unknown_format(tmp_path):
    f = write(tmp_path / "x.csv", HEADER + ",b,1\n")
    with pytest.raises(DataError, match=r"no usable rows, all 1 were skipped \(empty text: 1\)"):
        read_pairs(f, on_bad_row="skip")
    with pytest.raises(DataError, match="cannot tell the format"):
        read_pairs(write(tmp_path / "x.dat", HEADER + "a,b,1\n"))
    with pytest.raises(DataError, match="JSON array"):
        read_pairs(write(tmp_path / "x.json", '[{"sentence1": "a"}]\n'))


# ---------------------------------------------------------------- labels and augmentation

@pytest.mark.parametrize("values,labels,expected", [
    (["1", "0", "1"], None, ["0", "1"]),
    (["2", "10", "-1", "0"], None, ["-1", "0", "2", "10"]),
    (["0.5", "1", "0"], None, ["0", "0.5", "1"]),
    (["neutral", "ENTAILMENT", "contradiction"], None, ["ENTAILMENT", "contradiction", "neutral"]),
    (["1", "x", "10", "2"], None, ["1", "10", "2", "x"]),  # not all numbers: lexicographic
    (["b", "a"], ["b", "a", "c"], ["b", "a", "c"]),
    (["1", "0"], [1, 0], ["1", "0"]),
])
def test_label_map(values, labels, expected):
    assert label_map(values, labels) == expected


def test_label_map_unknown():
    with pytest.raises(DataError, match=r"unknown label values \['2', '7'\]; labels are \['0', '1'\]"):
        label_map(["0", "7", "1", "2"], ["0", "1"])
    with pytest.raises(DataError, match="no labels"):
        label_map(None)


def test_swap_augment():
    p = PairData(["a1", "a2"], ["b1", "b2"], ["1", "0"], [2, 3], "x.csv", 1,
                 collections.Counter({"empty text": 1}))
    s = swap_augment(p)
    assert s.text_a == ["a1", "a2", "b1", "b2"] and s.text_b == ["b1", "b2", "a1", "a2"]
    assert s.labels == ["1", "0", "1", "0"] and s.lines == [2, 3, 2, 3] and len(s) == 4
    assert s.skipped == 1 and p.text_a == ["a1", "a2"]  # input untouched
    assert swap_augment(PairData(["a"], ["b"], None, [1])).labels is None


# ---------------------------------------------------------------- sample generator

def test_sample_deterministic_and_balanced(tmp_path):
    t = time.perf_counter()
    a = make_sample(tmp_path / "a", n_train=2400, n_valid=300, n_test=300, seed=0)
    assert time.perf_counter() - t < 1.0
    b = make_sample(tmp_path / "b", n_train=2400, n_valid=300, n_test=300, seed=0)
    c = make_sample(tmp_path / "c", n_train=2400, n_valid=300, n_test=300, seed=1)
    assert set(a) == {"train", "valid", "test"}
    for split in a:
        assert a[split].read_bytes() == b[split].read_bytes()
        assert a[split].read_bytes() != c[split].read_bytes()
    train = read_pairs(a["train"])
    assert len(train) == 2400 and set(train.labels) == {"0", "1"}
    assert abs(train.labels.count("1") / len(train) - 0.5) < 0.05
    test = read_pairs(a["test"])
    seen = set(zip(train.text_a, train.text_b))
    assert not seen & set(zip(test.text_a, test.text_b))
    # positives and negatives look alike on the surface: same length distribution
    lengths = {y: [len(x) + len(z) for x, z, l in zip(train.text_a, train.text_b, train.labels)
                   if l == y] for y in "01"}
    mean = {y: sum(v) / len(v) for y, v in lengths.items()}
    assert abs(mean["0"] - mean["1"]) / mean["1"] < 0.1


@pytest.mark.parametrize("lang", ["zh", "mixed"])
def test_sample_languages(tmp_path, lang):
    p = read_pairs(make_sample(tmp_path, n_train=200, n_valid=10, n_test=10, lang=lang)["train"])
    cjk = sum(any("\u4e00" <= ch <= "\u9fff" for ch in t) for t in p.text_a)
    assert (cjk == 200) if lang == "zh" else (40 < cjk < 160)


def test_sample_cli(tmp_path, capsys):
    sample_mod.main(["--out", str(tmp_path), "--n-train", "20", "--n-valid", "4", "--n-test", "4"])
    assert "train:" in capsys.readouterr().out
    with open(tmp_path / "train.csv", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["sentence1", "sentence2", "label"] and len(rows) == 21


# ---------------------------------------------------------------- vocabularies

def _bert_tokenizer(vocab):
    transformers = pytest.importorskip("transformers")
    # transformers 5: the vocab is the first argument; vocab_file= is silently ignored
    # (it lands in **kwargs and you get a 5-token tokenizer).
    return transformers.BertTokenizerFast(str(vocab), do_lower_case=True,
                                          tokenize_chinese_chars=True)


def test_build_vocab_zh(tmp_path):
    texts = ["如何修改密码", "怎么更改登录密码？", "我想开户", "怎么销户", "QQ钱包开通了吗",
             "借款1000元的利息", "Hello world"] * 2 + ["罕见字龘"]
    vocab = build_vocab(texts, tmp_path / "zh" / "vocab.txt", lang="zh", min_freq=2)
    tokens = vocab.read_text(encoding="utf-8").splitlines()
    assert tokens[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert len(tokens) == len(set(tokens))
    assert {"密", "码", "qq", "1000", "？", "hello"} <= set(tokens) and "龘" not in tokens
    assert "修改" not in tokens  # one token per Chinese character
    tok = _bert_tokenizer(vocab)
    ids = tok("怎么修改登录密码？", "QQ钱包借款1000元")["input_ids"]
    assert tok.unk_token_id not in ids and tok.pad_token_id == 0
    assert tok.tokenize("QQ钱包") == ["qq", "钱", "包"]
    assert tok.tokenize("qqq") == ["qq", "##q"]  # a rare word is spelled, not [UNK]
    capped = build_vocab(texts, tmp_path / "small.txt", lang="zh", min_freq=1, vocab_size=12)
    assert len(capped.read_text(encoding="utf-8").splitlines()) == 12


def test_build_vocab_en(tmp_path):
    texts = ["How do I reset my password?", "What is the way to change my password?",
             "Open a savings account", "Close my checking account before Friday"] * 20
    vocab = build_vocab(texts, tmp_path / "vocab.txt", lang="en", vocab_size=300)
    tokens = vocab.read_text(encoding="utf-8").splitlines()
    assert tokens[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert len(tokens) <= 300 and "password" in tokens
    tok = _bert_tokenizer(vocab)
    ids = tok("How do I change my password?", "close a savings account")["input_ids"]
    assert tok.unk_token_id not in ids and tok.pad_token_id == 0


# ---------------------------------------------------------------- the real corpora

@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is absent")
def test_real_data_row_counts():
    t = time.perf_counter()
    bq = read_pairs(SHARED / "bq" / "train.csv")
    assert time.perf_counter() - t < 5.0
    assert len(bq) == 100_000 and bq.skipped == 0
    assert bq.labels.count("1") == 50_000 and bq.lines[-1] == 100_001
    assert len(read_pairs(SHARED / "bq" / "valid.csv", format="bq")) == 10_000
    assert not any("\u200d" in t or "\x08" in t for t in bq.text_a + bq.text_b)
    train = read_pairs(SHARED / "mrpc" / "train.tsv")
    assert len(train) == 4076 and train.skip_reasons == {"bogus row (id -1)": 4}
    assert label_map(train.labels) == ["0", "1"]
    assert len(read_pairs(SHARED / "mrpc" / "test.tsv", format="mrpc")) == 1725
