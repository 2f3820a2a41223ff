"""Helpers shared by test_training.py and test_cli.py: tiny random-init runs.

Everything here is sized for 2 busy CPU cores: a 2-layer, 32-wide encoder,
max_seq_len 16 (the sample pairs are all longer, so every batch has the same
width and the train step is traced once), 4-8 steps per epoch.

The vocabulary is built ONCE per data set with `lang="zh"` (the character
builder sorts its tokens, so it is deterministic) and passed as `model.vocab`:
`build_vocab(lang="en")` (HF WordPiece trainer) is not deterministic, see
test_training.py::test_en_vocab_is_the_same_when_a_run_restarts.
"""

from __future__ import annotations

import csv
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = ROOT / ".venv" / "bin" / "python"
if not PYTHON.exists():  # pragma: no cover - another layout
    PYTHON = Path(sys.executable)
RUN_TASKS = ROOT / "run_tasks.py"

TINY_MODEL = ["model.init=null", "model.hidden_size=32", "model.num_heads=4", "model.intermediate_size=64",
              "model.num_layers=1", "model.vocab_lang=en", "model.vocab_min_freq=1", "model.max_position=64"]
TINY_TRAIN = ["train.batch_size=16", "train.max_seq_len=16", "train.verbose=0", "train.eval_batch_size=64"]


def tiny_overrides(data=None, vocab=None, *extra):
    """`--set` values for a tiny finetune run on `data` (a make_data() dict)."""
    out = TINY_MODEL + TINY_TRAIN
    if vocab is not None:
        out = out + [f"model.vocab={vocab}"]
    if data is not None:
        out = out + [f"data.train={data['train']}", f"data.valid={data['valid']}"]
        if data.get("test"):
            out.append(f"data.test={data['test']}")
    return out + list(extra)


def sample_task_overrides(root, n_train=96):
    """`--set` values for a tiny random-init virt/distill run on a fresh sample set under `root`
    (the teacher it fine-tunes shares the built vocabulary with its students)."""
    from data import make_sample

    files = make_sample(Path(root) / "data", n_train=n_train, n_valid=32, n_test=32)
    return ["model.init=null", "model.vocab_lang=en", "model.hidden_size=32", "model.num_heads=4",
            "model.intermediate_size=64", "model.max_position=64", f"data.train={files['train']}",
            f"data.valid={files['valid']}", f"data.test={files['test']}", "train.batch_size=16",
            "train.epochs=1", "train.max_seq_len=16", "train.verbose=0", "train.eval_batch_size=32"]


def make_data(out_dir, n_train=64, n_valid=16, n_test=16, with_test=False):
    """Sample pairs (label 1 = paraphrase) plus a deterministic vocab.txt; returns paths."""
    from data import build_vocab, make_sample, read_pairs

    files = {k: str(v) for k, v in make_sample(out_dir, n_train=n_train, n_valid=n_valid, n_test=n_test).items()}
    if not with_test:
        files.pop("test")
    pairs = read_pairs(files["train"])
    files["vocab"] = str(build_vocab(pairs.text_a + pairs.text_b, Path(out_dir) / "vocab.txt",
                                     lang="zh", min_freq=1))
    return files


NLI_LABELS = ("ENTAILMENT", "NEUTRAL", "CONTRADICTION")
_SUBJECTS = ["a man", "a woman", "the dog", "two kids", "a chef", "the old cat", "a runner", "my friend"]
_VERBS = ["sleeps", "runs", "eats lunch", "reads a book", "plays music", "sits outside"]


def write_nli(path, n, seed=0, header=("premise", "hypothesis", "gold")):
    """A csv with string labels ENTAILMENT / NEUTRAL / CONTRADICTION (round robin)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        s, v = rng.choice(_SUBJECTS), rng.choice(_VERBS)
        label = NLI_LABELS[i % 3]
        hyp = {"ENTAILMENT": f"{s} {v}", "NEUTRAL": f"{s} {v} happily today",
               "CONTRADICTION": f"nobody {v} at all"}[label]
        rows.append((f"{s} {v} in the park", hyp, label))
    write_csv(path, rows, header)
    return str(path)


def write_csv(path, rows, header=("sentence1", "sentence2", "label")):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    return str(path)


def tiny_model(vocab_size, dropout=0.0, num_labels=2, num_layers=2):
    """A built tiny CrossEncoder (call it inside a strategy scope for mirrored variables)."""
    from crossenc.model import CrossEncoder
    from modeling.encoder import BertEncoder

    enc = BertEncoder(vocab_size=vocab_size, hidden_size=32, num_layers=num_layers, num_heads=4,
                      intermediate_size=64, max_position=64, hidden_dropout=dropout,
                      attention_dropout=dropout, name="encoder")
    model = CrossEncoder(enc, num_labels=num_labels, pooling="cls", dropout=dropout, name="cross_encoder")
    model(model.dummy_inputs())
    return model


def micro_model(vocab_size, dropout=0.0):
    """A PairModel far cheaper to trace than a CrossEncoder (embedding mean -> dropout -> dense),
    for tests of the training loop itself (resume, stopping, NaN)."""
    import keras
    import tensorflow as tf

    from modeling.task_model import PairModel

    class MicroPair(PairModel):
        kind = "micro"

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.emb = keras.layers.Embedding(vocab_size, 8, name="emb")
            self.drop = keras.layers.Dropout(dropout, name="drop")
            self.out = keras.layers.Dense(2, name="out")

        def call(self, x, training=False):
            mask = tf.cast(x["attention_mask"], tf.float32)[..., None]
            h = tf.reduce_sum(self.emb(x["input_ids"]) * mask, 1) / tf.reduce_sum(mask, 1)
            return self.out(self.drop(h, training=training))

    model = MicroPair(name="micro")
    model({"input_ids": tf.constant([[2, 5, 3]]), "attention_mask": tf.constant([[1, 1, 1]])})
    return model


# ----------------------------------------------------------------------------- subprocesses
def cli_env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="")
    env.pop("PYTHONPATH", None)
    return env


def cli_cmd(*args):
    return [str(PYTHON), str(RUN_TASKS), *map(str, args)]


def popen_cli(args, cwd, stdin=None):
    """Start `run_tasks.py args` (stdout/stderr to pipes). cwd should be a tmp dir."""
    return subprocess.Popen(cli_cmd(*args), cwd=cwd, env=cli_env(), stdin=stdin or subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_cli(args, cwd, timeout=240, input=None):
    return subprocess.run(cli_cmd(*args), cwd=cwd, env=cli_env(), input=input, capture_output=True,
                          text=True, timeout=timeout)


def wait_for(path, proc, timeout=180, poll=0.02):
    """Wait until `path` exists; fail early if `proc` ends first."""
    path = Path(path)
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process ended (rc={proc.returncode}) before {path} appeared:\n{err[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timeout waiting for {path}")
        time.sleep(poll)
