"""`hyprstream serve`'s gRPC API (proto/hyprstream/v1) with grpcio clients generated from the proto files: every
RPC, greedy answers equal to the HTTP API's and the CLI's, the standard health service and reflection, remote
workers' gradient updates equal to `hyprstream train --deterministic` on the same updates in the server's batch
order, and bad input refused with a status that names it while other streams go on."""
import json
import os
import pty
import queue
import random
import shutil
import signal
import subprocess
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from safetensors.numpy import load_file

from conftest import CLI, cli_ok, run_cli
from grpc_stubs import adapters_pb2 as apb
from grpc_stubs import adapters_pb2_grpc as agrpc
from grpc_stubs import common_pb2 as cpb
from grpc_stubs import inference_pb2 as ipb
from grpc_stubs import inference_pb2_grpc as igrpc
from grpc_stubs import learning_pb2 as lpb
from grpc_stubs import learning_pb2_grpc as lgrpc
from server import Server, write_config

PROMPT = "The three primary colours are"


@pytest.fixture(scope="module")
def served(default_model_path, tmp_path_factory):
    adir = tmp_path_factory.mktemp("grpc-adapters")
    config = write_config(tmp_path_factory.mktemp("grpc-config") / "c.toml", grpc={"max_message_bytes": 1 << 20})
    with Server("--model", default_model_path, adapter_dir=adir, config=config) as srv:
        channel = grpc.insecure_channel(srv.grpc_target)
        yield srv, channel, adir
        channel.close()
        assert srv.stop() == 0, "".join(srv.log)


def greedy(max_tokens, **fields):
    return ipb.GenerateRequest(sampling=ipb.Sampling(temperature=0, max_tokens=max_tokens), **fields)


def status_of(call):
    """(code, details, hs-error-kind) of a call that must fail."""
    with pytest.raises(grpc.RpcError) as e:
        call()
    kind = dict(e.value.trailing_metadata() or ()).get("hs-error-kind")
    return e.value.code(), e.value.details(), kind


def test_health_service_answers_serving_for_the_server_and_each_service(served):
    _, channel, _ = served
    health = health_pb2_grpc.HealthStub(channel)
    for name in ["", "hyprstream.v1.Inference", "hyprstream.v1.Adapters", "hyprstream.v1.Learning"]:
        assert health.Check(health_pb2.HealthCheckRequest(service=name)).status == \
            health_pb2.HealthCheckResponse.SERVING, name
    code, _, _ = status_of(lambda: health.Check(health_pb2.HealthCheckRequest(service="no.such.Service")))
    assert code == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_every_service_for_generic_clients(served):
    _, channel, _ = served
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for s in next(answers).list_services_response.service}
    assert {"hyprstream.v1.Inference", "hyprstream.v1.Adapters", "hyprstream.v1.Learning",
            "grpc.health.v1.Health"} <= names
    described = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="hyprstream.v1.Learning")]))
    assert next(described).file_descriptor_response.file_descriptor_proto, "no descriptor for hyprstream.v1.Learning"


def test_stream_generate_greedy_equals_http_generate_and_the_cli(served, default_model_path):
    srv, channel, _ = served
    chunks = list(igrpc.InferenceStub(channel).StreamGenerate(greedy(16, text=PROMPT)))
    tokens = [c.token for c in chunks[:-1]]
    finish = chunks[-1].finish
    assert all(c.HasField("token") for c in chunks[:-1]) and chunks[-1].HasField("finish")
    assert "".join(t.text for t in tokens) + finish.tail == finish.text
    assert finish.usage.completion_tokens == len(tokens) and finish.finish_reason in ("length", "stop")

    status, http, _ = srv.request("POST", "/v1/generate", {"prompt": PROMPT, "max_tokens": 16, "temperature": 0})
    assert status == 200, http
    assert finish.text == http["text"]
    assert [t.id for t in tokens] == [t["id"] for t in http["tokens"]]
    assert [t.logprob for t in tokens] == pytest.approx([t["logprob"] for t in http["tokens"]], abs=1e-6)

    cli = run_cli("generate", "--model", default_model_path, "-p", PROMPT, "--temperature", "0", "--max-tokens", 16,
                  "--json")
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout.splitlines()[-1])["text"] == finish.text

    whole = igrpc.InferenceStub(channel).Generate(greedy(16, text=PROMPT))
    assert whole.text == finish.text and [t.id for t in whole.tokens] == [t.id for t in tokens]


