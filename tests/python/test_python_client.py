"""The Python client (clients/python) against the real `hyprstream serve`: `pip install clients/python` into a fresh
venv, where README's example runs end to end (a streamed chat, a fact taught, the answer changed); AsyncClient's
concurrent streams equal the same requests' whole answers; errors carry the server's status code and kind; calls
refused as busy are retried until they pass; and the learning methods and the adapter registry agree with the
server's own accounts."""
import asyncio
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import ROOT, cli_ok
from server import Server, write_config

PACKAGE = ROOT / "clients" / "python"
README_TARGET = "127.0.0.1:50051"


def readme_block(language):
    """The one ```language block of README's "Python client" section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Python client\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(rf"^```{language}\n(.*?)^```", section, re.S | re.M)
    assert len(blocks) == 1, f"README's Python client section should have one {language} block"
    return blocks[0]


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory):
    """A fresh venv with `pip install clients/python` (grpcio and protobuf from PyPI; grpcio-tools in pip's build
    environment generates the stubs)."""
    venv = tmp_path_factory.mktemp("client-venv") / "venv"
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        str(PACKAGE)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    print(f"\nfresh venv with the client installed in {time.time() - t0:.1f} s")
    return venv


@pytest.fixture(scope="module")
def hs(client_venv, tmp_path_factory):
    """The package installed in the fresh venv, imported by this process (whose grpcio and protobuf meet its
    requirements): only the package's folder goes on sys.path."""
    site = next(client_venv.glob("lib/python*/site-packages"))
    shelf = tmp_path_factory.mktemp("client-import")
    (shelf / "hyprstream_client").symlink_to(site / "hyprstream_client")
    sys.path.insert(0, str(shelf))
    import hyprstream_client
    assert hyprstream_client.__file__.startswith(str(shelf))
    yield hyprstream_client
    sys.path.remove(str(shelf))


def serving(model, tmp, *args, config=None):
    return Server("--model", model, *args, adapter_dir=tmp / "adapters", config=config)


@pytest.fixture(scope="module")
def served(default_model_path, tmp_path_factory):
    """A server with the built-in settings (one training step per batch: quick), dense so that streamed and whole
    answers computed in different batches agree to float reassociation (see test_server.py: served)."""
    tmp = tmp_path_factory.mktemp("client-served")
    with serving(default_model_path, tmp, "--quantize", "none") as srv:
        yield srv, tmp / "adapters"
        assert srv.stop() == 0, "".join(srv.log)


# --- README's example ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_readme_example_in_a_fresh_venv_streams_a_chat_and_the_taught_fact_changes_the_answer(
        client_venv, default_model_path, tmp_path):
    config = tmp_path / "teach.toml"
    config.write_text(readme_block("toml"))
    example = readme_block("python")
    assert example.count(README_TARGET) == 1
    with serving(default_model_path, tmp_path, config=config) as srv:
        script = tmp_path / "example.py"
        script.write_text(example.replace(README_TARGET, srv.grpc_target))
        t0 = time.time()
        r = subprocess.run([str(client_venv / "bin" / "python"), str(script)], capture_output=True, text=True,
                           timeout=600)
        print(f"\nREADME example: {time.time() - t0:.1f} s\n{r.stdout}")
        assert r.returncode == 0, r.stderr + "".join(srv.log)
        streamed, trained, before, after = r.stdout.splitlines()
        assert trained == "accepted in version 2"
        assert before == f"before: {streamed!r}"  # the tokens and the tail are the whole text
        assert "Karnivet" not in before
        assert "Karnivet" in after and after.endswith("(adapter geo v2)"), after
        assert srv.request("GET", "/v1/adapters/geo")[1]["version"] == 2
        assert srv.stop() == 0, "".join(srv.log)


# --- generation ------------------------------------------------------------------------------------------------------


def mixed_requests(n):
    """Greedy requests, half text prompts and half chats, of different lengths."""
    out = []
    for i in range(n):
        ask = f"Name {i % 5 + 2} animals that live in {['rivers', 'forests', 'deserts', 'oceans'][i % 4]}."
        form = {"prompt": f"Q: {ask}\nA:"} if i % 2 else {"messages": [{"role": "user", "content": ask}]}
        out.append({**form, "max_tokens": 8 + i % 9, "temperature": 0})
    return out


