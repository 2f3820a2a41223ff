"""Encoder, checkpoint loaders, tokenizer and model directories."""

from modeling.encoder import BertEncoder, pool
from modeling.pretrained import load_pretrained
from modeling.tokenization import PairTokenizer

__all__ = ["BertEncoder", "PairTokenizer", "load_pretrained", "pool"]