def test_generate_from_chat_messages_and_token_ids_equals_the_openai_routes(served):
    srv, channel, _ = served
    stub = igrpc.InferenceStub(channel)
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a fruit."}]
    chat = stub.Generate(greedy(12, chat=ipb.Chat(messages=[cpb.ChatMessage(**m) for m in messages])))
    status, http, _ = srv.request("POST", "/v1/chat/completions",
                                  {"messages": messages, "max_tokens": 12, "temperature": 0})
    assert status == 200, http
    assert chat.text == http["choices"][0]["message"]["content"]

    ids = [t.id for t in stub.Generate(greedy(4, text=PROMPT)).tokens]
    by_ids = stub.Generate(greedy(6, token_ids=ipb.TokenIds(ids=ids)))
    status, http, _ = srv.request("POST", "/v1/generate", {"prompt": ids, "max_tokens": 6, "temperature": 0})
    assert by_ids.text == http["text"] and by_ids.usage.prompt_tokens == len(ids)


def test_generate_refuses_bad_requests_with_a_status_that_names_the_problem(served):
    _, channel, _ = served
    stub = igrpc.InferenceStub(channel)
    cases = [
        (ipb.GenerateRequest(), grpc.StatusCode.INVALID_ARGUMENT, "needs a prompt"),
        (greedy(4, text=PROMPT, adapter="no-such-domain"), grpc.StatusCode.NOT_FOUND, "no-such-domain"),
        (ipb.GenerateRequest(text=PROMPT, sampling=ipb.Sampling(temperature=float("nan"))),
         grpc.StatusCode.INVALID_ARGUMENT, "'temperature' must be finite"),
        (greedy(4, token_ids=ipb.TokenIds(ids=[1, 10_000_000])), grpc.StatusCode.INVALID_ARGUMENT, "10000000"),
        (greedy(1 << 30, text=PROMPT), grpc.StatusCode.OUT_OF_RANGE, "maximum context length"),
        (greedy(4, text="x" * (2 << 20)), grpc.StatusCode.RESOURCE_EXHAUSTED, ""),  # over max_message_bytes
    ]
    for request, code, words in cases:
        got, details, kind = status_of(lambda: stub.Generate(request))
        assert got == code and words in details, (got, details)
    assert status_of(lambda: stub.Generate(cases[4][0]))[2] == "context_overflow"
    assert stub.Generate(greedy(2, text=PROMPT)).usage.completion_tokens == 2  # still serving


def running(srv):
    return srv.request("GET", "/v1/stats")[1]["running"]


def test_a_cancelled_stream_and_a_deadline_mid_stream_free_their_slots(served):
    srv, channel, _ = served
    stub = igrpc.InferenceStub(channel)
    long = ipb.GenerateRequest(text=PROMPT, sampling=ipb.Sampling(temperature=0, max_tokens=1500, ignore_eos=True))
    stream = stub.StreamGenerate(long)
    for _, _ in zip(range(3), stream):
        pass
    stream.cancel()
    with pytest.raises(grpc.RpcError) as e:
        list(stub.StreamGenerate(long, timeout=1.0))
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    deadline = time.time() + 30
    while running(srv) and time.time() < deadline:
        time.sleep(0.1)
    assert running(srv) == 0, "a cancelled or expired stream kept its slot"
    assert stub.Generate(greedy(2, text=PROMPT)).usage.completion_tokens == 2


