#!/usr/bin/env python
"""Load test of the serve task on loopback: N concurrent clients for T seconds, micro-batching
against batch-1 serving in one run.

    python bench/load_test.py --model runs/export/qm --int8 --clients 8 --seconds 30 --out runs/load/ce
    python bench/load_test.py --model runs/export/virt --index runs/index/virt --rerank virt \
        --clients 8 --seconds 30 --out runs/load/virt          # POST /v1/search: VIRT score on cached candidates

For each server configuration (`--configs`, default `32:5,1:0` = max_batch 32 / max_wait 5 ms,
then max_batch 1 = no batching; a third field sets serve.max_batch_tokens, `32:5:0` = rows only,
else the server's default) it starts `run_tasks.py --task serve` on 127.0.0.1 and a free
port, warms it up, runs `--clients` closed-loop clients (each sends its next request when the
previous one returned) until `--seconds` have passed or `--max-requests` were sent, reads the
server's batch-size histogram from /metrics and stops the server. Requests: one text pair
(`--pairs` per request) of the generated sample set to `:predict` (serving_default), or one
query to `/v1/search` with `--index` (k = `--k`, reranked when the server has `--rerank`).

Prints a markdown table (throughput, p50/p95/p99 latency, errors, mean batch rows) and the
ratios of the first configuration to the last; writes `<out>/load.json` and `<out>/load.md`.
Clients and server share the machine: on 2 cores the client's own CPU use is part of the result.

    python bench/load_test.py --model runs/export/qm --int8 --mix --clients 8 --seconds 20 \
        --configs 32:5:0,32:5:512 --out runs/load/mix      # rows-only batching against a token budget

`--mix` (reliability): for each configuration (default `32:5`), two phases of `--seconds` on one server.
"alone": half of the clients send good one-pair requests. "mixed": the same good clients,
and the other half split between bad requests (a corpus of malformed bodies, each with the
4xx it must get) and maximum-size ones (`--max-texts` pairs of `--max-chars` characters,
English and Chinese). Reports per kind of client the status codes, the latency of the good
requests (p99 alone against mixed: how much one client's large requests cost the others),
every unexpected answer (a 5xx, a transport error, a wrong 4xx, a failed good request), the
mean rows per model call in the mixed phase, the server's peak resident memory (VmHWM) and its
log lines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HOST = "127.0.0.1"  # loopback only


def sample_texts(n=512, seed=7, lang="en"):
    from data import make_sample, read_pairs

    with tempfile.TemporaryDirectory() as tmp:
        pairs = read_pairs(make_sample(tmp, n_train=0, n_valid=0, n_test=n, lang=lang, seed=seed)["test"])
    return list(pairs.text_a), list(pairs.text_b)


def parse_configs(spec):
    """"32:5,1:0,32:5:512" -> [(max_batch, max_wait_ms, max_batch_tokens or None = the server's default)]."""
    out = []
    for item in spec.split(","):
        mb, wait, *tokens = item.split(":")
        out.append((int(mb), float(wait or 0), int(tokens[0]) if tokens and tokens[0] else None))
    return out


def config_name(max_batch, max_wait_ms, max_batch_tokens):
    return f"{max_batch}:{max_wait_ms:g}" + ("" if max_batch_tokens is None else f":{max_batch_tokens}")


def start_server(args, config, port):
    max_batch, max_wait_ms, max_batch_tokens = config
    sets = [f"serve.model={args.model}", f"serve.host={HOST}", f"serve.port={port}", f"serve.max_batch={max_batch}",
            f"serve.max_wait_ms={max_wait_ms}", f"serve.backend={args.backend}", f"serve.max_texts={args.max_texts}",
            f"serve.max_chars={args.max_chars}"]
    if max_batch_tokens is not None:
        sets.append(f"serve.max_batch_tokens={max_batch_tokens}")
    if args.int8:
        sets.append("serve.int8=true")
    if args.index:
        sets.append(f"serve.index={args.index}")
    if args.rerank:
        sets.append(f"serve.rerank={args.rerank}")
    if args.threads:
        sets.append(f"serve.threads={args.threads}")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    log = open(Path(args.out) / f"server-{config_name(*config).replace(':', '-')}.log", "w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_tasks.py"), "--task", "serve", "--set", *sets],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    return proc, log


def stop_server(proc, log):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def wait_ready(url, proc, timeout=300):
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} (see its log)")
        try:
            r = httpx.get(url + "/healthz", timeout=2)
            if r.status_code == 200:
                return r.json()
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError("server did not become ready")


