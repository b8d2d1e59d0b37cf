#!/usr/bin/env python3
"""gRPC learning benchmark: remote workers' gradient updates into `hyprstream serve`, and gRPC against HTTP
streaming. Prints one JSON object.

  - UpdateWeights throughput: submissions/s of `--entries` (1,000) coordinates each, from 1 / 4 / 16 client
    streams, per fsync policy; a call's time ends with its summary, which waits until every update it sent is
    in the write-ahead log (acknowledged).
  - Update latency, one update at a time over StreamEvents: submit -> durable and submit -> applied, p50 / p99,
    and the share of updates that the very next Generate with the adapter already runs on.
  - StreamGenerate against SSE (/v1/completions, stream) at concurrency 32: output tokens/s and inter-token
    latency of the same greedy requests.

  .venv/bin/python bench/grpc_learning_bench.py [--model PATH] [--streams 1,4,16] [--fsync always,never]
                                                [--out FILE]
"""
import argparse
import json
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
from grpc_tools import protoc
from safetensors.numpy import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from random_model import random_model_folder  # noqa: E402
from serving_bench import ROOT, machine, percentile, resolve_default_model, run_level  # noqa: E402

CLI = ROOT / "build" / "src" / "hyprstream"
MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def load_stubs():
    out = Path(tempfile.mkdtemp(prefix="hyprstream-stubs-"))
    protos = sorted(str(p) for p in (ROOT / "proto" / "hyprstream" / "v1").glob("*.proto"))
    assert protoc.main(["protoc", f"-I{ROOT / 'proto'}", f"--python_out={out}", f"--grpc_python_out={out}",
                        *protos]) == 0
    sys.path.insert(0, str(out))
    from hyprstream.v1 import adapters_pb2, adapters_pb2_grpc, inference_pb2, inference_pb2_grpc, learning_pb2, \
        learning_pb2_grpc
    return adapters_pb2, adapters_pb2_grpc, inference_pb2, inference_pb2_grpc, learning_pb2, learning_pb2_grpc


apb, agrpc, ipb, igrpc, lpb, lgrpc = load_stubs()