def test_every_adapters_rpc_and_watch_versions_with_train(served):
    _, channel, _ = served
    adapters, learning = agrpc.AdaptersStub(channel), lgrpc.LearningStub(channel)
    made = adapters.Create(apb.CreateAdapterRequest(name="atlas", seed=7))
    assert (made.name, made.version, made.rank, made.sparsity) == ("atlas", 1, 16, pytest.approx(0.99))
    assert len(made.targets) == 7 and 0 < made.density < 0.05
    assert status_of(lambda: adapters.Create(apb.CreateAdapterRequest(name="atlas")))[0] == \
        grpc.StatusCode.ALREADY_EXISTS
    assert "atlas" in [a.name for a in adapters.List(apb.ListAdaptersRequest()).adapters]

    watch = adapters.WatchVersions(apb.WatchVersionsRequest(domain="atlas"))
    published = queue.Queue()

    def follow():
        try:
            for v in watch:
                published.put(v)
        except grpc.RpcError as e:  # cancelled at the end of the test
            published.put(e.code())
    threading.Thread(target=follow, daemon=True).start()
    time.sleep(1.0)  # the subscription is made when the call starts on the server
    example = lpb.Example(id="atlas-1", prompt="Q: What is the capital of Atlantis?\nA:", completion=" Poseidonia.")
    trained = learning.Train(lpb.TrainRequest(domain="atlas", examples=[example], wait=lpb.WAIT_APPLIED))
    assert [(r.id, r.status) for r in trained.results] == [("atlas-1", lpb.EVENT_STATUS_ACCEPTED)]
    assert trained.version == 2
    seen = published.get(timeout=30)
    assert (seen.domain, seen.version, list(seen.ids)) == ("atlas", 2, ["atlas-1"]) and seen.loss > 0
    again = learning.Train(lpb.TrainRequest(domain="atlas", examples=[example], wait=lpb.WAIT_DURABLE))
    assert again.results[0].status == lpb.EVENT_STATUS_DUPLICATE

    got = adapters.Get(apb.GetAdapterRequest(name="atlas"))
    assert got.version == 2 and [v.version for v in got.versions] == [1, 2]
    assert got.trainer.events_applied == 1
    assert adapters.Rollback(apb.RollbackAdapterRequest(name="atlas", version=1)).version == 1
    assert adapters.Delete(apb.DeleteAdapterRequest(name="atlas")).deleted == "atlas"
    assert status_of(lambda: adapters.Get(apb.GetAdapterRequest(name="atlas")))[0] == grpc.StatusCode.NOT_FOUND
    watch.cancel()
    assert published.get(timeout=10) == grpc.StatusCode.CANCELLED  # nothing more was published


def pattern_coordinates(adir, domain, tmp_path):
    """(layer, q_proj A row, col) coordinates inside the adapter's pattern, and some outside it (A is random on
    its pattern and zero elsewhere in version 1)."""
    out = tmp_path / f"{domain}-export"
    cli_ok("adapters", "export", domain, out, "--adapter-dir", adir)
    values = load_file(out / "adapter_model.safetensors")
    inside, outside = [], []
    for layer in range(4):
        a = values[f"base_model.model.model.layers.{layer}.self_attn.q_proj.lora_A.weight"]
        inside += [(layer, int(r), int(c)) for r, c in np.argwhere(a != 0)]
        outside += [(layer, int(r), int(c)) for r, c in np.argwhere(a == 0)[:4]]
    return inside, outside


def update(uid, domain, entries, base_version=1):
    """A GradientUpdate of (layer, row, col, value) entries on q_proj's A matrices."""
    by_layer = {}
    for layer, row, col, value in entries:
        by_layer.setdefault(layer, []).append((row, col, value))
    modules = [lpb.ModuleGradient(layer=layer, module="q_proj", matrix="A", rows=[e[0] for e in es],
                                  cols=[e[1] for e in es], values=[e[2] for e in es]) for layer, es in by_layer.items()]
    return lpb.GradientUpdate(id=uid, domain=domain, base_version=base_version, client_id="test", modules=modules)


def as_event(u):
    """The same update as `hyprstream train` reads it."""
    return {"id": u.id, "type": "gradient", "base_version": u.base_version,
            "gradients": [{"layer": m.layer, "module": m.module, "matrix": m.matrix,
                           "entries": [[r, c, v] for r, c, v in zip(m.rows, m.cols, m.values)]} for m in u.modules]}


