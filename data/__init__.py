"""Data loading for sentence-pair matching: readers, a smoke-test sample set, vocabularies."""
from .readers import (FORMATS, DataError, PairData, check_columns, check_label_set, clean_text, format_columns,
                      label_map, read_header, read_pairs, read_texts, swap_augment)
from .vocab import SPECIAL_TOKENS, build_vocab

__all__ = ["FORMATS", "DataError", "PairData", "check_columns", "check_label_set", "clean_text", "format_columns",
           "label_map", "read_header", "read_pairs", "read_texts", "swap_augment", "make_sample", "build_vocab", "SPECIAL_TOKENS"]


def __getattr__(name):
    # Imported on first use, so that `python -m data.sample` does not find data.sample
    # already imported by the package (runpy warns about that).
    if name == "make_sample":
        from .sample import make_sample
        return make_sample
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
