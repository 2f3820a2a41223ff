"""The Hugging Face layout (`export.formats` `hf`): a folder transformers or sentence-transformers loads.

    cross_encoder (model.pooling=cls)  BertForSequenceClassification: config.json (architectures,
                                       id2label / label2id from model.json's labels), model.safetensors
                                       (`bert.*`, `classifier.*`), tokenizer files
    sbert                              a sentence-transformers folder: the BertModel files at its root
                                       (modules.json path ""), 1_Pooling/config.json, 2_Normalize/
                                       when sbert.normalize, modules.json, sentence_bert_config.json

What a model can be written as is its class's `hf_head()` (the others refuse there, with the
reason). The weights go through the loader's own name mapping run backwards
(`modeling.checkpoints.hf_tensors`), and `check` reads the folder back through the loader
(`modeling.pretrained.read_checkpoint`), so a writer/reader disagreement fails parity.json's `hf`
entry. That transformers reads the files the same way is proven by a fixture computed with it
(tools/make_hf_export_fixture.py, tests/test_hf_export.py).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from export import ExportError

SPECIAL = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
           "mask_token": "[MASK]"}


def hf_head(loaded):
    """`loaded.model.hf_head()`, its refusal as an ExportError naming the model."""
    try:
        return loaded.model.hf_head()
    except ValueError as e:
        raise ExportError(f"export.formats includes hf, but {loaded.path}: {e}") from None


def write(loaded, dest, max_len):
    """Write `loaded`'s Hugging Face folder into `dest` (created); returns the head description."""
    from safetensors.numpy import save_file

    from modeling.checkpoints import bert_config, hf_tensors
    from modeling.pretrained import ST_NORMALIZE, ST_POOLING, ST_POOLING_MODES, ST_TRANSFORMER

    head = hf_head(loaded)
    encoder = loaded.model.encoder
    dest = Path(dest)
    dest.mkdir(parents=True)
    config = bert_config(encoder)
    if "classifier" in head:
        kernel, bias = head["classifier"]
        labels = _labels(loaded, len(bias))
        tensors = {**hf_tensors(encoder, "bert."), "classifier.weight": np.ascontiguousarray(kernel.T, np.float32),
                   "classifier.bias": np.asarray(bias, np.float32)}
        config = {"architectures": [head["architecture"]], **config,
                  "id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)},
                  "problem_type": "single_label_classification"}
    else:  # a sentence-transformers folder: the transformer at its root, as the hub's models are
        st = head["sentence_transformers"]
        tensors = hf_tensors(encoder)
        config = {"architectures": ["BertModel"], **config}
        modules = [{"idx": 0, "name": "0", "path": "", "type": ST_TRANSFORMER},
                   {"idx": 1, "name": "1", "path": "1_Pooling", "type": ST_POOLING}]
        if st["normalize"]:
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": ST_NORMALIZE})
            (dest / "2_Normalize").mkdir()
        modes = {key: mode == st["pooling"] for key, mode in ST_POOLING_MODES.items()}
        pooling = {"word_embedding_dimension": encoder.hidden_size, **modes, "pooling_mode_mean_sqrt_len_tokens": False,
                   "pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": False, "include_prompt": True}
        (dest / "1_Pooling").mkdir()
        _json(dest / "1_Pooling" / "config.json", pooling)
        _json(dest / "modules.json", modules)
        # do_lower_case false: lower-casing is the tokenizer's (tokenizer_config.json), as in training.
        _json(dest / "sentence_bert_config.json", {"max_seq_length": max_len, "do_lower_case": False})
        _json(dest / "config_sentence_transformers.json", {"model_type": "SentenceTransformer", "prompts": {},
                                                           "default_prompt_name": None, "similarity_fn_name": "cosine"})
    _json(dest / "config.json", config)
    save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})  # transformers wants a format
    _tokenizer_files(loaded.tokenizer, dest, max_len)
    return head


def _labels(loaded, n):
    """id2label's names: model.json's labels (transformers' LABEL_i when it has none)."""
    return [str(x) for x in (loaded.labels or [f"LABEL_{i}" for i in range(n)])]


def _tokenizer_files(tok, dest, max_len):
    """vocab.txt, tokenizer.json (the training tokenizer's own pipeline), tokenizer_config.json,
    special_tokens_map.json."""
    import shutil

    shutil.copyfile(tok.vocab_file, dest / "vocab.txt")
    tok.raw.save(str(dest / "tokenizer.json"))  # no truncation or padding set: a caller's choice
    vocab = set(Path(tok.vocab_file).read_text(encoding="utf-8").splitlines())
    special = {k: v for k, v in SPECIAL.items() if v in vocab}  # [MASK] is optional in our vocabularies
    _json(dest / "special_tokens_map.json", special)
    _json(dest / "tokenizer_config.json", {
        "tokenizer_class": "BertTokenizer", "do_lower_case": tok.lowercase, "tokenize_chinese_chars": True,
        "strip_accents": None, "model_max_length": max_len, "clean_up_tokenization_spaces": False, **special})


def _json(path, obj):
    Path(path).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def check(folder, loaded, data, tolerance):
    """The folder read back by the project's loader vs the Keras model, over the parity batches:
    max |diff| of the probabilities (BertForSequenceClassification) or of both texts' embeddings
    (sentence-transformers). The folder's tokenizer must give the same ids, and its labels be
    model.json's."""
    import tensorflow as tf

    from export.parity import max_diff, python_features
    from modeling.checkpoints import read_hf_classifier
    from modeling.encoder import pool
    from modeling.pretrained import read_checkpoint, sentence_transformers_modules

    encoder, tokenizer, _ = read_checkpoint(folder)
    reread = replace(loaded, tokenizer=tokenizer)
    head = read_hf_classifier(folder)
    st = None if head else sentence_transformers_modules(folder)
    if head and head[0] != _labels(loaded, len(head[2])):
        return _failed(f"labels {head[0]} != model.json's {loaded.labels}", tolerance)
    worst = 0.0
    for bt in data.batches:
        feats, _ = python_features(reread, bt["a"], bt["b"], data.max_len)
        if any(not np.array_equal(feats[k], bt["feats"][k]) for k in feats):
            return _failed("its tokenizer files give other token ids than the model's tokenizer", tolerance)
        if head:
            pooled = encoder({k: tf.constant(v) for k, v in feats.items()})["pooler_output"].numpy()
            logits = pooled.astype(np.float64) @ head[1] + head[2]
            probs = np.exp(logits - logits.max(-1, keepdims=True))
            worst = max(worst, max_diff({"probs": probs / probs.sum(-1, keepdims=True)}, bt["ref"], ["probs"]))
            continue
        for side in ("x", "y"):
            ids, mask = feats[f"{side}_ids"], feats[f"{side}_mask"]
            e = pool(encoder({"input_ids": ids, "attention_mask": mask})["last_hidden_state"], mask, st["pooling"])
            e = tf.math.l2_normalize(e, axis=-1) if st["normalize"] else e
            worst = max(worst, max_diff({"embeddings": e.numpy()}, data.encoded(bt, side), ["embeddings"]))
    return {"max_abs_diff": worst, "tolerance": tolerance, "ok": bool(worst <= tolerance),
            "layout": "BertForSequenceClassification" if head else "sentence-transformers"}


def _failed(reason, tolerance):
    return {"max_abs_diff": float("inf"), "tolerance": tolerance, "ok": False, "reason": reason}
