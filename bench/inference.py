"""Inference throughput: pairs/s at batch 1 and 28 (a pair = 128 tokens) for a cross-encoder
(MiniLM-L6 and a 2-layer cut), sbert and VIRT (candidates cached), in Keras, SavedModel, ONNX
fp32 and ONNX int8, plus the peer PyTorch cross-encoder; compute efficiency, peak RSS, and the
bi-encoders' offline encoding rate (texts/s at batch 64, the candidate side).

    python bench/inference.py [--ce DIR] [--tiny DIR] [--sbert DIR] [--virt DIR] [--seconds 5] [--quick]

Without model directories: MiniLM-L6 (mean pooling) and its first 2 layers as cross-encoders,
MiniLM-L6 as sbert (cosine) and as VIRT student, all with untrained heads (speed does not
depend on training). What runs online per pair:
- cross-encoder: the encoder on the joint pair, 128 tokens (`predict_ids`);
- sbert: encode the query (64 tokens) + cosine against the candidate's cached embedding;
- virt: encode the query (64 tokens) + interaction head against the candidate's cached
  64 token states (`encode_ids` + `score`).
The ONNX files are made with the export task's functions (the model classes' serving_functions,
export/onnx.convert_function / quantize_int8) in a temp dir; the SavedModel holds the same
functions. Every (model, backend) runs in its own process, so its peak RSS (VmHWM) is that of
serving the model alone. Efficiency: the cross-encoder's forward FLOPs (counted from its config)
per second vs a square matmul measured in the same run (fp32 and bf16).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import PEER_PYTHON, ROOT, md_table, peak_rss_mb, run_child, save  # noqa: E402

HERE = Path(__file__).resolve()
MODELS = ("ce", "tiny", "sbert", "virt")
KIND = {"ce": "cross_encoder", "tiny": "cross_encoder", "sbert": "sbert", "virt": "virt"}
BACKENDS = ("keras", "saved_model", "onnx", "onnx-int8")
BATCHES = (1, 28)


def _tf_path():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, str(ROOT))


# ----------------------------------------------------------------------------- prepare (child)
def default_model(name, path):
    """An untrained-head model directory for `name` built from MiniLM-L6."""
    from crossenc.model import CrossEncoder
    from modeling.model_dir import save_model_dir
    from modeling.pretrained import load_pretrained
    from senbert.model import SentenceBert
    from virt.model import VirtModel

    encoder, tokenizer = load_pretrained("minilm", num_layers=2 if name == "tiny" else None)
    model = {"ce": lambda: CrossEncoder(encoder, 2, pooling="mean", name="cross_encoder"),
             "tiny": lambda: CrossEncoder(encoder, 2, pooling="mean", name="cross_encoder"),
             "sbert": lambda: SentenceBert(encoder, objective="cosine", name="sbert"),
             "virt": lambda: VirtModel(encoder, 2, name="virt")}[name]()
    model(model.dummy_inputs())
    return save_model_dir(model, path, tokenizer, labels=["0", "1"], max_seq_len=128)


def prepare(dirs, work, int8=True, models=MODELS):
    """Model dirs (given or default), their SavedModel and ONNX files; returns the manifest."""
    _tf_path()
    import tensorflow as tf

    from export.onnx import convert_function, quantize_int8
    from modeling.model_dir import load_model_dir

    work = Path(work)
    manifest = {}
    for name in models:
        d = Path(dirs[name]) if dirs.get(name) else default_model(name, work / name / "model")
        loaded = load_model_dir(d, expect_kind=KIND[name])
        fns = loaded.model.serving_functions()
        cls = loaded.kind_class
        online = ["predict_ids"] if cls.encode_output is None else ["encode_ids"] + (
            ["score"] if cls.late_interaction else [])
        files = {"model_dir": str(d), "saved_model": str(work / name / "saved_model")}
        module = tf.Module()
        module.model = loaded.model
        for fn in online:
            setattr(module, fn, fns[fn])
            files[f"onnx:{fn}"] = str(convert_function(fns[fn], work / name / f"{fn}.onnx"))
        if int8:  # the encoder carries the weights: quantise it, keep the small VIRT head in fp32
            files["onnx-int8:" + online[0]] = str(quantize_int8(files["onnx:" + online[0]],
                                                                work / name / f"{online[0]}.int8.onnx"))
        tf.saved_model.save(module, files["saved_model"])
        enc = loaded.model.encoder
        manifest[name] = {"files": files, "kind": loaded.kind, "online": online, "joint_pair": cls.joint_pair(),
                          "encode_output": cls.encode_output, "late_interaction": cls.late_interaction, "hidden": enc.hidden_size,
                          "layers": enc.num_layers, "intermediate": enc.intermediate_size,
                          "vocab": loaded.tokenizer.vocab_size}
    return manifest


# ----------------------------------------------------------------------------- measure (child)
def fake_ids(batch, length, vocab, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, vocab, size=(batch, length)).astype("int32")
    ids[:, 0], ids[:, -1] = 101, 102
    return ids, np.ones((batch, length), "int32")


def runner(spec, backend, batch, seq):
    """A function processing one batch of `batch` pairs online with `backend`."""
    import numpy as np

    online, files = spec["online"], spec["files"]
    if spec["joint_pair"]:
        ids, mask = fake_ids(batch, seq, spec["vocab"])
        feeds = [{"input_ids": ids, "token_type_ids": np.repeat([[0] * (seq // 2) + [1] * (seq - seq // 2)], batch, 0)
                  .astype("int32"), "attention_mask": mask}]
    else:
        ids, mask = fake_ids(batch, seq // 2, spec["vocab"])
        feeds = [{"input_ids": ids, "attention_mask": mask}]
    calls = _functions(files, online, backend)
    # The candidates' cached side: one encoding of other ids, made once with the same backend.
    cand_ids, cand_mask = fake_ids(batch, seq // 2, spec["vocab"], seed=1)
    cached = calls[0](input_ids=cand_ids, attention_mask=cand_mask) if spec["encode_output"] else None

    def step():
        out = calls[0](**feeds[0])
        if spec["late_interaction"]:
            return calls[1](x_states=out["token_states"], x_mask=mask, y_states=cached["token_states"],
                            y_mask=cand_mask)["probs"]
        if spec["encode_output"]:  # one vector per text: cosine
            u, v = out[spec["encode_output"]], cached[spec["encode_output"]]
            return np.sum(u * v, -1) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1))
        return out["probs"]
    return step


def _functions(files, online, backend):
    """name -> callable(**numpy feeds) -> dict of numpy, for each online function."""
    import numpy as np

    out = []
    if backend.startswith("onnx"):
        from runtime.onnx import session

        for i, fn in enumerate(online):
            key = f"{backend}:{fn}" if i == 0 and f"{backend}:{fn}" in files else f"onnx:{fn}"
            sess = session(files[key], threads=os.cpu_count())
            names = [o.name for o in sess.get_outputs()]
            out.append(lambda s=sess, n=names, **feeds: dict(zip(n, s.run(n, {k: np.asarray(v) for k, v in
                                                                             feeds.items()}))))
        return out
    import tensorflow as tf

    if backend == "saved_model":
        keep = tf.saved_model.load(files["saved_model"])
        fns = [getattr(keep, fn) for fn in online]
    else:
        from modeling.model_dir import load_model_dir

        keep = load_model_dir(files["model_dir"])
        all_fns = keep.model.serving_functions()
        fns = [all_fns[fn] for fn in online]
    for f in fns:  # `keep`: the model (or SavedModel object) must outlive the functions using its variables
        out.append(lambda f=f, keep=keep, **feeds: {k: v.numpy() for k, v in f(**{k: tf.constant(v) for k, v in
                                                                        feeds.items()}).items()})
    return out


ENCODE_BATCH = 64  # offline encoding of the candidate side (sbert embeddings, VIRT token states)


def per_second(step, batch, seconds):
    """Items/s of `step` (one batch of `batch` items) after 2 warm-up calls, over >= 3 calls and `seconds`."""
    for _ in range(2):
        step()
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < seconds:
        step()
        n += 1
    return batch * n / (time.perf_counter() - t0)


def measure(spec, backend, seq, seconds):
    _tf_path()
    res = {str(batch): per_second(runner(spec, backend, batch, seq), batch, seconds) for batch in BATCHES}
    out = {"pairs_per_s": res}
    if spec["encode_output"]:  # bi-encoders: how fast a corpus is encoded offline
        ids, mask = fake_ids(ENCODE_BATCH, seq // 2, spec["vocab"], seed=2)
        encode = _functions(spec["files"], spec["online"][:1], backend)[0]
        out["encode_per_s"] = per_second(lambda: encode(input_ids=ids, attention_mask=mask), ENCODE_BATCH, seconds)
    return {**out, "peak_rss_mb": peak_rss_mb()}


MATMUL_N = 2048  # 1024^3 stays far from peak here (111 vs 181 GFLOP/s fp32): a reference must saturate the cores


def matmul(seconds, n=MATMUL_N):
    """GFLOP/s of an n x n matmul in fp32 and bf16 on this process's cores."""
    _tf_path()
    import tensorflow as tf

    res = {}
    for dtype in (tf.float32, tf.bfloat16):
        a = tf.random.normal((n, n), dtype=tf.float32)
        a = tf.cast(a, dtype)
        f = tf.function(lambda x: tf.matmul(x, x))
        f(a).numpy()
        k, t0 = 0, time.perf_counter()
        while k < 3 or time.perf_counter() - t0 < seconds:
            f(a).numpy()
            k += 1
        res[dtype.name] = 2 * n ** 3 * k / (time.perf_counter() - t0) / 1e9
    return res