def percentile(values, q):
    if not values:
        return float("nan")
    s = sorted(values)
    i = min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))
    return s[i]


async def run_clients(url, path, bodies, clients, seconds, max_requests):
    """Closed-loop clients; returns (latencies of successes, errors, elapsed seconds, sent)."""
    import httpx

    latencies, errors = [], {}
    sent = 0
    stop_at = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(cid, http):
        nonlocal sent
        i = cid
        while time.perf_counter() < stop_at and sent < max_requests:
            sent += 1
            body = bodies[i % len(bodies)]
            i += clients
            t0 = time.perf_counter()
            try:
                r = await http.post(url + path, content=body, headers={"content-type": "application/json"})
                ok = r.status_code == 200
                key = str(r.status_code)
            except httpx.HTTPError as e:
                ok, key = False, type(e).__name__
            if ok:
                latencies.append(time.perf_counter() - t0)
            else:
                errors[key] = errors.get(key, 0) + 1

    t_start = time.perf_counter()
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        await asyncio.gather(*(client(c, http) for c in range(clients)))
    return latencies, errors, time.perf_counter() - t_start, sent


def reads_pair_jointly(kind):
    """Whether the served kind reads a pair as one row, from the kind's own class (the registry)."""
    from modeling.model_dir import discover_kinds

    return discover_kinds()[kind].joint_pair()


def bad_bodies(joint_pair, max_texts, max_chars):
    """(body, the status it must get): the classes of bad input of docs/serving.md's reliability section.
    `joint_pair`: the model reads a pair as one row (a cross-encoder's `predict_ids` inputs)."""
    pair = {"text_a": "x", "text_b": "y"}
    ids = ({"input_ids": [2, "NaN"], "token_type_ids": [0, 0], "attention_mask": [1, 1]} if joint_pair
           else {"x_ids": [2, "NaN"], "x_mask": [1, 1], "y_ids": [2], "y_mask": [1]})
    return [
        ("{not json", 400), ('"a string"', 400), ("[" * 50_000 + "]" * 50_000, 400),
        ('{"instances":' + "[" * 50_000 + "]" * 50_000 + "}", 400),
        ('{"instances":[{"text_a":"\\ud800","text_b":"y"}]}', 400),
        (json.dumps({"signature_name": "predict_ids", "instances": [ids]}).replace('"NaN"', "NaN"), 400),
        (json.dumps({"instances": [{"text_a": "x" * (max_chars + 1), "text_b": "y"}]}), 400),
        (json.dumps({"instances": [pair] * (max_texts + 1)}), 400),
        (json.dumps({"instances": [{"text_a": "x"}]}), 400),
        (json.dumps({"instances": [{"text_a": 3, "text_b": None}]}), 400),
        (json.dumps({"instances": []}), 400), (json.dumps({"instances": [pair], "extra": 1}), 400),
        (json.dumps({"signature_name": "nope", "instances": [pair]}), 404),
        (json.dumps({"instances": [{"text_a": {"b64": "!!"}, "text_b": "y"}]}), 400),
    ]


