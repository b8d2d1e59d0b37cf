"""`hyprstream serve` with real clients: the official OpenAI SDK, raw HTTP and SSE, against the default model.
Greedy answers equal `hyprstream generate`; concurrent requests with different adapters equal the same requests
run alone; the prefix cache reuses KV only within one adapter version; cancelled and excess requests are handled;
bad input gets clear errors counted by reason."""
import http.client
import json
import socket
import threading
import time

import openai
import pytest
from transformers import AutoTokenizer

from conftest import create_adapter, run_cli
from server import Server

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def served(default_model_path, tmp_path_factory):
    adir = tmp_path_factory.mktemp("served-adapters")
    for i, name in enumerate(["alpha", "beta", "gamma", "delta"]):
        create_adapter(default_model_path, adir, name, tmp_path_factory.mktemp(name), seed=40 + i, b_std=0.02)
    # Dense, so that a request's answer is the same alone and batched up to float reassociation (logprobs within
    # 2e-5). With the default --quantize auto (int4 here) every projection's input and output are rounded to
    # bfloat16 by torch's kernel, and those roundings turn the batch paths' last-bit differences into logprob
    # differences of up to 0.17 (measured; int4 itself is 0.09 from the exact model on average).
    with Server("--model", default_model_path, "--quantize", "none", adapter_dir=adir) as srv:
        yield srv, adir
        assert srv.stop() == 0, "".join(srv.log)


def client(srv):
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="not-needed", max_retries=0)


def base_model(srv):
    return client(srv).models.list().data[0].id


def cli_generate(model, prompt, max_tokens, *extra):
    r = run_cli("generate", "--model", model, "-p", prompt, "--temperature", "0", "--max-tokens", max_tokens, "--json",
                "--quantize", "none", *extra)  # dense, as `served`
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    return lines[-1]["text"], [x["logprob"] for x in lines[:-1]]


def test_openai_sdk_lists_models_with_the_base_model_and_every_adapter(served):
    srv, _ = served
    ids = [m.id for m in client(srv).models.list().data]
    assert ids[0] == "SmolLM2-135M-Instruct.Q4_1"
    assert set(ids[1:]) == {"alpha", "beta", "gamma", "delta"}


def test_openai_completion_equals_hyprstream_generate_with_logprobs(served, default_model_path):
    srv, _ = served
    prompt = "The three primary colours are"
    out = client(srv).completions.create(model=base_model(srv), prompt=prompt, max_tokens=12, temperature=0,
                                         logprobs=0)
    text, logprobs = cli_generate(default_model_path, prompt, 12)
    assert out.choices[0].text == text
    assert out.choices[0].logprobs.token_logprobs == pytest.approx(logprobs, abs=1e-4)
    assert out.usage.completion_tokens == len(logprobs)


def test_openai_chat_equals_generate_on_the_rendered_template_and_streams_the_same(served, default_model_path):
    srv, _ = served
    c = client(srv)
    messages = [{"role": "user", "content": QUESTION}]
    whole = c.chat.completions.create(model=base_model(srv), messages=messages, max_tokens=16, temperature=0,
                                      logprobs=True)
    hf = AutoTokenizer.from_pretrained(default_model_path.parent, gguf_file=default_model_path.name)
    rendered = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    text, logprobs = cli_generate(default_model_path, rendered, 16)
    assert whole.choices[0].message.content == text
    assert [t.logprob for t in whole.choices[0].logprobs.content] == pytest.approx(logprobs, abs=1e-4)
    assert "Paris" in text
    pieces, usage = [], None
    for chunk in c.chat.completions.create(model=base_model(srv), messages=messages, max_tokens=16, temperature=0,
                                           stream=True, stream_options={"include_usage": True}):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage
    assert "".join(pieces) == text
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_a_request_names_an_adapter_by_model_and_reports_its_version(served):
    srv, _ = served
    out = client(srv).chat.completions.create(model="beta", messages=[{"role": "user", "content": QUESTION}],
                                              max_tokens=4, temperature=0)
    assert out.model_extra["adapter"] == {"name": "beta", "version": 2}
    with pytest.raises(openai.NotFoundError) as e:
        client(srv).chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert "does not exist" in str(e.value)


def wait_until(condition, seconds=10):
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def sse_request(srv, path, body):
    """A streamed POST on a raw connection: (connection, response)."""
    host, port = srv.url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=300)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    return conn, conn.getresponse()


def stream_text(srv, body, started=None):
    """Streams /v1/generate; returns (token ids, text, final event)."""
    conn, resp = sse_request(srv, "/v1/generate", {**body, "stream": True})
    assert resp.status == 200, resp.read()
    ids, final = [], None
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        event = json.loads(line[6:])
        if "token" in event:
            ids.append(event["token"]["id"])
            if started:
                started.set()
        else:
            final = event
    conn.close()
    return ids, final["text"], final


