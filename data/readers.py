"""Read labelled sentence pairs from files, with errors that name ``file:line``.

Formats (``read_pairs(format=...)``):

``csv``    comma-separated with a header row, standard double-quote quoting (RFC 4180).
           ``text_a`` / ``text_b`` / ``label`` name the columns.
``tsv``    tab-separated with a header row, quoting OFF: ``"`` is an ordinary character,
           as in the GLUE / LCQMC / MRPC files. A text cannot contain a tab.
``jsonl``  one JSON object per line; ``text_a`` / ``text_b`` / ``label`` name the keys.
``bq``     BQ corpus: csv with header ``sentence1,sentence2,label``.
``lcqmc``  LCQMC: tsv WITHOUT a header, fields ``a, b, label`` (``a, b`` for unlabelled files).
``afqmc``  AFQMC (CLUE): jsonl with keys ``sentence1, sentence2, label``.
``mrpc``   the raw MRPC release: UTF-8 BOM, CRLF, tab-separated with quoting off, header
           ``Quality  #1 ID  #2 ID  #1 String  #2 String`` (label = Quality). Rows whose
           IDs are -1 are not part of the corpus: dropped and counted as skipped.
``auto``   the MRPC header -> ``mrpc``; else by extension: .csv, .tsv, .jsonl / .json.

Every format: UTF-8 (a BOM is ignored), any line ending. Texts are cleaned the way BERT's
tokenizer cleans them anyway (control/format characters such as U+200D or \\x08 removed,
control whitespace -> space, then stripped), so nothing the model could see is lost and a
stray control character is not an error. Labels are kept as strings exactly as read (only
stripped): "1", "ENTAILMENT"; a file without a label column gives ``labels=None``.
Line numbers are 1-based physical lines of the file (the first csv data row is line 2).
Blank lines (and csv rows whose fields are all blank) are ignored.
"""
from __future__ import annotations

import collections
import csv
import io
import json
import logging
import math
import os
import re
import stat
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from common.labels import is_number

__all__ = ["DataError", "PairData", "read_pairs", "read_header", "check_columns", "format_columns", "is_pair_file",
           "swap_augment", "label_map", "check_label_set", "clean_text", "FORMATS"]

FORMATS = ("auto", "csv", "tsv", "jsonl", "bq", "lcqmc", "afqmc", "mrpc")
_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}
_MRPC_COLUMNS = ("#1 String", "#2 String", "Quality")
# What dataframe dumps write for a missing value; as a label it can only mean "missing".
_MISSING_LABELS = frozenset({"", "nan", "NaN", "NAN", "null", "NULL", "None"})
_UNDECODED = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of bytes that are not UTF-8
_CONTROL_SPACE = frozenset("\t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\u2028\u2029")


class DataError(ValueError):
    """A problem with input data; the message starts with ``path:line:`` or ``path:``."""


@dataclass
class PairData:
    """Sentence pairs read from ``path``; ``lines[i]`` is the source line of pair ``i``."""
    text_a: list[str]
    text_b: list[str]
    labels: list[str] | None
    lines: list[int]
    path: str = ""
    skipped: int = 0
    skip_reasons: collections.Counter = field(default_factory=collections.Counter)
    columns: tuple = ()  # the text and label column names read (a label equal to one is a stray header row)

    def __len__(self) -> int:
        return len(self.text_a)


def clean_text(text: str) -> str:
    """Drop control/format characters (Unicode Cc/Cf), turn control whitespace into a
    space, strip. This is what BERT's BasicTokenizer does before tokenizing."""
    if text.isprintable():  # fast path for nearly every text
        return text.strip()
    out = []
    for ch in text:
        if ch in _CONTROL_SPACE:
            out.append(" ")
        elif unicodedata.category(ch) not in ("Cc", "Cf"):
            out.append(ch)
    return "".join(out).strip()