class Served:
    """`hyprstream serve` on free ports with a config of its own."""

    def __init__(self, model, adapter_dir, config_text):
        config = Path(adapter_dir) / "bench.toml"
        config.write_text(config_text)
        self.proc = subprocess.Popen([str(CLI), "serve", "--model", str(model), "--port", "0", "--grpc-port", "0",
                                      "--adapter-dir", str(adapter_dir), "--config", str(config)],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for line in self.proc.stdout:
            if "listening on grpc://" in line:
                self.grpc = line.strip().split("grpc://")[1]
            if "listening on http://" in line:
                self.http_port = int(line.strip().rsplit(":", 1)[1])
                break
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()
        self.channel = grpc.insecure_channel(self.grpc, options=[("grpc.max_send_message_length", 64 << 20)])

    def stop(self):
        self.channel.close()
        self.proc.terminate()
        self.proc.wait(timeout=300)


def pattern(adapter_dir, domain, layers):
    """(layer, module, row, col) of every A entry inside the adapter's pattern (A is random on it in version 1)."""
    out = Path(adapter_dir) / f"{domain}-export"
    subprocess.run([str(CLI), "adapters", "export", domain, str(out), "--adapter-dir", str(adapter_dir)], check=True,
                   capture_output=True)
    values = load_file(out / "adapter_model.safetensors")
    coords = []
    for layer in range(layers):
        for module in MODULES:
            group = "self_attn" if module in MODULES[:4] else "mlp"
            key = f"base_model.model.model.layers.{layer}.{group}.{module}.lora_A.weight"
            if key in values:
                coords += [(layer, module, int(r), int(c)) for r, c in np.argwhere(values[key] != 0)]
    return coords


def make_updates(coords, domain, n, entries, prefix, rng):
    """Updates serialized once, without their base version (Newest.stamped appends it): the senders' Python
    then costs a few microseconds per update, and what is measured is the server."""
    updates = []
    for i in range(n):
        picks = sorted(rng.choice(len(coords), size=entries, replace=False))
        values = rng.normal(0, 1e-3, size=entries).astype(np.float32)
        groups = {}
        for p, v in zip(picks, values):
            layer, module, row, col = coords[p]
            g = groups.setdefault((layer, module), ([], [], []))
            g[0].append(row)
            g[1].append(col)
            g[2].append(float(v))
        modules = [lpb.ModuleGradient(layer=l, module=m, matrix="A", rows=r, cols=c, values=v)
                   for (l, m), (r, c, v) in groups.items()]
        updates.append(lpb.GradientUpdate(id=f"{prefix}-{i}", domain=domain, client_id="bench",
                                          modules=modules).SerializeToString())
    return updates


def varint(v):
    out = bytearray()
    while True:
        out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
        v >>= 7
        if not v:
            return bytes(out)


class Newest:
    """The domain's newest version, followed over WatchVersions as a worker computing gradients would (the
    server refuses a base version it no longer keeps). Appending field 3 (base_version) to serialized bytes
    stamps an update: protobuf takes fields in any order."""

    def __init__(self, served, domain):
        self.version = 1
        self.watch = agrpc.AdaptersStub(served.channel).WatchVersions(apb.WatchVersionsRequest(domain=domain))
        threading.Thread(target=self._follow, daemon=True).start()

    def _follow(self):
        try:
            for v in self.watch:
                self.version = max(self.version, v.version)
        except grpc.RpcError:
            pass  # cancelled by close()

    def stamped(self, updates):
        for u in updates:
            yield u + b"\x18" + varint(self.version)

    def close(self):
        self.watch.cancel()


def throughput(served, coords, streams, n, entries, rng):
    domain = f"tp{streams}"
    agrpc.AdaptersStub(served.channel).Create(apb.CreateAdapterRequest(name=domain, seed=0))
    updates = make_updates(coords, domain, n, entries, domain, rng)
    summaries, errors = [None] * streams, []
    newest = Newest(served, domain)
    send = served.channel.stream_unary("/hyprstream.v1.Learning/UpdateWeights",  # bytes as they are
                                       response_deserializer=lpb.UpdateWeightsSummary.FromString)

    def client(k):
        try:
            summaries[k] = send(newest.stamped(updates[k::streams]))
        except grpc.RpcError as e:
            errors.append(f"{e.code()}: {e.details()}")
    threads = [threading.Thread(target=client, args=(k,)) for k in range(streams)]
    print(f"sending {n} updates over {streams} streams", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    newest.close()
    accepted = sum(s.accepted for s in summaries if s)
    trainer = agrpc.AdaptersStub(served.channel).Get(apb.GetAdapterRequest(name=domain)).trainer
    return {"streams": streams, "submissions": n, "entries": entries, "accepted": accepted, "errors": errors[:3],
            "seconds": wall, "submissions_per_s": accepted / wall, "batches": trainer.batches,
            "batch_update_ms_p50": trainer.update_ms_p50, "batch_update_ms_p99": trainer.update_ms_p99}


def latency(served, coords, n, entries, rng):
    """One update at a time over StreamEvents: submit -> durable / applied, p50 / p99; then as many again, each
    followed by a Generate with the adapter, the share of them that runs on the version just announced applied.
    The two are apart because a generation's own work on the same cores would be timed as the update's."""
    domain = "latency"
    agrpc.AdaptersStub(served.channel).Create(apb.CreateAdapterRequest(name=domain, seed=0))
    updates = make_updates(coords, domain, 2 * n, entries, domain, rng)
    sent, replies = queue.Queue(), queue.Queue()

    def requests():
        while (item := sent.get()) is not None:
            yield item
    stream = lgrpc.LearningStub(served.channel).StreamEvents(requests())
    threading.Thread(target=lambda: [replies.put((time.perf_counter(), r)) for r in stream], daemon=True).start()
    infer = igrpc.InferenceStub(served.channel)
    probe = ipb.GenerateRequest(text="Hi", adapter=domain, sampling=ipb.Sampling(temperature=0, max_tokens=1))
    durable, applied, visible = [], [], 0
    version = 1
    for k, u in enumerate(map(lpb.GradientUpdate.FromString, updates)):
        u.base_version = version
        t0 = time.perf_counter()
        sent.put(lpb.StreamEventsRequest(event=lpb.Event(domain=domain, gradient=u)))
        heard = {}
        while len(heard) < 2:  # with fsync batch, "durable" may come after "applied"
            t, r = replies.get(timeout=60)
            if r.HasField("durable") and u.id in r.durable.ids:
                heard["durable"] = t - t0
            if r.HasField("applied") and u.id in r.applied.ids:
                heard["applied"] = t - t0
                version = r.applied.version
            if r.HasField("ack") and r.ack.status != lpb.EVENT_STATUS_ACCEPTED:
                raise RuntimeError(f"update refused: {r.ack.error}")
        if k < n:
            durable.append(heard["durable"])
            applied.append(heard["applied"])
        else:
            visible += infer.Generate(probe).adapter.version >= version  # the very next request
    sent.put(None)
    ms = lambda xs, q: 1000 * percentile(xs, q)  # noqa: E731
    return {"updates": n, "entries": entries,
            "durable_ms_p50": ms(durable, 0.5), "durable_ms_p99": ms(durable, 0.99),
            "applied_ms_p50": ms(applied, 0.5), "applied_ms_p99": ms(applied, 0.99),
            "next_request_sees_the_update": visible / n}


def grpc_stream(served, prompt, max_tokens):
    """One StreamGenerate call, timed as serving_bench.stream_completion times an HTTP stream."""
    t0 = time.perf_counter()
    times = []
    request = ipb.GenerateRequest(text=prompt, sampling=ipb.Sampling(temperature=0, max_tokens=max_tokens,
                                                                     ignore_eos=True))
    try:
        for chunk in igrpc.InferenceStub(served.channel).StreamGenerate(request):
            if chunk.HasField("token"):
                times.append(time.perf_counter())
    except grpc.RpcError as e:
        return {"error": f"{e.code()}"}
    if not times:
        return {"error": "no tokens"}
    n = len(times)
    return {"ttft": times[0] - t0, "itl": (times[-1] - times[0]) / (n - 1) if n > 1 else None, "tokens": n,
            "e2e": times[-1] - t0}


def streaming_overhead(served, concurrency, max_tokens):
    prompt = lambda i: f"Request {i}: tell me a story about a river"  # noqa: E731
    body = lambda i: {"prompt": prompt(i), "max_tokens": max_tokens,  # noqa: E731
                      "temperature": 0, "ignore_eos": True, "stream": True}
    requests = 2 * concurrency
    return {"grpc_stream_generate": run_level(served, concurrency, requests, prompt,
                                              lambda s, p: grpc_stream(s, p, max_tokens)),
            "http_sse": run_level(served.http_port, concurrency, requests, body)}


def config_text(fsync, batch_events, group_commit_us=None):
    """The server's defaults but for the policy, the batch size (and the group commit wait, when given), and 16
    versions kept (at ~100 versions/s, a gradient may be computed on a version up to 0.16 s old)."""
    wait = "" if group_commit_us is None else f"group_commit_us = {group_commit_us}\n"
    return (f'[learning]\nfsync = "{fsync}"\nbatch_events = {batch_events}\n{wait}'
            f"[adapters]\nkeep_versions = 16\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model path (default: the bundled SmolLM2-135M GGUF)")
    ap.add_argument("--random-config", default=None,
                    help="random weights of a reference config instead (qwen3-1.7b: ../shared/reference), kept in "
                         "~/.cache/hyprstream-bench/NAME")
    ap.add_argument("--streams", default="1,4,16")
    ap.add_argument("--fsync", default="always,batch,never")
    ap.add_argument("--submissions", type=int, default=2000)
    ap.add_argument("--entries", type=int, default=1000)
    ap.add_argument("--batch-events", type=int, default=64)
    ap.add_argument("--group-commit-us", type=int, default=None, help="learning.group_commit_us (default: the server's)")
    ap.add_argument("--latency-updates", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    model = args.model or resolve_default_model()
    if args.random_config:
        model = random_model_folder(args.random_config, Path.home() / ".cache" / "hyprstream-bench" / args.random_config)
    rng = np.random.default_rng(0)
    result = {"machine": machine(), "model": str(model), "args": vars(args), "update_weights": [], "latency": {}}
    for fsync in args.fsync.split(","):
        with tempfile.TemporaryDirectory() as adir:
            served = Served(model, adir, config_text(fsync, args.batch_events, args.group_commit_us))
            try:
                agrpc.AdaptersStub(served.channel).Create(apb.CreateAdapterRequest(name="shape", seed=0))  # every adapter here: seed 0, one pattern
                layers = 64
                coords = pattern(adir, "shape", layers)
                for streams in map(int, args.streams.split(",")):
                    r = throughput(served, coords, streams, args.submissions, args.entries, rng)
                    r["fsync"] = fsync
                    result["update_weights"].append(r)
                    print(json.dumps(r), file=sys.stderr)
                result["latency"][fsync] = latency(served, coords, args.latency_updates, args.entries, rng)
                print(json.dumps(result["latency"][fsync]), file=sys.stderr)
                if fsync == args.fsync.split(",")[0]:
                    result["streaming"] = streaming_overhead(served, args.concurrency, args.max_tokens)
            finally:
                served.stop()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