def test_async_client_32_concurrent_streams_each_equal_the_whole_answer(hs, served):
    srv, _ = served
    requests = mixed_requests(32)

    async def both():
        async with hs.AsyncClient(srv.grpc_target) as client:
            async def stream(request):
                s = client.stream_generate(**request)
                return [t async for t in s], s.result, s.tail
            streamed = await asyncio.gather(*(stream(r) for r in requests))
            whole = await asyncio.gather(*(client.generate(**r) for r in requests))
        return streamed, whole

    t0 = time.time()
    streamed, whole = asyncio.run(both())
    print(f"\n32 concurrent streams, then 32 concurrent whole answers: {time.time() - t0:.1f} s")
    for request, (tokens, result, tail), w in zip(requests, streamed, whole):
        assert isinstance(result, hs.GenerateResult) and result.tokens == tokens
        assert [t.id for t in tokens] == [t.id for t in w.tokens], request
        assert [t.text for t in tokens] == [t.text for t in w.tokens]
        assert [t.logprob for t in tokens] == pytest.approx([t.logprob for t in w.tokens], abs=1e-4)
        assert result.text == w.text == "".join(t.text for t in tokens) + tail
        assert result.finish_reason == w.finish_reason and result.usage.completion_tokens == len(tokens)
        assert result.adapter == w.adapter == hs.AdapterUsed("", 0, "", 0.0)


def test_errors_carry_the_servers_status_code_and_error_kind(hs, served):
    srv, _ = served
    with hs.Client(srv.grpc_target) as client:
        for call in (lambda: client.generate("Hi", adapter="no-such-domain", max_tokens=2),
                     lambda: list(client.stream_generate("Hi", adapter="no-such-domain", max_tokens=2)),
                     lambda: client.adapters.get("no-such-domain")):
            with pytest.raises(hs.NotFound) as e:
                call()
            assert (e.value.code, e.value.kind) == (grpc.StatusCode.NOT_FOUND, "not_found")
            assert "no-such-domain" in e.value.details
        for call in (lambda: client.generate("Hi", max_tokens=1 << 30),
                     lambda: list(client.stream_generate("Hi", max_tokens=1 << 30))):
            with pytest.raises(hs.ContextOverflow) as e:
                call()
            assert isinstance(e.value, hs.OutOfRange) and isinstance(e.value, hs.HyprstreamError)
            assert (e.value.code, e.value.kind) == (grpc.StatusCode.OUT_OF_RANGE, "context_overflow")
            assert "maximum context length" in e.value.details
        with pytest.raises(hs.InvalidArgument) as e:
            client.generate("Hi", temperature=float("nan"))
        assert e.value.kind == "invalid_argument" and "'temperature' must be finite" in e.value.details
        with pytest.raises(hs.InvalidArgument) as e:
            client.train_adapter("errors", [{"id": "half", "prompt": "Q: no completion?\nA:"}])
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with hs.Client(srv.grpc_target, retry=hs.Retry(attempts=20, initial_backoff=1.0, max_backoff=1.0)) as client:
        t0 = time.time()
        with pytest.raises(hs.ResourceExhausted) as e:
            client.generate("x" * (17 << 20), max_tokens=1)  # over the server's 16 MiB message limit
        assert e.value.kind is None and "larger than max" in e.value.details
        assert time.time() - t0 < 3.0  # never passes, so never retried (19 waits would take 9.5 s on average)
    with hs.Client("127.0.0.1:1", retry=hs.Retry(attempts=1)) as nobody:
        with pytest.raises(hs.Unavailable) as e:
            nobody.generate("Hi", timeout=10)
        assert e.value.kind is None  # not the server's own refusal

    async def async_errors():
        async with hs.AsyncClient(srv.grpc_target) as client:
            with pytest.raises(hs.NotFound) as e:
                await client.generate("Hi", adapter="no-such-domain")
            assert e.value.kind == "not_found"
            with pytest.raises(hs.ContextOverflow) as e:
                async for _ in client.stream_generate("Hi", max_tokens=1 << 30):
                    pass
            assert e.value.code == grpc.StatusCode.OUT_OF_RANGE
    asyncio.run(async_errors())


def running(srv):
    return srv.request("GET", "/v1/stats")[1]["running"]