def mixed_requests():
    prompts = ["Once upon a time", "The best way to learn a language is", "List three fruits:",
               "In 1969, astronauts", "def fibonacci(n):", "The weather today is",
               "A short poem about the sea:\n", "Water boils at", "My favourite book is",
               "The quick brown fox", "Explain gravity in one sentence:", "Paris is known for",
               "Step 1: open the box. Step 2:", "Q: What is 12 times 12?\nA:", "Dear friend,",
               "The meaning of life is"]
    adapters = [None, "alpha", "beta", "gamma", "delta"]
    return [{"prompt": p, "max_tokens": 4 + (i * 5) % 11, "temperature": 0, "ignore_eos": True,
             **({"adapter": adapters[i % 5]} if adapters[i % 5] else {})} for i, p in enumerate(prompts)]


def test_sixteen_concurrent_requests_with_mixed_adapters_equal_each_run_alone(served):
    srv, _ = served
    requests = mixed_requests()
    alone = [stream_text(srv, r)[0] for r in requests]
    results = [None] * len(requests)

    def run(i):
        time.sleep(0.05 * (i % 7))  # arrivals spread over the first steps
        results[i] = stream_text(srv, requests[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    for i, r in enumerate(requests):
        assert results[i][0] == alone[i], (i, r)
        assert (results[i][2]["adapter"] or {}).get("name") == r.get("adapter")
    wait_until(lambda: srv.metric("hyprstream_requests_running") == 0)  # the gauge follows at the step's end


def test_the_prefix_cache_reuses_a_shared_system_prompt_and_never_across_adapter_versions(served):
    srv, adir = served
    system = ("You are a meticulous assistant for a library. Answer in one short sentence, cite no sources, "
              "and never invent facts. If you do not know, say so plainly and suggest where to look. ") * 2
    body = lambda q, model: {"model": model, "max_tokens": 6, "temperature": 0,
                             "messages": [{"role": "system", "content": system}, {"role": "user", "content": q}]}
    base = base_model(srv)
    hits = srv.metric("hyprstream_prefix_cache_hit_tokens_total")
    _, first, _ = srv.request("POST", "/v1/chat/completions", body("Who wrote Hamlet?", base))
    _, second, _ = srv.request("POST", "/v1/chat/completions", body("Who wrote Hamlet?", base))
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] >= 64
    assert srv.metric("hyprstream_prefix_cache_hit_tokens_total") > hits
    assert second["choices"][0]["message"] == first["choices"][0]["message"]
    _, third, _ = srv.request("POST", "/v1/chat/completions", body("What is a library card?", base))
    assert third["usage"]["prompt_tokens_details"]["cached_tokens"] >= 64  # another question, the same prefix

    # With an adapter: cached within its version, never across versions.
    _, a1, _ = srv.request("POST", "/v1/chat/completions", body("Who wrote Hamlet?", "gamma"))
    _, a2, _ = srv.request("POST", "/v1/chat/completions", body("Who wrote Hamlet?", "gamma"))
    assert a1["usage"]["prompt_tokens_details"]["cached_tokens"] == 0  # the base model's KV is not gamma's
    assert a2["usage"]["prompt_tokens_details"]["cached_tokens"] >= 64
    status, trained, _ = srv.request("POST", "/v1/adapters/gamma/train",
                                     {"examples": [{"text": "Gamma learns a new sentence today."}]})
    assert status == 200 and trained["version"] == 3, trained
    _, a3, _ = srv.request("POST", "/v1/chat/completions", body("Who wrote Hamlet?", "gamma"))
    assert a3["adapter"] == {"name": "gamma", "version": 3}
    assert a3["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


def test_a_client_that_disconnects_mid_stream_frees_its_slot(served):
    srv, _ = served
    cancelled = srv.metric("hyprstream_requests_total", finish_reason="cancelled")
    conn, resp = sse_request(srv, "/v1/completions", {"model": base_model(srv), "prompt": "Count to a thousand: 1, 2,",
                                                      "max_tokens": 1500, "temperature": 0, "stream": True,
                                                      "ignore_eos": True})
    for _ in range(4):
        resp.readline()
    assert srv.metric("hyprstream_requests_running") == 1
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    wait_until(lambda: srv.metric("hyprstream_requests_running") == 0)
    assert srv.metric("hyprstream_requests_total", finish_reason="cancelled") == cancelled + 1


BAD = [
    # (what, path, raw body, status, text in the message, reason label)
    ("malformed JSON", "/v1/chat/completions", b'{"messages": [', 400, "malformed JSON", "malformed_json"),
    ("a wrong field type", "/v1/chat/completions",
     b'{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}', 400, "'temperature' must be a number",
     "wrong_type"),
    ("an unknown adapter", "/v1/completions", b'{"prompt": "hi", "adapter": "nobody"}', 404, "no adapter named",
     "unknown_adapter"),
    ("max_tokens 0", "/v1/completions", b'{"prompt": "hi", "max_tokens": 0}', 400, "'max_tokens' must lie in",
     "invalid_value"),
    ("max_tokens negative", "/v1/completions", b'{"prompt": "hi", "max_tokens": -5}', 400, "'max_tokens' must lie in",
     "invalid_value"),
    ("invalid UTF-8", "/v1/completions", b'{"prompt": "caf\xe9"}', 400, "\\xe9", "invalid_utf8"),
    ("a duplicate key", "/v1/completions", b'{"prompt": "a", "prompt": "b"}', 400, "twice", "malformed_json"),
    # The chat route parses its body keeping key order, as strictly.
    ("a duplicate key in a message", "/v1/chat/completions",
     b'{"messages": [{"role": "user", "content": "a", "content": "b"}]}', 400, "twice", "malformed_json"),
    ("invalid UTF-8 in a message", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "caf\xe9"}]}',
     400, "\\xe9", "invalid_utf8"),
    ("a body that is not an object", "/v1/chat/completions", b'[1]', 400, "must be a JSON object", "malformed_json"),
    ("an unknown field", "/v1/completions", b'{"prompt": "a", "temprature": 0}', 400, "unknown field 'temprature'",
     "unknown_field"),
    ("a token id beyond 32 bits", "/v1/completions", b'{"prompt": [1, 4294967301]}', 400,
     "'prompt' must hold token ids", "wrong_type"),
    ("a content part's type that is not a string", "/v1/chat/completions",
     b'{"messages": [{"role": "user", "content": [{"type": 5, "text": "hi"}]}]}', 400, "only text content parts",
     "unsupported"),
]