def max_bodies(max_texts, max_chars, n=4):
    """Requests at the limits: max_texts pairs of max_chars characters, English and Chinese."""
    out = []
    for lang in ("en", "zh"):
        a, b = sample_texts(lang=lang)
        sep = " " if lang == "en" else ""
        for r in range(n // 2):
            def text(pool, i):
                t, j = "", i
                while len(t) < max_chars:
                    t, j = t + pool[j % len(pool)] + sep, j + 1
                return t[:max_chars]
            out.append(json.dumps({"instances": [{"text_a": text(a, 7 * i + r), "text_b": text(b, 11 * i + r)}
                                                 for i in range(max_texts)]}, ensure_ascii=False))
    return out


async def run_groups(url, path, groups, seconds):
    """Closed-loop clients in groups {name: (clients, [(body, expected status)])} for `seconds`.
    Returns {name: {"codes": {status: n}, "latencies": [s of expected answers], "unexpected": {what: n}}}."""
    import httpx

    stop_at = time.perf_counter() + seconds
    total = sum(n for n, _ in groups.values())
    stats = {g: {"codes": {}, "latencies": [], "unexpected": {}} for g in groups}

    async def client(group, cid, bodies, http):
        st, i = stats[group], cid
        while time.perf_counter() < stop_at:
            body, want = bodies[i % len(bodies)]
            i += 1
            t0 = time.perf_counter()
            try:
                r = await http.post(url + path, content=body.encode("utf-8"),
                                    headers={"content-type": "application/json"})
                got = r.status_code
                ok = got == want and set(r.json()) == ({"predictions"} if want == 200 else {"error"})
            except (httpx.HTTPError, ValueError) as e:
                got, ok = type(e).__name__, False
            st["codes"][str(got)] = st["codes"].get(str(got), 0) + 1
            if ok:
                st["latencies"].append(time.perf_counter() - t0)
            else:
                st["unexpected"][f"{got} (wanted {want})"] = st["unexpected"].get(f"{got} (wanted {want})", 0) + 1

    limits = httpx.Limits(max_connections=total, max_keepalive_connections=total)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        await asyncio.gather(*(client(g, c, bodies, http) for g, (n, bodies) in groups.items() for c in range(n)))
    return stats


def proc_memory_mb(pid):
    status = Path(f"/proc/{pid}/status").read_text()
    return {k: int(status.split(k + ":")[1].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}


def measure_mix(args, config, good, path):
    """The --mix run of one configuration: good clients alone, then with bad and maximum-size clients."""
    from serve.task import free_port

    port = free_port(HOST)
    url = f"http://{HOST}:{port}"
    proc, log = start_server(args, config, port)
    try:
        health = wait_ready(url, proc)
        n_good = args.clients - args.clients // 2
        n_bad = args.clients // 2 - args.clients // 4
        good = [(b, 200) for b in good]
        big = [(b, 200) for b in max_bodies(args.max_texts, args.max_chars)]
        asyncio.run(run_groups(url, path, {"good": (n_good, good), "max-size": (1, big[:1])}, args.warmup))
        mem0 = proc_memory_mb(proc.pid)
        alone = asyncio.run(run_groups(url, path, {"good": (n_good, good)}, args.seconds))
        lines0 = Path(log.name).read_text(errors="replace").count("\n")
        rows0, batches0 = batch_stats(url, "predict_ids")
        mixed = asyncio.run(run_groups(url, path, {"good": (n_good, good), "bad": (n_bad, bad_bodies(
            reads_pair_jointly(health["kind"]), args.max_texts, args.max_chars)), "max-size": (args.clients // 4, big)}, args.seconds))
        rows1, batches1 = batch_stats(url, "predict_ids")
        mem1 = proc_memory_mb(proc.pid)
    finally:
        stop_server(proc, log)
    lines = Path(log.name).read_text(errors="replace").count("\n") - lines0

    def summary(st):
        lat = st["latencies"]
        return {"codes": st["codes"], "unexpected": st["unexpected"], "answered_as_expected": len(lat),
                "p50_ms": 1000 * percentile(lat, 50), "p99_ms": 1000 * percentile(lat, 99)}

    return {"config": config_name(*config), "max_batch": config[0], "max_wait_ms": config[1],
            "max_batch_tokens": config[2], "seconds": args.seconds, "server": health,
            "alone": {"good": summary(alone["good"])}, "mixed": {g: summary(st) for g, st in mixed.items()},
            "mixed_mean_batch_rows": (rows1 - rows0) / max(batches1 - batches0, 1),
            "server_memory_mb": {"before": mem0, "after": mem1}, "server_log_lines_mixed": lines}


def markdown_mix(r, args):
    m = r["mixed"]
    unexpected = sum(sum(g["unexpected"].values()) for g in m.values())
    non_4xx = sum(n for g in m.values() for code, n in g["codes"].items()
                  if not (code.isdigit() and (400 <= int(code) < 500 or code == "200")))
    tokens = {None: "the server's default", 0: "0 (rows only)"}.get(r["max_batch_tokens"], r["max_batch_tokens"])
    lines = [f"**--mix** ({args.clients} clients, {args.seconds:g} s a phase, max_batch {r['max_batch']}, "
             f"max_batch_tokens {tokens}, limits {args.max_texts} texts x {args.max_chars} characters)", "",
             "| phase | clients | requests | status codes | p50 ms | p99 ms | unexpected |", "|---|---|---|---|---|---|---|"]
    for phase, groups in (("alone", r["alone"]), ("mixed", m)):
        for g, st in groups.items():
            codes = ", ".join(f"{c}: {n}" for c, n in sorted(st["codes"].items()))
            lat = f"{st['p50_ms']:.0f} | {st['p99_ms']:.0f}" if g != "bad" else "- | -"
            lines.append(f"| {phase} | {g} | {sum(st['codes'].values())} | {codes} | {lat} | "
                         f"{sum(st['unexpected'].values())} |")
    mem = r["server_memory_mb"]
    lines += ["", f"non-4xx errors: {non_4xx}; unexpected answers: {unexpected}; failed good requests: "
                  f"{sum(m['good']['unexpected'].values()) + sum(m['max-size']['unexpected'].values())}; "
                  f"server memory: peak {mem['after']['VmHWM']:.0f} MB (resident {mem['before']['VmRSS']:.0f} MB "
                  f"before the mixed phase, {mem['after']['VmRSS']:.0f} MB after); server log lines in the mixed "
                  f"phase: {r['server_log_lines_mixed']}; mean rows per model call in the mixed phase: "
                  f"{r['mixed_mean_batch_rows']:.1f}"]
    return "\n".join(lines)


def batch_stats(url, function):
    import httpx

    text = httpx.get(url + "/metrics", timeout=10).text
    total = re.search(rf'textmatch_batch_rows_sum{{function="{function}"}} ([\d.]+)', text)
    count = re.search(rf'textmatch_batch_rows_count{{function="{function}"}} (\d+)', text)
    return (float(total.group(1)), int(count.group(1))) if total and count else (0.0, 0)


def measure(args, config, bodies, path, function):
    from serve.task import free_port

    port = free_port(HOST)
    url = f"http://{HOST}:{port}"
    proc, log = start_server(args, config, port)
    try:
        health = wait_ready(url, proc)
        asyncio.run(run_clients(url, path, bodies, args.clients, args.warmup, 10 * args.clients))  # warm-up
        rows0, batches0 = batch_stats(url, function)
        lat, errors, elapsed, sent = asyncio.run(run_clients(url, path, bodies, args.clients, args.seconds,
                                                             args.max_requests))
        rows1, batches1 = batch_stats(url, function)
    finally:
        stop_server(proc, log)
    return {"config": config_name(*config), "max_batch": config[0], "max_wait_ms": config[1],
            "max_batch_tokens": config[2], "requests": sent, "ok": len(lat),
            "errors": errors, "seconds": round(elapsed, 2), "throughput_rps": len(lat) / elapsed,
            "p50_ms": 1000 * percentile(lat, 50), "p95_ms": 1000 * percentile(lat, 95),
            "p99_ms": 1000 * percentile(lat, 99),
            "mean_batch_rows": (rows1 - rows0) / max(batches1 - batches0, 1), "batched_function": function,
            "server": health}


def markdown(results, args, title):
    lines = [f"**{title}** ({args.clients} clients, {args.seconds:g} s per configuration)", "",
             "| max_batch | max_wait_ms | max_batch_tokens | requests/s | p50 ms | p95 ms | p99 ms | errors | "
             "mean batch rows |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        errors = sum(r["errors"].values())
        tokens = "default" if r["max_batch_tokens"] is None else r["max_batch_tokens"]
        lines.append(f"| {r['max_batch']} | {r['max_wait_ms']:g} | {tokens} | {r['throughput_rps']:.1f} | {r['p50_ms']:.1f} | "
                     f"{r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {errors} | {r['mean_batch_rows']:.1f} |")
    if len(results) > 1:
        a, b = results[0], results[-1]
        lines += ["", f"micro-batching vs batch-1: throughput x{a['throughput_rps'] / max(b['throughput_rps'], 1e-9):.2f}, "
                      f"p99 x{a['p99_ms'] / max(b['p99_ms'], 1e-9):.2f}"]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="export directory or model directory to serve")
    p.add_argument("--backend", default="onnx", choices=("onnx", "tf"))
    p.add_argument("--int8", action="store_true", help="serve the export's int8 copy (model.fused.int8.onnx, else model.int8.onnx)")
    p.add_argument("--index", help="index directory: load-test POST /v1/search instead of :predict")
    p.add_argument("--rerank", help="serve.rerank for /v1/search (virt, or a cross-encoder dir)")
    p.add_argument("--k", type=int, default=10, help="candidates per search (default 10)")
    p.add_argument("--pairs", type=int, default=1, help="text pairs per :predict request (default 1)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=20.0, help="measured seconds per configuration")
    p.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds per configuration")
    p.add_argument("--max-requests", type=int, default=20000, help="cap on requests per configuration")
    p.add_argument("--configs", help="max_batch:max_wait_ms[:max_batch_tokens],... (default 32:5,1:0; "
                   "--mix: 32:5)")
    p.add_argument("--threads", type=int, help="serve.threads (onnxruntime intra-op threads)")
    p.add_argument("--lang", default="en", choices=("en", "zh", "mixed"), help="sample texts' language")
    p.add_argument("--mix", action="store_true", help="reliability run: good, bad and maximum-size clients")
    p.add_argument("--max-texts", type=int, default=256, help="serve.max_texts (default 256)")
    p.add_argument("--max-chars", type=int, default=2000, help="serve.max_chars (default 2000)")
    p.add_argument("--out", default=None, help="output directory (default runs/load/<stamp>)")
    args = p.parse_args(argv)
    if args.seconds <= 0 or args.seconds > 600 or args.clients < 1 or args.clients > 256:
        p.error("--seconds must be in (0, 600] and --clients in [1, 256]")
    args.out = args.out or str(ROOT / "runs" / "load" / datetime.now().strftime("%Y%m%d-%H%M%S"))
    Path(args.out).mkdir(parents=True, exist_ok=True)

    a, b = sample_texts(lang=args.lang)
    if args.index:
        path, function = "/v1/search", "score" if args.rerank == "virt" else "predict_ids" if args.rerank else "encode_ids"
        bodies = [json.dumps({"query": q, "k": args.k}) for q in a]
        title = f"POST /v1/search, k={args.k}, rerank={args.rerank or 'none'} ({args.model})"
    else:
        path, function = f"/v1/models/{served_name(args.model)}:predict", "predict_ids"
        bodies = [json.dumps({"instances": [{"text_a": a[(i + j) % len(a)], "text_b": b[(i + j) % len(b)]}
                                            for j in range(args.pairs)]}) for i in range(len(a))]
        title = f":predict serving_default, {args.pairs} pair(s)/request ({args.model}{', int8' if args.int8 else ''})"
    configs = parse_configs(args.configs or ("32:5" if args.mix else "32:5,1:0"))
    if args.mix:
        if args.index:
            p.error("--mix load-tests :predict; leave out --index")
        runs, loadavg = [], [os.getloadavg()]
        for config in configs:
            runs.append(measure_mix(args, config, bodies, path))
            loadavg.append(os.getloadavg())
            print(f"{runs[-1]['config']}: good p99 alone {runs[-1]['alone']['good']['p99_ms']:.0f} ms, mixed "
                  f"{runs[-1]['mixed']['good']['p99_ms']:.0f} ms", flush=True)
        table = "\n\n".join(markdown_mix(r, args) for r in runs)
        table += "\n\nload average (1, 5, 15 min) at the start and after each configuration: " + "; ".join(
            ", ".join(f"{x:.1f}" for x in la) for la in loadavg)
        print("\n" + table)
        report = {"date": datetime.now().isoformat(timespec="seconds"), "cpus": os.cpu_count(),
                  "loadavg": loadavg, "title": title, "args": vars(args), "mix": runs}
        (Path(args.out) / "load.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
        (Path(args.out) / "load.md").write_text(table + "\n", encoding="utf-8")
        return 0
    results = []
    for config in configs:
        results.append(measure(args, config, bodies, path, function))
        r = results[-1]
        print(f"{r['config']}: {r['throughput_rps']:.1f} req/s, p99 {r['p99_ms']:.1f} ms, "
              f"errors {sum(r['errors'].values())}, mean batch {r['mean_batch_rows']:.1f}", flush=True)
    table = markdown(results, args, title)
    print("\n" + table)
    report = {"date": datetime.now().isoformat(timespec="seconds"), "cpus": os.cpu_count(), "title": title,
              "args": vars(args), "results": results}
    (Path(args.out) / "load.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (Path(args.out) / "load.md").write_text(table + "\n", encoding="utf-8")
    return 0


def served_name(model):
    """The name the server gives `model` (serve.name unset): the export's name, else the directory's."""
    from runtime.backends import default_name, export_info, is_export_dir, read_kind

    if is_export_dir(model):
        return export_info(model)[0]
    return default_name(model, read_kind(model))


if __name__ == "__main__":
    sys.exit(main())