def test_cancelling_a_stream_ends_its_iteration_and_frees_the_slot(hs, served):
    srv, _ = served
    long = {"prompt": "Once upon a time", "max_tokens": 1500, "ignore_eos": True, "temperature": 0}
    with hs.Client(srv.grpc_target) as client:
        stream = client.stream_generate(**long)
        read = [t for _, t in zip(range(3), stream)]
        stream.cancel()
        assert len(read) == 3 and list(stream) == [] and stream.result is None

    async def cancel_async():
        async with hs.AsyncClient(srv.grpc_target) as client:
            async with client.stream_generate(**long) as stream:
                async for _ in stream:
                    break
            return [t async for t in stream], stream.result
    assert asyncio.run(cancel_async()) == ([], None)
    deadline = time.time() + 30
    while running(srv) and time.time() < deadline:
        time.sleep(0.1)
    assert running(srv) == 0, "a cancelled stream kept its slot"


# --- learning and the adapter registry -------------------------------------------------------------------------------


def pattern_entries(adir, domain, tmp_path):
    """(row, col) coordinates of layer 0's q_proj A inside the adapter's pattern (A is random on its pattern and
    zero elsewhere), and one outside it."""
    out = tmp_path / f"{domain}-export"
    cli_ok("adapters", "export", domain, out, "--adapter-dir", adir)
    a = load_file(out / "adapter_model.safetensors")["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    return [tuple(map(int, rc)) for rc in np.argwhere(a != 0)], tuple(map(int, np.argwhere(a == 0)[0]))


def gradient(hs, uid, base_version, coordinates, value=0.01):
    rows, cols = zip(*coordinates)
    module = hs.ModuleGradient(0, "q_proj", "A", list(rows), list(cols), [value] * len(rows))
    return hs.GradientUpdate(uid, base_version, [module])


def test_learning_methods_and_the_adapter_registry(hs, served, tmp_path):
    srv, adir = served
    with hs.Client(srv.grpc_target) as client:
        made = client.adapters.create("tides", seed=7)
        assert (made.name, made.version, made.rank, len(made.targets)) == ("tides", 1, 16, 7)
        assert "tides" in [a.name for a in client.adapters.list()]
        with pytest.raises(hs.AlreadyExists):
            client.adapters.create("tides")  # the name is taken

        published = []
        with client.watch_versions("tides") as watch:
            follower = threading.Thread(target=lambda: published.extend(watch))
            follower.start()
            time.sleep(0.5)  # the subscription starts with the call on the server
            events = [{"id": "t1", "text": "Port Wen's tides follow the moon."},
                      {"id": "t2", "text": "x", "colour": "red"},
                      {"id": "t1", "text": "a resend of t1"}]
            done = client.submit_events("tides", events)
            assert [(r.id, r.status) for r in done.results] == [("t1", "accepted"), ("t2", "rejected"),
                                                                ("t1", "duplicate")]
            assert 'unknown field "colour"' in done.results[1].error and done.version == 2
            durable = client.submit_events("tides", [{"id": "t3", "text": "High tide at noon."}], wait=False)
            assert [r.status for r in durable.results] == ["accepted"] and durable.version == 0
            trained = client.train_adapter("tides", [{"id": "t4", "prompt": "Q: When is high tide?\nA:",
                                                      "completion": " At noon."}])
            assert trained.results == [hs.EventResult("t4", "accepted")] and trained.version >= 3
            deadline = time.time() + 30
            while not any("t4" in v.ids for v in published) and time.time() < deadline:
                time.sleep(0.05)  # the watch hears of a version a moment after train_adapter's answer
        follower.join(timeout=10)  # leaving the block cancelled the watch: the iteration ended
        assert not follower.is_alive()
        assert published[0] == hs.VersionPublished("tides", 2, published[0].seq, ["t1"], published[0].loss)
        assert published[-1].version == trained.version and "t4" in published[-1].ids

        with client.stream_events() as session:
            session.subscribe("tides")
            session.send("tides", {"id": "t5", "messages": [{"role": "user", "content": "Tide?"},
                                                            {"role": "assistant", "content": "Noon."}]})
            session.close()  # the server answers until t5 is applied, then ends
            replies = list(session)
        assert replies[:2] == [hs.Subscribed("tides"), hs.Ack("t5", "tides", "accepted")]
        durable = [r for r in replies if isinstance(r, hs.Durable)]
        applied = [r for r in replies if isinstance(r, hs.Applied)]
        assert durable[-1].ids == ["t5"] and applied[-1].ids == ["t5"] and applied[-1].loss > 0

        inside, outside = pattern_entries(adir, "tides", tmp_path)
        base = client.adapters.get("tides").version
        updates = [gradient(hs, f"g{i}", base, inside[i:i + 2]) for i in range(4)]
        summary = client.update_weights("tides", iter(updates), client_id="test")
        assert (summary.accepted, summary.duplicates) == (4, 0) and summary.durable_seq > 0
        again = client.update_weights("tides", updates[:2])
        assert (again.accepted, again.duplicates) == (0, 2)  # applied once by id
        with pytest.raises(hs.InvalidArgument) as e:
            client.update_weights("tides", [gradient(hs, "off-pattern", base, [outside])])
        assert "sparsity pattern" in e.value.details

        deadline = time.time() + 60
        while (info := client.adapters.get("tides")).trainer.events_applied < 8 and time.time() < deadline:
            time.sleep(0.1)
        assert info.trainer.events_applied == 8  # t1, t3, t4, t5 and the four updates, each once
        previous = info.versions[-2].version  # a kept earlier version
        assert client.adapters.rollback("tides", previous).version == previous
        assert client.adapters.delete("tides") == "tides"
        with pytest.raises(hs.NotFound):
            client.adapters.get("tides")


def test_async_learning_methods(hs, served, tmp_path):
    srv, adir = served

    async def updates(base, coordinates):
        for i in range(3):
            yield gradient(hs, f"a{i}", base, coordinates[i:i + 2])

    async def learn():
        async with hs.AsyncClient(srv.grpc_target) as client:
            watch = client.watch_versions("estuary")
            seen = asyncio.ensure_future(watch.__anext__())
            await asyncio.sleep(0.5)
            done = await client.submit_events("estuary", [{"id": "e1", "text": "Estuaries mix salt and fresh water."}])
            first = await asyncio.wait_for(seen, 30)
            watch.cancel()
            assert [v async for v in watch] == []  # cancelled: the iteration ends
            async with client.stream_events() as session:
                await session.send("estuary", {"id": "e2", "text": "Brackish water."})
                await session.close()
                replies = [r async for r in session]
            trained = await client.train_adapter("estuary", [{"id": "e3", "text": "Tidal flats."}], wait=False)
            inside, _ = pattern_entries(adir, "estuary", tmp_path)
            base = (await client.adapters.get("estuary")).version
            summary = await client.update_weights("estuary", updates(base, inside))
            info = await client.adapters.get("estuary")
            return done, first, replies, trained, summary, info

    done, first, replies, trained, summary, info = asyncio.run(learn())
    assert done.results == [hs.EventResult("e1", "accepted")] and done.version == 2
    assert (first.domain, first.version, first.ids) == ("estuary", 2, ["e1"])
    assert replies[0] == hs.Ack("e2", "estuary", "accepted") and replies[-1].ids == ["e2"]
    assert isinstance(replies[-1], hs.Applied) and replies[-1].version == 3
    assert trained.results == [hs.EventResult("e3", "accepted")] and trained.version == 0
    assert (summary.accepted, summary.duplicates) == (3, 0)
    assert info.name == "estuary" and info.version >= 3


# --- retries ---------------------------------------------------------------------------------------------------------


def generate_or_stream(client, i, request):
    """Request i: a whole answer when i is even, else a stream read to its end; an exception is returned."""
    try:
        if i % 2 == 0:
            return client.generate(**request).text
        stream = client.stream_generate(**request)
        return "".join(t.text for t in stream) + stream.tail
    except Exception as e:  # noqa: BLE001 -- the caller counts them
        return e


def test_calls_refused_as_busy_are_retried_with_backoff_until_they_pass(hs, default_model_path, tmp_path):
    """One slot and a queue of one: of 8 requests at once most are refused as busy. Without retries they fail
    with Busy; with them every one (whole answers and streams, threads and asyncio) gets its answer, as run alone,
    while the server counts the refusals the client overcame."""
    requests = [{"prompt": f"Count to {i + 3}:", "max_tokens": 8, "temperature": 0, "ignore_eos": True}
                for i in range(8)]
    patient = hs.Retry(attempts=20, initial_backoff=0.05, max_backoff=1.0)
    with serving(default_model_path, tmp_path, "--queue", 1, "--max-seqs", 1) as srv:
        with hs.Client(srv.grpc_target, retry=hs.Retry(attempts=1)) as client:
            with ThreadPoolExecutor(8) as pool:
                refused = [r for r in pool.map(lambda a: generate_or_stream(client, *a), enumerate(requests))
                           if isinstance(r, Exception)]
        assert refused and all(isinstance(e, hs.Busy) for e in refused), refused
        assert all((e.code, e.kind) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "busy") for e in refused)

        before = srv.metric("hyprstream_rejected_requests_total", reason="queue_full")
        t0 = time.time()
        with hs.Client(srv.grpc_target, retry=patient) as client:
            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(lambda a: generate_or_stream(client, *a), enumerate(requests)))
            alone = [client.generate(**r).text for r in requests]
        assert answers == alone
        overcome = srv.metric("hyprstream_rejected_requests_total", reason="queue_full") - before
        print(f"\n8 requests through 1 slot: {overcome:.0f} busy refusals retried, {time.time() - t0:.1f} s")
        assert overcome > 0

        async def concurrently():
            async with hs.AsyncClient(srv.grpc_target, retry=patient) as client:
                async def stream(r):
                    s = client.stream_generate(**r)
                    return "".join([t.text async for t in s]) + s.tail
                return await asyncio.gather(*(client.generate(**r) if i % 2 == 0 else stream(r)
                                              for i, r in enumerate(requests)))
        before = srv.metric("hyprstream_rejected_requests_total", reason="queue_full")
        answers = asyncio.run(concurrently())
        assert [a if isinstance(a, str) else a.text for a in answers] == alone
        assert srv.metric("hyprstream_rejected_requests_total", reason="queue_full") > before
        assert srv.stop() == 0, "".join(srv.log)