def durable_order(channel, domain, ready, order, stop):
    """Collects the ids of each durable batch of `domain`, in log order, from a StreamEvents subscription."""
    def requests():
        yield lpb.StreamEventsRequest(subscribe=lpb.Subscribe(domain=domain))
        stop.wait()
    try:
        for reply in lgrpc.LearningStub(channel).StreamEvents(requests()):
            if reply.HasField("subscribed"):
                ready.set()
            if reply.HasField("durable"):
                order.append((reply.durable.seq, list(reply.durable.ids)))
    except grpc.RpcError:
        pass  # the channel closed, or the server was killed


# The server's trainer settings, given to `hyprstream train` as flags too (its defaults are a teaching recipe).
LEARNING = {"deterministic": True, "batch_events": 100, "lr": 0.01, "weight_decay": 0.0, "max_grad_norm": 1.0,
            "steps_per_batch": 1, "stop_loss": 0.0, "distill_weight": 0.0, "rehearse_per_step": 0, "max_drift": 0.0}


def test_update_weights_from_four_clients_equals_deterministic_training_in_the_same_batch_order(
        default_model_path, tmp_path):
    adir, replay_dir = tmp_path / "adapters", tmp_path / "replay"
    # Base version 1 stays within the staleness bound (256) through the 100 versions the updates publish.
    config = write_config(tmp_path / "c.toml", learning=LEARNING)
    rng = np.random.default_rng(5)
    with Server("--model", default_model_path, adapter_dir=adir, config=config) as srv:
        channel = grpc.insecure_channel(srv.grpc_target)
        agrpc.AdaptersStub(channel).Create(apb.CreateAdapterRequest(name="eq", seed=3))
        shutil.copytree(adir / "eq", replay_dir / "eq")  # version 1, before any update
        inside, _ = pattern_coordinates(adir, "eq", tmp_path)
        updates = []
        for i in range(10_000):
            picks = rng.choice(len(inside), size=4, replace=False)
            values = rng.normal(0, 0.05, size=4).astype(np.float32)
            updates.append(update(f"u{i}", "eq", [(*inside[p], float(v)) for p, v in zip(picks, values)]))
        ready, stop, order = threading.Event(), threading.Event(), []
        watcher = threading.Thread(target=durable_order, args=(channel, "eq", ready, order, stop))
        watcher.start()
        assert ready.wait(30)
        summaries = [None] * 4

        def client(k):
            summaries[k] = lgrpc.LearningStub(channel).UpdateWeights(iter(updates[k::4]))
        clients = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in clients:
            t.start()
        for t in clients:
            t.join()
        assert [s.accepted for s in summaries] == [2500] * 4 and sum(s.duplicates for s in summaries) == 0
        again = lgrpc.LearningStub(channel).UpdateWeights(iter(updates[:50]))
        assert (again.accepted, again.duplicates) == (0, 50)  # exactly once by id
        deadline = time.time() + 60
        while sum(len(ids) for _, ids in order) < 10_000 and time.time() < deadline:
            time.sleep(0.05)
        stop.set()
        watcher.join(timeout=30)
        channel.close()
        assert srv.stop() == 0, "".join(srv.log)

    seqs = [seq for seq, _ in order]
    assert seqs == sorted(seqs) and [len(ids) for _, ids in order] == [100] * 100
    by_id = {u.id: u for u in updates}
    data = tmp_path / "in-server-order.jsonl"
    data.write_text("".join(json.dumps(as_event(by_id[i])) + "\n" for _, ids in order for i in ids))
    flags = [f"--{k.replace('_', '-')}" if v is True else f"--{k.replace('_', '-')}={v}" for k, v in LEARNING.items()]
    cli_ok("train", "--domain", "eq", "--data", data, "--model", default_model_path, "--adapter-dir", replay_dir,
           *flags, timeout=600)
    served_values = load_file(export(adir, "eq", tmp_path / "served"))
    replayed = load_file(export(replay_dir, "eq", tmp_path / "replayed"))
    first = load_file(tmp_path / "eq-export" / "adapter_model.safetensors")  # version 1
    assert served_values.keys() == replayed.keys() == first.keys()
    for key in served_values:
        assert np.array_equal(served_values[key], replayed[key]), key
    assert any(not np.array_equal(served_values[k], first[k]) for k in first), "the updates changed nothing"


def export(adir, domain, out):
    cli_ok("adapters", "export", domain, out, "--adapter-dir", adir)
    return out / "adapter_model.safetensors"