class _Builder:
    """Validates rows and collects them, or raises / counts bad ones."""

    def __init__(self, name, columns, has_label, labels, on_bad_row, max_text_chars, bad_bytes=False,
                 labels_name="labels"):
        self.name, self.columns, self.has_label = name, columns, has_label
        self.labels_name = labels_name  # what `labels` are, for the message of a value outside them
        self.bad_bytes = bad_bytes  # the file has bytes that are not UTF-8 (skip mode): look for them per row
        self.labels = None if labels is None else set(labels)
        self.labels_shown = labels
        self.on_bad_row, self.max_chars = on_bad_row, max_text_chars
        self.a, self.b, self.y, self.lines = [], [], [], []
        self.rows = 0
        self.skip_reasons = collections.Counter()

    def bad(self, line, reason, detail=None):
        if self.on_bad_row == "error":
            raise DataError(f"{self.name}:{line}: {detail or reason}")
        self.skip_reasons[reason] += 1

    def bad_row(self, line, reason, detail=None):
        """A row rejected before ``add`` (unparseable, wrong shape)."""
        self.rows += 1
        self.bad(line, reason, detail)

    def add(self, line, a, b, y=None):
        """Raw values: ``str``, or ``None`` when absent (JSON null / NaN included)."""
        self.rows += 1
        if self.bad_bytes and any(isinstance(v, str) and _UNDECODED.search(v) for v in (a, b, y)):
            return self.bad(line, "not valid UTF-8")
        texts = []
        for column, value in ((self.columns[0], a), (self.columns[1], b)):
            if isinstance(value, float) and math.isnan(value):
                value = None
            if value is None:
                return self.bad(line, "missing text", f"missing text in column {column!r}")
            if isinstance(value, (dict, list)):
                return self.bad(line, "text is not a string",
                                f"text in column {column!r} is not a string: {value!r:.60}")
            value = clean_text(str(value))
            if not value:
                return self.bad(line, "empty text", f"empty text in column {column!r}")
            if self.max_chars is not None and len(value) > self.max_chars:
                return self.bad(line, "text too long",
                                f"text in column {column!r} has {len(value)} characters "
                                f"(max_text_chars={self.max_chars})")
            texts.append(value)
        if self.has_label:
            if isinstance(y, float) and math.isnan(y):
                y = None
            if isinstance(y, (dict, list)):  # JSON: str() would make "[1]" a class of its own
                return self.bad(line, "label is not a single value",
                                f"label in column {self.columns[2]!r} is not a single value: {json.dumps(y):.60}")
            y = None if y is None else str(y).strip()
            if y is None or y in _MISSING_LABELS:
                return self.bad(line, "missing label",
                                f"missing label in column {self.columns[2]!r}")
            if self.labels is not None and y not in self.labels:
                return self.bad(line, "label not in labels",
                                f"label {y!r} is not one of {self.labels_name} {self.labels_shown}")
            self.y.append(y)
        self.a.append(texts[0])
        self.b.append(texts[1])
        self.lines.append(line)

    def result(self, path) -> PairData:
        if self.rows == 0:
            raise DataError(f"{self.name}: no data rows (header only)")
        if not self.a:
            counts = ", ".join(f"{r}: {n}" for r, n in self.skip_reasons.most_common())
            raise DataError(f"{self.name}: no usable rows, all {self.rows} were skipped ({counts})")
        return PairData(self.a, self.b, self.y if self.has_label else None, self.lines,
                        str(path), sum(self.skip_reasons.values()), self.skip_reasons,
                        tuple(c for c in self.columns if c is not None))


def _read_bytes(path: Path, limit: int = -1) -> bytes:
    """The file's bytes (its first `limit` only, when given), or the DataError every reader gives."""
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):  # /dev/zero: read whole, it filled the memory
                kind = "character" if stat.S_ISCHR(mode) else "block"
                raise DataError(f"{path}: a {kind} device, not a file")
            return f.read(limit)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None


def _read_text(path: Path, on_bad_row: str = "error") -> tuple[str, bool]:
    """The file's text and whether it had bytes that are not UTF-8: an error naming the first one's
    line, or with ``on_bad_row="skip"`` kept as lone surrogates that make their rows bad rows."""
    raw = _read_bytes(path)
    try:
        return _without_bom(raw.decode("utf-8"), path), False
    except UnicodeDecodeError as e:
        if on_bad_row == "skip":
            return _without_bom(raw.decode("utf-8", "surrogateescape"), path), True
        line = raw.count(b"\n", 0, e.start) + 1
        column = e.start - raw.rfind(b"\n", 0, e.start)
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte "
                        f"{column} of the line); re-save the file as UTF-8 "
                        f"(GBK / Latin-1 files are not read, data.on_bad_row=skip skips such rows)") from None


def _without_bom(text, path):
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    return text


def _lines(text):
    """(line number, line without its ending); splits on \\n, \\r\\n and \\r like csv does."""
    for number, line in enumerate(io.StringIO(text, newline=""), 1):
        yield number, line.rstrip("\r\n")


def _tsv_rows(text):
    for number, line in _lines(text):
        if line.strip():
            yield number, line.split("\t")