def test_bad_input_gets_a_clear_json_error_counted_by_reason_and_the_server_stays_up(served):
    srv, _ = served
    for what, path, raw, status, needle, reason in BAD:
        before = srv.metric("hyprstream_rejected_requests_total", reason=reason)
        got, body, _ = srv.request("POST", path, raw=raw)
        assert got == status, (what, got, body)
        assert needle in body["error"]["message"], (what, body)
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert srv.metric("hyprstream_rejected_requests_total", reason=reason) == before + 1, what
    # A prompt beyond the context names the numbers.
    got, body, _ = srv.request("POST", "/v1/completions", {"prompt": "word " * 2100, "max_tokens": 10})
    assert got == 400 and "maximum context length is 2048" in body["error"]["message"], body
    assert body["error"]["code"] == "context_length_exceeded"
    # A taken adapter name: 409, counted under its own reason.
    assert srv.request("POST", "/v1/adapters", {"name": "taken"})[0] == 201
    got, body, _ = srv.request("POST", "/v1/adapters", {"name": "taken"})
    assert got == 409 and "'taken' already exists" in body["error"]["message"], body
    assert srv.metric("hyprstream_rejected_requests_total", reason="already_exists") == 1
    # A body over the limit: 413 from its Content-Length, before any of it is read.
    host, port = srv.url.split("//")[1].split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 5242880\r\n\r\n")
        s.settimeout(10)
        reply = b""
        while b"}}" not in reply:
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413") and b"exceeds" in reply, reply
    assert srv.metric("hyprstream_rejected_requests_total", reason="body_too_large") == 1
    # A known path with another method: 405 naming the allowed ones.
    got, body, headers = srv.request("GET", "/v1/completions")
    assert got == 405 and headers.get("Allow") == "POST" and "allowed: POST" in body["error"]["message"], body
    assert srv.request("GET", "/health")[0] == 200


def test_a_slow_client_that_never_finishes_its_headers_is_cut_off(default_model_path, tmp_path):
    from server import write_config
    config = write_config(tmp_path / "c.toml", server={"header_timeout_ms": 500})
    with Server("--model", default_model_path, adapter_dir=tmp_path / "a", config=config) as srv:
        host, port = srv.url.split("//")[1].split(":")
        s = socket.create_connection((host, int(port)))
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")  # and nothing more
        s.settimeout(10)
        t0 = time.time()
        assert s.recv(1024) == b""  # closed by the server
        assert time.time() - t0 < 5
        assert srv.metric("hyprstream_rejected_requests_total", reason="header_timeout") == 1
        assert srv.request("GET", "/health")[0] == 200
        assert srv.stop() == 0


def test_overload_gets_429_with_retry_after_and_accepted_requests_complete(default_model_path, tmp_path):
    with Server("--model", default_model_path, "--max-seqs", 1, "--queue", 2, adapter_dir=tmp_path / "a") as srv:
        results = []
        lock = threading.Lock()

        def one():
            r = srv.request("POST", "/v1/completions", {"prompt": "Tell me a story", "max_tokens": 24,
                                                        "temperature": 0, "ignore_eos": True})
            with lock:
                results.append(r)

        threads = [threading.Thread(target=one) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        statuses = sorted(r[0] for r in results)
        assert statuses.count(429) >= 1 and statuses.count(200) >= 2, statuses  # the queue holds 2
        assert set(statuses) == {200, 429}
        for status, body, headers in results:
            if status == 429:
                assert headers.get("Retry-After") == "1" and "retry" in body["error"]["message"]
                assert body["error"]["type"] == "rate_limit_error"
            else:
                assert body["usage"]["completion_tokens"] == 24
        assert srv.metric("hyprstream_rejected_requests_total", reason="queue_full") == statuses.count(429)
        assert srv.stop() == 0