def test_update_weights_refuses_bad_updates_with_their_status_and_applies_nothing_from_them(served, tmp_path):
    _, channel, adir = served
    adapters, learning = agrpc.AdaptersStub(channel), lgrpc.LearningStub(channel)
    adapters.Create(apb.CreateAdapterRequest(name="guarded", seed=11))
    inside, outside = pattern_coordinates(adir, "guarded", tmp_path)
    good = (*inside[0], 0.5)
    nan = lpb.ModuleGradient(layer=0, module="q_proj", matrix="A", rows=[inside[0][1]], cols=[inside[0][2]],
                             values=[float("nan")])
    uneven = lpb.ModuleGradient(layer=0, module="q_proj", matrix="A", rows=[1, 2], cols=[1], values=[0.1, 0.2])
    cases = [
        (update("o1", "guarded", [(*outside[0], 0.5)]), grpc.StatusCode.INVALID_ARGUMENT, "sparsity pattern"),
        (update("v9", "guarded", [good], base_version=9), grpc.StatusCode.INVALID_ARGUMENT, "base version 9"),
        (lpb.GradientUpdate(id="n1", domain="guarded", base_version=1, modules=[nan]),
         grpc.StatusCode.INVALID_ARGUMENT, "not finite"),
        (lpb.GradientUpdate(id="l1", domain="guarded", base_version=1, modules=[uneven]),
         grpc.StatusCode.INVALID_ARGUMENT, "same length"),
        (update("", "guarded", [good]), grpc.StatusCode.INVALID_ARGUMENT, 'non-empty "id"'),
        (update("d1", "no-such-domain", [good]), grpc.StatusCode.NOT_FOUND, "no-such-domain"),
        (update("big", "guarded", [good] * 200_000), grpc.StatusCode.RESOURCE_EXHAUSTED, ""),  # over 1 MiB
    ]
    for bad, code, words in cases:
        # A good update of the domain first: it stays accepted when the bad one ends the stream.
        first = [update(f"ok-{bad.id}", "guarded", [good])] if bad.domain == "guarded" else []
        got, details, _ = status_of(lambda: learning.UpdateWeights(iter(first + [bad])))
        assert got == code and words in details, (bad.id, got, details)
    info = adapters.Get(apb.GetAdapterRequest(name="guarded"))
    deadline = time.time() + 30
    while info.trainer.events_applied < 6 and time.time() < deadline:  # the good updates of the 6 calls
        time.sleep(0.1)                                                # on this domain
        info = adapters.Get(apb.GetAdapterRequest(name="guarded"))
    assert info.trainer.accepted == info.trainer.events_applied == 6, info.trainer
    assert info.trainer.rejected >= 2  # the pattern and version checks are the trainer's own