def _csv_rows(text, name):
    reader = csv.reader(io.StringIO(text, newline=""))
    limit = csv.field_size_limit(2**31 - 1)  # a long text is a bad row, not a parse error
    try:
        start = 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise DataError(f"{name}:{start}: CSV syntax error ({e})") from None
            if any(f.strip() for f in row):
                yield start, row
            start = reader.line_num + 1  # a quoted field may span several lines
    finally:
        csv.field_size_limit(limit)


def _shown_name(name, limit=60):
    """A column name as an error quotes it: repr, at most `limit` characters (a file of one 10 MB line
    has a 10 MB "column")."""
    return repr(name) if len(name) <= limit else f"{name[:limit]!r}... ({len(name)} characters)"


def _find_column(name, header, line, column, why=""):
    """The index of `column` in `header`, else an error naming the file, the column (`why`: where its
    name came from) and the columns found."""
    if column in header:
        return header.index(column)
    if len(header) == 1:
        hint = f"the header has one column {_shown_name(header[0])} — is the delimiter right?"
    else:
        shown = ", ".join(map(_shown_name, header[:20])) + (f", ... ({len(header)} columns)" if len(header) > 20 else "")
        hint = f"the header has columns [{shown}]"
    raise DataError(f"{name}:{line}: column {column!r}{why} not found; {hint}")


def _read_delimited(text, name, kind, columns, has_header, labels, bld_args):
    """csv / tsv / lcqmc / mrpc."""
    rows = _csv_rows(text, name) if kind == "csv" else _tsv_rows(text)
    sep_hint = "an unquoted comma in a text?" if kind == "csv" else "a tab in a text?"
    first = next(rows, None)
    if first is None:  # only blank rows
        raise DataError(f"{name}: file is empty")
    if has_header:
        line, header = first
        header = [h.strip() for h in header]
        ia = _find_column(name, header, line, columns[0])
        ib = _find_column(name, header, line, columns[1])
        if columns[2] is not None and (columns[2] in header or labels is not None):
            iy = _find_column(name, header, line, columns[2])
        else:
            iy = None
        width = len(header)
    else:
        width = len(first[1])
        if width not in (2, 3):
            raise DataError(f"{name}:{first[0]}: expected 2 or 3 tab-separated fields "
                            f"(a, b[, label]) and no header, found {width}")
        ia, ib, iy = 0, 1, (2 if width == 3 else None)
        rows = _chain(first, rows)
    ids = None
    if kind == "mrpc":
        ids = tuple(_find_column(name, header, first[0], c) for c in ("#1 ID", "#2 ID"))
    bld = _Builder(name, columns, iy is not None, labels, *bld_args)
    for line, f in rows:
        if len(f) != width:
            bld.bad_row(line, "wrong number of fields",
                    f"expected {width} fields, found {len(f)} ({sep_hint})")
        elif ids and (f[ids[0]].strip() == "-1" or f[ids[1]].strip() == "-1"):
            # MRPC's train file ends with made-up example rows (IDs -1).
            bld.rows += 1
            bld.skip_reasons["bogus row (id -1)"] += 1
        else:
            bld.add(line, f[ia], f[ib], f[iy] if iy is not None else None)
    return bld


def _chain(first, rest):
    yield first
    yield from rest


def _read_jsonl(text, name, columns, labels, bld_args):
    items, keys_seen = [], {}
    for line, s in _lines(text):
        if not s.strip():
            continue
        if not items and s.lstrip().startswith("["):
            raise DataError(f"{name}:{line}: this looks like a JSON array; expected JSON lines "
                            f"(one object per line)")
        try:
            obj = json.loads(s)
        except json.JSONDecodeError as e:
            items.append((line, f"invalid JSON ({e.msg} at column {e.colno})"))
            continue
        if not isinstance(obj, dict):
            items.append((line, f"invalid JSON (a {type(obj).__name__}, not an object)"))
            continue
        keys_seen.update(dict.fromkeys(obj))
        items.append((line, obj))
    if not items:
        raise DataError(f"{name}: file is empty")
    for key in columns[:2]:
        if keys_seen and key not in keys_seen:  # no object at all: report the first bad line
            raise DataError(f"{name}: key {key!r} not found in any line; "
                            f"keys present: {list(keys_seen)}")
    has_label = columns[2] is not None and (columns[2] in keys_seen or labels is not None)
    bld = _Builder(name, columns, has_label, labels, *bld_args)
    for line, obj in items:
        if isinstance(obj, str):
            bld.bad_row(line, "invalid JSON", obj)
            continue
        missing = [k for k in (columns if has_label else columns[:2]) if k not in obj]
        if missing:
            bld.bad_row(line, "missing key", f"missing key {missing[0]!r}")
            continue
        bld.add(line, obj[columns[0]], obj[columns[1]], obj.get(columns[2]) if has_label else None)
    return bld