def peer_measure(model_dir, seq, seconds):
    """In the peer venv: BertForSequenceClassification forward under no_grad."""
    import torch
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(model_dir, num_labels=2).eval()
    res = {}
    with torch.inference_mode():
        for batch in BATCHES:
            ids, mask = (torch.as_tensor(a.astype("int64")) for a in fake_ids(batch, seq, model.config.vocab_size))
            types = torch.as_tensor([[0] * (seq // 2) + [1] * (seq - seq // 2)] * batch)
            res[str(batch)] = per_second(lambda: torch.softmax(model(input_ids=ids, token_type_ids=types,
                                                                     attention_mask=mask).logits, -1), batch, seconds)
    return {"pairs_per_s": res, "peak_rss_mb": peak_rss_mb(), "torch": torch.__version__}


def forward_flops(spec, seq):
    """Multiply-adds x 2 of one cross-encoder forward on `seq` tokens (embeddings and head ignored)."""
    h, i, layers = spec["hidden"], spec["intermediate"], spec["layers"]
    return layers * seq * (8 * h * h + 4 * h * i + 4 * seq * h)


# ----------------------------------------------------------------------------- parent
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in MODELS:
        p.add_argument(f"--{name}", help=f"{KIND[name]} model directory (default: built from MiniLM-L6)")
    p.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS,
                   help="which models to measure (e.g. sbert virt for the encoding rates alone)")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--seconds", type=float, default=5.0, help="per batch size and backend")
    p.add_argument("--backends", nargs="*", default=list(BACKENDS), choices=BACKENDS)
    p.add_argument("--quick", action="store_true", help="1 s per measurement")
    p.add_argument("--out", default="bench-results")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        spec = json.loads(args.spec) if args.spec else None
        res = {"prepare": lambda: prepare(spec["dirs"], spec["work"], "onnx-int8" in spec["backends"], spec["models"]),
               "matmul": lambda: matmul(args.seconds),
               "peer": lambda: peer_measure(spec, args.seq, args.seconds)}.get(args.child)
        print(json.dumps(res() if res else measure(spec, args.child, args.seq, args.seconds)))
        return
    if args.quick:
        args.seconds = 1.0
    t_start = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as work:
        dirs = {name: getattr(args, name) for name in MODELS}
        me = [sys.executable, HERE]
        manifest = run_child(me + ["--child", "prepare", "--spec", json.dumps(
            {"dirs": dirs, "work": work, "backends": args.backends, "models": args.models})])
        if manifest is None:
            sys.exit("preparing the models failed")
        results = {}
        for name in args.models:
            for backend in args.backends:
                res = run_child(me + ["--child", backend, "--spec", json.dumps(manifest[name]), "--seq", args.seq,
                                      "--seconds", args.seconds])
                if res:
                    results[(name, backend)] = res
                    print(f"{name} {backend}: {res['pairs_per_s']} pairs/s, {res['peak_rss_mb']:.0f} MB", flush=True)
        peer = None
        if PEER_PYTHON.exists() and not args.ce and "ce" in args.models:
            sys.path.insert(0, str(ROOT))
            from modeling.pretrained import minilm_dir

            peer = run_child([PEER_PYTHON, HERE, "--child", "peer", "--spec", json.dumps(str(minilm_dir())),
                              "--seq", args.seq, "--seconds", args.seconds])
        # the matmul is the reference of the cross-encoder's efficiency figure only
        mm = run_child(me + ["--child", "matmul", "--seconds", max(args.seconds, 2.0)]) if "ce" in args.models else None
    report(args, manifest, results, peer, mm, time.time() - t_start)


def report(args, manifest, results, peer, mm, wall):
    def rate(name, backend, b):
        r = results.get((name, backend)) if backend != "peer" else peer
        return r["pairs_per_s"][str(b)] if r else None

    rows = []
    for (name, backend), r in results.items():
        rows.append([name, backend, *(f"{r['pairs_per_s'][str(b)]:.1f}" for b in BATCHES), f"{r['peak_rss_mb']:.0f}"])
    if peer:
        rows.append(["ce", f"peer PyTorch {peer['torch']}", *(f"{peer['pairs_per_s'][str(b)]:.1f}" for b in BATCHES),
                     f"{peer['peak_rss_mb']:.0f}"])
    ratios = []

    def ratio(label, num, den):
        for b in BATCHES:
            x, y = rate(*num, b), rate(*den, b)
            if x and y:
                ratios.append([label, f"batch {b}", f"{x / y:.2f}x"])

    ratio("virt online vs cross-encoder L6 (Keras)", ("virt", "keras"), ("ce", "keras"))
    ratio("virt online vs cross-encoder L6 (ONNX)", ("virt", "onnx"), ("ce", "onnx"))
    for name in MODELS:
        ratio(f"{name}: ONNX int8 vs Keras", (name, "onnx-int8"), (name, "keras"))
    ratio("ours Keras vs peer (ce L6)", ("ce", "keras"), ("ce", "peer"))
    ratio("ours ONNX vs peer (ce L6)", ("ce", "onnx"), ("ce", "peer"))
    ratio("ours ONNX int8 vs peer (ce L6)", ("ce", "onnx-int8"), ("ce", "peer"))
    eff = []
    if mm and "ce" in args.models:
        flops = forward_flops(manifest["ce"], args.seq)
        for backend in args.backends:
            r = rate("ce", backend, BATCHES[-1])
            if r:
                g = r * flops / 1e9
                eff.append([f"ce L6 {backend}, batch {BATCHES[-1]}", f"{g:.1f}",
                            f"{100 * g / mm['float32']:.0f}%", f"{100 * g / mm['bfloat16']:.0f}%"])
    lines = [f"Inference, pairs of {args.seq} tokens (siamese: 2 x {args.seq // 2}), {args.seconds:g} s per point, "
             f"wall {wall:.0f} s", ""]
    lines += md_table(["model", "backend", *(f"pairs/s b={b}" for b in BATCHES), "peak RSS MB"], rows)
    lines += [""] + md_table(["ratio", "batch", "value"], ratios)
    encoding = [[name, backend, f"{r['encode_per_s']:.1f}"] for (name, backend), r in results.items() if "encode_per_s" in r]
    if encoding:
        lines += ["", f"Offline encoding, texts of {args.seq // 2} tokens, batch {ENCODE_BATCH} "
                      "(sbert: embeddings; virt: last-layer token states)", ""]
        lines += md_table(["model", "backend", "texts/s"], encoding)
    if mm:
        lines += ["", f"matmul {MATMUL_N}^3 in this run: fp32 {mm['float32']:.1f} GFLOP/s, bf16 {mm['bfloat16']:.1f} GFLOP/s", ""]
        lines += md_table(["cross-encoder forward", "GFLOP/s", "of fp32 matmul", "of bf16 matmul"], eff)
    save(args.out, "inference", lines, {"args": {k: str(v) for k, v in vars(args).items()},
                                        "results": {f"{n}/{b}": r for (n, b), r in results.items()},
                                        "peer": peer, "matmul": mm, "models": manifest})


if __name__ == "__main__":
    main()