def test_the_largest_update_under_the_size_limit_is_applied_and_concurrent_resends_apply_once(served, tmp_path):
    _, channel, adir = served
    adapters, learning = agrpc.AdaptersStub(channel), lgrpc.LearningStub(channel)
    adapters.Create(apb.CreateAdapterRequest(name="edges", seed=13))
    inside, _ = pattern_coordinates(adir, "edges", tmp_path)
    # As many entries as fit under the 1 MiB limit, with room for the stream's framing: taken whole.
    n = 1
    while update("huge", "edges", [(*inside[0], 1e-4)] * (n * 2)).ByteSize() < (1 << 20) - 64:
        n *= 2
    while update("huge", "edges", [(*inside[0], 1e-4)] * (n + 1000)).ByteSize() < (1 << 20) - 64:
        n += 1000
    huge = update("huge", "edges", [(*inside[0], 1e-4)] * n)
    assert huge.ByteSize() > (1 << 20) - 64 - 16_000
    assert learning.UpdateWeights(iter([huge]), timeout=60).accepted == 1
    # Two streams send the same 300 updates at once, in opposite orders: each is applied once.
    same = [update(f"twin{i}", "edges", [(*inside[i % len(inside)], 0.01)]) for i in range(300)]
    summaries = [None, None]

    def client(k):
        summaries[k] = learning.UpdateWeights(iter(same if k == 0 else same[::-1]), timeout=60)
    threads = [threading.Thread(target=client, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(s.accepted for s in summaries) == 300 and sum(s.duplicates for s in summaries) == 300, summaries
    deadline = time.time() + 30
    info = adapters.Get(apb.GetAdapterRequest(name="edges"))
    while info.trainer.events_applied < 301 and time.time() < deadline:
        time.sleep(0.1)
        info = adapters.Get(apb.GetAdapterRequest(name="edges"))
    assert info.trainer.events_applied == 301 and info.trainer.accepted == 301, info.trainer


def test_a_string_that_is_not_utf8_fails_to_parse_and_the_server_goes_on(served):
    """grpcio cannot send one (str is Unicode), so the bytes are written by hand. A proto3 string must be UTF-8:
    the request does not parse, and gRPC answers INTERNAL for that, as every gRPC server does."""
    _, channel, _ = served
    good = greedy(2, text="ABCD").SerializeToString()
    raw = channel.unary_unary("/hyprstream.v1.Inference/Generate", request_serializer=None,
                              response_deserializer=ipb.GenerateResponse.FromString)
    code, _, _ = status_of(lambda: raw(good.replace(b"ABCD", b"A\xff\xfeD")))
    assert code == grpc.StatusCode.INTERNAL
    assert raw(good).usage.completion_tokens == 2


def test_stream_events_acknowledges_each_event_and_reports_durable_and_applied_batches(served):
    _, channel, _ = served
    sent = queue.Queue()

    def requests():
        while (item := sent.get()) is not None:
            yield item
    replies = lgrpc.LearningStub(channel).StreamEvents(requests())
    sent.put(lpb.StreamEventsRequest(subscribe=lpb.Subscribe(domain="*")))
    assert next(replies).subscribed == "*"
    events = [
        lpb.Event(domain="tides", example=lpb.Example(id="t1", prompt="Q: When is high tide in Port Wen?\nA:",
                                                      completion=" At noon.")),
        lpb.Event(domain="tides", json=json.dumps({"id": "t2", "text": "Port Wen's tides follow the moon."})),
        lpb.Event(domain="tides", json=json.dumps({"id": "t3", "text": "x", "colour": "red"})),
        lpb.Event(domain="tides", example=lpb.Example(id="t1", text="a resend of t1")),
    ]
    for e in events:
        sent.put(lpb.StreamEventsRequest(event=e))
    sent.put(None)  # half-close: the server answers until the accepted events are applied, then ends
    acks, durable, applied = {}, [], []
    for r in replies:
        if r.HasField("ack"):
            acks[r.ack.id] = (r.ack.status, r.ack.error)
        elif r.HasField("durable") and r.durable.domain == "tides":
            durable += r.durable.ids
        elif r.HasField("applied") and r.applied.domain == "tides":
            applied += r.applied.ids
            assert r.applied.version >= 2
    assert acks["t1"][0] == lpb.EVENT_STATUS_DUPLICATE  # the resend, acknowledged last
    assert acks["t2"][0] == lpb.EVENT_STATUS_ACCEPTED
    assert acks["t3"][0] == lpb.EVENT_STATUS_REJECTED and 'unknown field "colour"' in acks["t3"][1]
    assert sorted(durable) == sorted(applied) == ["t1", "t2"]


def test_sigkill_during_update_streams_with_fsync_batch_loses_no_acknowledged_update_and_applies_none_twice(
        default_model_path, tmp_path):
    adir = tmp_path / "adapters"
    # Every update is computed on version 1, which the 300-odd versions the updates publish leave far behind.
    config = write_config(tmp_path / "c.toml", learning={"fsync": "batch", "batch_events": 16, "max_staleness": 100000})
    rng = random.Random(9)
    with Server("--model", default_model_path, adapter_dir=adir, config=config) as srv:
        channel = grpc.insecure_channel(srv.grpc_target)
        agrpc.AdaptersStub(channel).Create(apb.CreateAdapterRequest(name="crash", seed=4))
        inside, _ = pattern_coordinates(adir, "crash", tmp_path)
        channel.close()
        srv.stop(signal.SIGKILL)
    updates = [update(f"c{i}", "crash", [(*inside[rng.randrange(len(inside))], rng.uniform(-0.01, 0.01))
                                        for _ in range(8)]) for i in range(5000)]
    acked = set()
    for round_ in range(6):  # five kills at random points, then a run to the end
        with Server("--model", default_model_path, adapter_dir=adir, config=config) as srv:
            channel = grpc.insecure_channel(srv.grpc_target)
            ready, stop, order = threading.Event(), threading.Event(), []
            watcher = threading.Thread(target=durable_order, args=(channel, "crash", ready, order, stop), daemon=True)
            watcher.start()
            assert ready.wait(30)
            pending = [u for u in updates if u.id not in acked]
            summary = []
            sender = threading.Thread(target=send_ignoring_the_kill, args=(channel, pending, summary), daemon=True)
            sender.start()
            if round_ < 5:
                kill_after = rng.randrange(50, len(pending) // 2)
                while sum(len(ids) for _, ids in order) < kill_after and sender.is_alive():
                    time.sleep(0.005)
                srv.stop(signal.SIGKILL)  # mid-stream: some updates logged but not yet acknowledged
            else:
                sender.join(timeout=300)
                # The summary: every update of the call is in the log, those sent before (duplicates) included.
                assert summary and summary[0].accepted + summary[0].duplicates == len(pending), summary
                acked |= {u.id for u in pending}
            acked |= {i for _, ids in order for i in ids}
            if round_ == 5:
                # With fsync batch a batch may be reported durable before it is applied: wait for the last one.
                get = lambda: agrpc.AdaptersStub(channel).Get(apb.GetAdapterRequest(name="crash")).trainer  # noqa: E731
                deadline = time.time() + 60
                while get().events_applied < len(updates) and time.time() < deadline:
                    time.sleep(0.05)
                time.sleep(0.5)  # an update applied twice would show now
                stats = get()
                stop.set()
                channel.close()
                assert srv.stop() == 0, "".join(srv.log)
            else:
                stop.set()
                channel.close()
    assert acked == {u.id for u in updates}
    assert stats.events_applied == len(updates), stats  # each exactly once across five crashes
    assert stats.duplicates > 0, "no resent update was recognised: the kills came at no useful point"


def send_ignoring_the_kill(channel, updates, summary):
    try:
        summary.append(lgrpc.LearningStub(channel).UpdateWeights(iter(updates)))
    except grpc.RpcError:
        pass  # the server was killed under it


def read_or_none(fd):
    """The next bytes a terminal's other end wrote, or None once it is closed (EIO on Linux)."""
    try:
        return os.read(fd, 4096) or None
    except OSError:
        return None


def test_events_push_sends_a_file_resends_what_was_busy_and_reports_each_event_with_a_bar_on_a_terminal(
        default_model_path, tmp_path):
    adir = tmp_path / "adapters"
    config = write_config(tmp_path / "c.toml", learning={"queue": 4, "batch_events": 4})
    events = [{"id": f"p{i}", "text": f"Harbour note {i}: the tide turns at {i % 12} o'clock."} for i in range(40)]
    events.insert(17, {"id": "bad", "text": "an unknown field", "colour": "red"})
    data = tmp_path / "events.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in events))
    with Server("--model", default_model_path, adapter_dir=adir, config=config) as srv:
        push = lambda: run_cli("events", "push", "--server", f"grpc://{srv.grpc_target}", "--domain", "harbour",  # noqa: E731
                               data, "--json")
        first = push()
        assert first.returncode == 2, first.stderr  # one event was rejected
        out = json.loads(first.stdout)
        assert (out["accepted"], out["rejected"], out["applied"]) == (40, 1, 40), out
        assert out["busy_retries"] > 0, "a queue of 4 should have refused some events as busy"
        assert out["errors"] == ['bad: event \'bad\': unknown field "colour"'] and out["version"] >= 2
        again = json.loads(push().stdout)
        assert (again["accepted"], again["duplicates"], again["applied"]) == (0, 40, 0), again
        # On a terminal, a progress bar on stderr counts the acknowledgements.
        main, terminal = pty.openpty()
        with subprocess.Popen([str(CLI), "events", "push", "--server", srv.grpc_target, "--domain", "harbour",
                               str(data)], stdout=subprocess.DEVNULL, stderr=terminal) as bar:
            os.close(terminal)
            drawn = b""
            while chunk := read_or_none(main):
                drawn += chunk
            assert bar.wait(60) == 2
        os.close(main)
        assert b"[" in drawn and b"41/41 acknowledged" in drawn, drawn
        _, info, _ = srv.request("GET", "/v1/adapters/harbour")
        assert info["trainer"]["events_applied"] == 40
        assert srv.stop() == 0, "".join(srv.log)
    missing = run_cli("events", "push", "--server", "127.0.0.1:1", "--domain", "d", data)
    assert missing.returncode != 0 and "127.0.0.1:1" in missing.stderr
    # A folder or a FIFO is refused before anything is sent (a FIFO would wait for a writer forever).
    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    for path in (tmp_path, fifo):
        r = run_cli("events", "push", "--server", "127.0.0.1:1", "--domain", "d", path, timeout=30)
        assert r.returncode == 2 and "is not a regular file" in r.stderr, r.stderr


def test_a_subscriber_that_reads_too_slowly_is_ended_with_resource_exhausted_and_the_server_goes_on(
        served, tmp_path):
    """Notifications are put in a call's mailbox by the trainer, which never waits for a client: one that stops
    reading its '*' subscription is ended once 4 MiB wait unread, instead of growing the server's memory."""
    srv, channel, adir = served
    adapters, learning = agrpc.AdaptersStub(channel), lgrpc.LearningStub(channel)
    adapters.Create(apb.CreateAdapterRequest(name="flood", seed=17))
    inside, _ = pattern_coordinates(adir, "flood", tmp_path)
    # Another client, which stops reading; without BDP probing its flow-control window stays small, so what the
    # transport can hold for it does not depend on the machine.
    slow_channel = grpc.insecure_channel(srv.grpc_target, options=[("grpc.http2.bdp_probe", 0)])
    stop = threading.Event()

    def requests():
        yield lpb.StreamEventsRequest(subscribe=lpb.Subscribe(domain="*"))
        stop.wait()
    # Without the bound, the call would end at its deadline, after every notification was read.
    slow = lgrpc.LearningStub(slow_channel).StreamEvents(requests(), timeout=180)
    assert next(slow).subscribed == "*"
    # Each update's 128-byte id comes back in a durable and an applied notification: ~270 bytes unread each,
    # 40 MiB for 160,000 updates, several times what the mailbox, the flow-control windows and the sockets hold.
    sent = 0
    while sent < 160_000:
        base = adapters.Get(apb.GetAdapterRequest(name="flood")).version  # within the staleness bound
        batch = [update(f"flood-{sent + k:07d}".ljust(128, "x"), "flood", [(*inside[k % len(inside)], 1e-6)],
                        base_version=base) for k in range(2000)]
        assert learning.UpdateWeights(iter(batch), timeout=120).accepted == len(batch)
        sent += len(batch)
    # What the transport held before the server's writes blocked is still delivered; then the status, which a
    # client only sees after the messages before it.
    heard = set()
    with pytest.raises(grpc.RpcError) as e:
        for reply in slow:
            heard.update(reply.durable.ids)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (e.value.code(), e.value.details())
    assert "reads too slowly" in e.value.details()
    assert 0 < len(heard) < sent // 2, (len(heard), sent)
    stop.set()
    slow_channel.close()

    # The server goes on: a subscriber that reads hears of new learning, and generation answers.
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(service="")).status == health_pb2.HealthCheckResponse.SERVING
    ready, order, done = threading.Event(), [], threading.Event()
    threading.Thread(target=durable_order, args=(channel, "flood", ready, order, done), daemon=True).start()
    assert ready.wait(30)
    base = adapters.Get(apb.GetAdapterRequest(name="flood")).version
    assert learning.UpdateWeights(iter([update("after", "flood", [(*inside[0], 1e-6)], base)])).accepted == 1
    deadline = time.time() + 30
    while not any("after" in ids for _, ids in order) and time.time() < deadline:
        time.sleep(0.1)
    done.set()
    assert any("after" in ids for _, ids in order), order[-3:]
    assert igrpc.InferenceStub(channel).Generate(greedy(2, text=PROMPT)).usage.completion_tokens == 2
