"""The cross-encoder package: model directories written before it moved still load."""

from __future__ import annotations

import json

import numpy as np


def test_model_json_naming_the_old_module_still_loads(tmp_path):
    """model.json files written before issue 19 name `modeling.cross_encoder` (Keras records the module)."""
    from data import build_vocab
    from modeling.model_dir import load_model_dir, save_model_dir
    from modeling.tokenization import PairTokenizer
    from tests.tiny_runs import tiny_model

    tok = PairTokenizer(build_vocab(["open an account", "create an account"] * 3, tmp_path / "vocab.txt",
                                    lang="zh", min_freq=1))
    model = tiny_model(tok.vocab_size)
    out = save_model_dir(model, tmp_path / "model", tok, labels=["0", "1"], max_seq_len=16)
    meta = json.loads((out / "model.json").read_text())
    assert meta["model"]["module"] == "crossenc.model"
    meta["model"]["module"] = "modeling.cross_encoder"
    (out / "model.json").write_text(json.dumps(meta))
    loaded = load_model_dir(out, expect_kind="cross_encoder")
    x = model.dummy_inputs()
    np.testing.assert_allclose(loaded.model(x).numpy(), model(x).numpy(), atol=1e-6)