def read_pairs(path, format="auto", text_a="sentence1", text_b="sentence2", label="label",
               labels=None, on_bad_row="error", max_text_chars=10000, labels_name="labels") -> PairData:
    """Read sentence pairs (see the module docstring for the formats).

    text_a, text_b, label: column (csv/tsv) or key (jsonl) names; presets fix their own.
        ``label=None`` reads no labels. A missing label column gives ``labels=None``
        (a file to predict on), unless ``labels`` is given.
    labels: the allowed label values (compared as strings); others are bad rows, whose message
        calls them `labels_name` (e.g. "the model's labels").
    on_bad_row: "error" raises DataError("file:line: reason") at the first bad row;
        "skip" drops bad rows and counts them per reason in ``skip_reasons``.
    max_text_chars: a longer text is a bad row (None: no limit).
    Whole-file problems (missing, empty, not UTF-8, missing column, no rows) always raise.
    """
    if on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row must be 'error' or 'skip', not {on_bad_row!r}")
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, not {format!r}")
    path = Path(path)
    name = str(path)
    text, bad_bytes = _read_text(path, on_bad_row)
    if labels is not None:
        labels = [str(v) for v in labels]  # a YAML config may give [0, 1]
    format = _resolve_format(path, format, text)
    columns = format_columns(format, text_a, text_b, label)
    bld_args = (on_bad_row, max_text_chars, bad_bytes, labels_name)
    if format in ("jsonl", "afqmc"):
        bld = _read_jsonl(text, name, columns, labels, bld_args)
    else:
        kind = "csv" if format in ("csv", "bq") else format
        bld = _read_delimited(text, name, kind, columns, format != "lcqmc", labels, bld_args)
    return bld.result(path)


def _resolve_format(path, format, text):
    """`format`, with "auto" resolved from the MRPC header or the extension of `path`."""
    if format != "auto":
        return format
    header = text[:200].split("\n", 1)[0].rstrip("\r").split("\t")
    if header[:3] == ["Quality", "#1 ID", "#2 ID"]:
        return "mrpc"
    if path.suffix.lower() in _EXTENSIONS:
        return _EXTENSIONS[path.suffix.lower()]
    raise DataError(f"{path}: cannot tell the format from the extension "
                    f"{path.suffix!r}; pass format= one of {FORMATS[1:]}")


def is_pair_file(path, format="auto"):
    """Whether `path` is read as a pair file (a format given, or a pair file's extension) rather than
    as one text per line."""
    return format != "auto" or Path(path).suffix.lower() in _EXTENSIONS


def format_columns(format, text_a="sentence1", text_b="sentence2", label="label"):
    """The (text_a, text_b, label) columns a file of `format` is read with: the presets fix their own."""
    return {"bq": ("sentence1", "sentence2", "label"), "afqmc": ("sentence1", "sentence2", "label"),
            "lcqmc": ("a", "b", "label"), "mrpc": _MRPC_COLUMNS}.get(format, (text_a, text_b, label))


HEADER_BYTES = 1 << 16  # read_header reads at most this much of a file


def read_header(path, format="auto"):
    """`(format, line, columns)` of a pair file from its first line(s) only, as ``read_pairs`` would read
    it: "auto" resolved, and the header row's column names (csv, tsv, bq, mrpc) or the first JSON
    object's keys (jsonl, afqmc), on file line `line`; `columns` is None where there is nothing to check
    (lcqmc has no header; a first line that is not a JSON object or is longer than HEADER_BYTES:
    ``read_pairs`` reports those). Cheap whatever the file's size: for checks before a task starts."""
    path = Path(path)
    raw = _read_bytes(path, HEADER_BYTES)
    if len(raw) == HEADER_BYTES:  # keep whole lines only
        raw = raw[: raw.rfind(b"\n") + 1]
    text = raw.decode("utf-8", "replace")
    text = text[1:] if text.startswith("\ufeff") else text
    format = _resolve_format(path, format, text)
    _check_text_file(path, raw.split(b"\n", 1)[0], header=format not in ("lcqmc", "jsonl", "afqmc"))
    if format == "lcqmc" or not text.strip():
        return format, 0, None
    if format in ("jsonl", "afqmc"):
        line, first = next((n, s) for n, s in _lines(text) if s.strip())
        try:
            obj = json.loads(first)
        except json.JSONDecodeError:
            return format, line, None
        return format, line, (list(obj) if isinstance(obj, dict) else None)
    try:
        first = next(_csv_rows(text, str(path)) if format in ("csv", "bq") else _tsv_rows(text), None)
    except DataError:
        return format, 0, None
    return format, (first or (0,))[0], (None if first is None else [h.strip() for h in first[1]])