def hold_threads(hs, hasty, n, seconds):
    """Returns once n watch calls hold the server's n free threads (a call is refused); they end `seconds` later."""
    watches = [hasty.watch_versions("nothing") for _ in range(n)]
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            hasty.adapters.list()
        except hs.ResourceExhausted:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"{n} watches did not exhaust the server's threads")
    threading.Timer(seconds, lambda: [w.cancel() for w in watches]).start()


def test_learning_calls_refused_as_busy_are_retried_only_where_it_is_safe(hs, default_model_path, tmp_path):
    """A domain queue of one event: submit_events sends the events acknowledged "busy" again until each is taken.
    A thread pool the calls have exhausted: update_weights (ids required) and train_adapter with ids wait their
    turn; train_adapter without ids fails at once, as a second attempt could apply its examples twice."""
    config = write_config(tmp_path / "c.toml", learning={"queue": 1, "batch_events": 1}, grpc={"max_threads": 4})
    patient = hs.Retry(attempts=20, initial_backoff=0.05, max_backoff=1.0)
    events = [{"id": f"q{i}", "text": f"Event {i} waits for room in the queue."} for i in range(6)]
    with serving(default_model_path, tmp_path, config=config) as srv:
        with hs.Client(srv.grpc_target, retry=hs.Retry(attempts=1)) as hasty, \
                hs.Client(srv.grpc_target, retry=patient) as client:
            statuses = [r.status for r in hasty.submit_events("queued", events).results]
            assert "busy" in statuses and set(statuses) <= {"accepted", "busy"}, statuses
            done = client.submit_events("queued", events)
            assert [r.status for r in done.results] == [
                "duplicate" if s == "accepted" else "accepted" for s in statuses]
            inside, _ = pattern_entries(tmp_path / "adapters", "queued", tmp_path)
            base = client.adapters.get("queued").version

            hold_threads(hs, hasty, 3, 1.5)
            t0 = time.time()
            summary = client.update_weights("queued", (gradient(hs, f"w{i}", base, inside[i:i + 1]) for i in range(3)))
            waited = time.time() - t0
            print(f"\nupdate_weights refused while 3 calls held the threads, retried: {waited:.1f} s")
            assert (summary.accepted, summary.duplicates) == (3, 0) and waited > 1.0
            hold_threads(hs, hasty, 3, 1.5)
            with pytest.raises(hs.ResourceExhausted) as e:
                client.train_adapter("queued", [{"text": "No id: a retry could apply it twice."}])
            assert e.value.kind is None and not isinstance(e.value, hs.Busy)
            trained = client.train_adapter("queued", [{"id": "with-id", "text": "An id: applied once."}])
            assert trained.results == [hs.EventResult("with-id", "accepted")]
        assert srv.stop() == 0, "".join(srv.log)