def _check_text_file(path, first_line: bytes, header: bool) -> None:
    """Raise a DataError naming what `path` is when it is gzip-compressed or UTF-16, or when its header
    line (`header`) is not UTF-8: no column can be found in it, and "column not found; the header has
    one column '\\x00s\\x00e...'" named the wrong cause. A bad byte in a row is that row's error
    (skipped with data.on_bad_row=skip)."""
    if first_line.startswith(b"\x1f\x8b"):
        raise DataError(f"{path}: a gzip-compressed file; decompress it first (pair files are UTF-8 text)")
    for bom, name in ((b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16")):
        if first_line.startswith(bom):
            raise DataError(f"{path}: {name} text (it starts with the byte-order mark 0x{bom.hex()}); "
                            f"re-save the file as UTF-8")
    if not header:
        return
    if b"\x00" in first_line:
        raise DataError(f"{path}:1: a NUL byte in the header (byte {first_line.index(0) + 1} of the line): "
                        f"not a text file")
    try:
        first_line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:1: not valid UTF-8 (byte 0x{first_line[e.start]:02x} at byte {e.start + 1} of "
                            f"the line): not a text file, or not UTF-8 (GBK / Latin-1 files are not read); "
                            f"re-save the file as UTF-8") from None


def check_columns(path, format="auto", text_a="sentence1", text_b="sentence2", label=None, why=None):
    """Raise the DataError ``read_pairs`` would raise for a column (jsonl: a key) that `path` lacks,
    from its header alone (``read_header``). `label=None`: the file need not be labelled. `why` maps
    "text_a" / "text_b" / "label" to where the expected name came from, shown after it."""
    format, line, found = read_header(path, format)
    if found is None:
        return
    why = why or {}
    names = format_columns(format, text_a, text_b, label)
    for key, column in zip(("text_a", "text_b", "label"), names):
        if column is None or (key == "label" and label is None):
            continue
        shown = f" ({why[key]})" if why.get(key) else ""
        if format in ("jsonl", "afqmc"):
            if column not in found:
                raise DataError(f"{path}:{line}: key {column!r}{shown} not found in the first object; "
                                f"its keys: {found}")
        else:
            _find_column(str(path), found, line, column, shown)


def swap_augment(pairs: PairData) -> PairData:
    """Append the (b, a, label) copy of every pair (q1/q2 swap augmentation).

    Only for symmetric relations (paraphrase, question matching) -- not for NLI, where
    "a entails b" does not mean "b entails a"."""
    labels = None if pairs.labels is None else pairs.labels + pairs.labels
    return PairData(pairs.text_a + pairs.text_b, pairs.text_b + pairs.text_a, labels,
                    pairs.lines + pairs.lines, pairs.path, pairs.skipped,
                    collections.Counter(pairs.skip_reasons), pairs.columns)


RARE_ROWS, RARE_RATIO = 5, 200  # "a handful of rows against thousands": at most 5, and 200 times fewer
ID_CLASSES = 20  # more classes than this, each of about two rows or fewer: an id column, not labels


def check_label_set(pairs: PairData) -> None:
    """Refuse a label set inferred from ``pairs`` that looks like a mistake, naming the file and line:
    a value equal to a column name (a repeated header row), two spellings of one number ("1", "1.0"),
    a class of a handful of rows against thousands (a typo), more than ID_CLASSES labels that are
    distinct in more than half the rows (an id column named as the label). Each would silently add
    classes; a user who means them declares the classes (``data.labels``), which skips this check."""
    counts = collections.Counter(pairs.labels)
    first = {}
    for y, line in zip(pairs.labels, pairs.lines):
        first.setdefault(y, line)
    fix = "; fix the data, or declare the classes with data.labels=[...] if they are right"
    column = f" ({pairs.columns[2]!r})" if len(pairs.columns) > 2 else ""
    if len(counts) > ID_CLASSES and 2 * len(counts) > len(pairs.labels):
        raise DataError(f"{pairs.path}: {len(counts)} distinct labels in {len(pairs.labels)} rows (e.g. "
                        f"{', '.join(repr(y) for y in list(first)[:3])}): is data.label{column} an id column? "
                        f"A classifier needs several rows per class{fix}")
    for y in first:
        if y in pairs.columns:
            raise DataError(f"{pairs.path}:{first[y]}: label {y!r} is a column name (a repeated header row?){fix}")
    numbers = {}
    for y in first:
        if is_number(y) and (twin := numbers.setdefault(float(y), y)) != y:
            raise DataError(f"{pairs.path}:{first[y]}: label {y!r} is the number {twin!r} (line {first[twin]}) "
                            f"written another way, and would be a second class{fix}")
    top, most = counts.most_common(1)[0]
    for y in first:  # not on a graded score scale (STS-B), where rare values are normal
        if len(numbers) <= 10 and counts[y] <= RARE_ROWS and counts[y] * RARE_RATIO <= most:
            raise DataError(f"{pairs.path}:{first[y]}: label {y!r} has only {counts[y]} rows against {most} of "
                            f"{top!r} (a typo?){fix}")
    words = [y for y in first if not is_number(y)]
    if words and len(words) < len(first):  # sorted as words, '10' < '2'; and 'yes' beside 0/1 is a third class
        y = min(words, key=lambda w: counts[w])
        raise DataError(f"{pairs.path}:{first[y]}: label {y!r} is a word among numeric labels "
                        f"{sorted(set(first) - set(words), key=float)[:5]} (a typo, or a note in the label column?){fix}")


def label_map(label_values, labels=None) -> list[str]:
    """The class order: ``labels`` when given (every value must be in it), else the sorted
    unique values -- numerically when all are numbers ("-1" < "0" < "2" < "10"),
    lexicographically otherwise. Class ``i`` is ``label_map(...)[i]``."""
    if label_values is None:
        raise DataError("no labels: the data has no label column")
    values = list(dict.fromkeys(str(v) for v in label_values))
    if labels is not None:
        order = [str(v) for v in labels]
        if len(set(order)) != len(order):
            raise DataError(f"labels has duplicates: {order}")
        unknown = sorted(set(values) - set(order))
        if unknown:
            raise DataError(f"unknown label values {unknown}; labels are {order}")
        return order
    if not values:
        raise DataError("no label values")
    if all(is_number(v) for v in values):
        return sorted(values, key=lambda v: (float(v), v))
    return sorted(values)


def read_texts(path):
    """One text per line (a file, or stdin for '-'); ids are line numbers unless `id<TAB>text`."""
    ids, texts = [], []
    # utf-8-sig: a BOM is no part of the first text
    with (open(0, encoding="utf-8-sig", closefd=False) if path == "-" else open(path, encoding="utf-8-sig")) as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            key, sep, text = line.partition("\t")
            ids.append(key if sep else str(n))
            texts.append(text if sep else line)
    if not texts:
        raise DataError(f"{'<stdin>' if path == '-' else path}: no texts")
    return ids, texts


def read_data(cfg, path, labels=None, labelled=True, labels_name="labels"):
    """A pair file as the `data.*` keys say; skipped bad rows are reported, `data.max_rows` applies.
    A label outside `labels` is a bad row, reported as not one of `labels_name`."""
    d = cfg.data
    pairs = read_pairs(path, format=d.format, text_a=d.text_a, text_b=d.text_b, label=d.label if labelled else None,
                       labels=labels, on_bad_row=d.on_bad_row, labels_name=labels_name)
    if pairs.skipped:
        logging.getLogger(__name__).warning("%s: skipped %d bad rows (%s)", path, pairs.skipped, dict(pairs.skip_reasons))
    if d.max_rows:
        pairs = subset(pairs, range(min(d.max_rows, len(pairs))))
    if len(pairs) == 0:
        raise DataError(f"{path}: no usable rows")
    return pairs


def subset(pairs, idx):
    return PairData(text_a=[pairs.text_a[i] for i in idx], text_b=[pairs.text_b[i] for i in idx],
                    labels=None if pairs.labels is None else [pairs.labels[i] for i in idx],
                    lines=[pairs.lines[i] for i in idx], path=pairs.path,
                    skipped=pairs.skipped, skip_reasons=pairs.skip_reasons, columns=pairs.columns)

