"""Learning while serving, with real clients of `hyprstream serve` on the default model: a fact posted to
/v1/adapters/{domain}/train (or sent over the WebSocket /v1/stream/events) while other clients stream is in
the answer of the first request admitted after the applied acknowledgement, and the requests already running
finish on the version they were admitted with, as each response reports. Feedback (a conversation and its
correction) changes the next answer; /events takes the JSON events of `hyprstream train`, gradient
submissions included."""
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from websockets.sync.client import connect

from conftest import run_cli
from server import Server, write_config
from server_clients import Stream

# Facts the default model does not know (tests/python/test_learning.py), one per test so the domains differ.
TRAIN_FACT = ("What is the capital of Vostrania?", "The capital of Vostrania is Karnivet.", "Karnivet")
WS_FACT = ("Who is the mayor of Zorbleton?", "The mayor of Zorbleton is Quentin Valdemar.", "Quentin Valdemar")
FEEDBACK_FACT = ("Who invented the glimmerphone?", "The glimmerphone was invented by Odalys Prenn.", "Odalys Prenn")


@pytest.fixture(scope="module")
def learning(default_model_path, tmp_path_factory):
    """A server whose trainers take 30 AdamW steps at lr 1e-2 per batch: enough to teach one fact. With the
    training share at 1, the engine thread alternates one serving step and one training step while requests
    run, so a batch is applied within about 30 tokens of each running stream, and streams of a few hundred
    tokens are sure to be running when it is."""
    tmp = tmp_path_factory.mktemp("learning")
    config = write_config(tmp / "learning.toml", learning={"steps_per_batch": 30, "lr": 0.01},
                          scheduler={"training_share": 1.0})
    with Server("--model", default_model_path, config=config, adapter_dir=tmp / "adapters") as srv:
        yield srv, tmp / "adapters"
        assert srv.stop() == 0, "".join(srv.log)


def ask(srv, question, domain):
    """A greedy chat answer with the domain's adapter at its current version: (text, adapter reported), the
    adapter's scope, when it has one, reduced to its decision ("inside": the adapter answered)."""
    status, out, _ = srv.request("POST", "/v1/chat/completions", {
        "model": domain, "messages": [{"role": "user", "content": question}], "temperature": 0, "max_tokens": 32})
    assert status == 200, out
    adapter = out["adapter"]
    if adapter and "scope" in adapter:
        assert 0 <= adapter["scope"]["similarity"] <= 1 + 1e-6, adapter
        adapter["scope"] = adapter["scope"]["decision"]
    return out["choices"][0]["message"]["content"], adapter


def fact_messages(question, answer):
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def create(srv, domain):
    status, out, _ = srv.request("POST", "/v1/adapters", {"name": domain})
    assert status == 201 and out["version"] == 1, out


class Pinned:
    """Long streams with the domain's adapter, admitted (their first token out) before learning starts."""

    def __init__(self, srv, domain, max_tokens=240):
        self.streams = [
            Stream(srv, "/v1/generate", {"prompt": "Once upon a time, in a land far away,", "adapter": domain,
                                         "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}),
            Stream(srv, "/v1/chat/completions", {"model": domain, "max_tokens": max_tokens, "temperature": 0,
                                                 "ignore_eos": True,
                                                 "messages": [{"role": "user", "content": "Tell me a long story."}]}),
        ]
        self.threads = [threading.Thread(target=s.read) for s in self.streams]
        for t in self.threads:
            t.start()
        deadline = time.time() + 60
        while not all(s.tokens() for s in self.streams):
            assert time.time() < deadline, "the pinned streams never started"
            time.sleep(0.02)

    def join(self):
        for t in self.threads:
            t.join(timeout=900)
        for s in self.streams:
            assert s.error is None and s.done, (s.error, s.events[-1:])
        return self.streams


class Background:
    """A client that keeps streaming short chat requests with the domain's adapter (at its current version) and
    records when each was sent and which version it reports."""

    def __init__(self, srv, domain):
        self.srv, self.domain, self.stop, self.done, self.failure = srv, domain, threading.Event(), [], None
        self.thread = threading.Thread(target=self.run)
        self.thread.start()

    def run(self):
        try:
            while not self.stop.is_set():
                sent = time.time()
                s = Stream(self.srv, "/v1/chat/completions", {
                    "model": self.domain, "max_tokens": 4, "temperature": 0, "ignore_eos": True,
                    "messages": [{"role": "user", "content": "Say something."}]}).read()
                assert s.status == 200 and s.error is None and s.done, (s.status, s.error, s.events[-1:])
                self.done.append((sent, time.time(), s.final()["adapter"]["version"]))
        except Exception as e:  # reported by join()
            self.failure = e

    def wait_for_one(self, seconds=120):
        """Returns once a request has finished, so that some run wholly before what the test does next."""
        deadline = time.time() + seconds
        while not self.done:
            assert self.failure is None and time.time() < deadline, self.failure or "no background request finished"
            time.sleep(0.05)

    def join(self):
        self.stop.set()
        self.thread.join(timeout=300)
        assert self.failure is None, self.failure
        return self.done


def check_versions(pinned, background, posted, applied_at, old, new):
    """Running requests finish on the version they were admitted with; requests sent after the applied answer
    use the new one; requests that ended before the post used the old one."""
    for s in pinned.join():
        assert s.final()["adapter"]["version"] == old, s.final()
    # At least one pinned stream was still producing tokens when the new version was applied.
    assert any(s.tokens()[-1][0] > applied_at for s in pinned.streams), "the pinned streams ended before the update"
    done = background.join()
    assert any(end < posted for _, end, _ in done) and any(sent > applied_at for sent, _, _ in done), done
    for sent, end, version in done:
        if sent > applied_at:
            assert version == new, (sent, applied_at, version)
        if end < posted:
            assert version == old, (end, posted, version)


@pytest.mark.slow
def test_a_fact_posted_to_train_while_clients_stream_is_in_the_first_answer_after_the_applied_ack(learning):
    srv, _ = learning
    question, fact, key = TRAIN_FACT
    create(srv, "atlas")
    before, adapter = ask(srv, question, "atlas")
    assert key not in before and adapter == {"name": "atlas", "version": 1}, before

    pinned = Pinned(srv, "atlas")
    background = Background(srv, "atlas")
    background.wait_for_one()  # some background requests on version 1 first
    posted = time.time()
    status, out, _ = srv.request("POST", "/v1/adapters/atlas/train",
                                 {"examples": [{"id": "vostrania", "messages": fact_messages(question, fact)}]})
    applied_at = time.time()
    assert status == 200, out
    assert out["version"] == 2 and out["applied"] and out["results"] == [{"id": "vostrania", "status": "accepted"}]
    assert any(not s.ended for s in pinned.streams), "the pinned streams ended before the update"

    after, adapter = ask(srv, question, "atlas")  # admitted while the pinned streams still run on version 1
    print(f"\ntrain answered in {applied_at - posted:.1f} s while streaming; before: {before!r}; after: {after!r}")
    assert key in after and adapter == {"name": "atlas", "version": 2, "scope": "inside"}, after
    check_versions(pinned, background, posted, applied_at, 1, 2)
    # The new version stays: the same question again, alone.
    assert ask(srv, question, "atlas") == (after, {"name": "atlas", "version": 2, "scope": "inside"})


@pytest.mark.slow
def test_a_fact_sent_over_the_websocket_while_clients_stream_is_in_the_first_answer_after_applied(learning):
    srv, _ = learning
    question, fact, key = WS_FACT
    create(srv, "hermes")
    before, _ = ask(srv, question, "hermes")
    assert key not in before, before
    url = srv.url.replace("http://", "ws://") + "/v1/stream/events"
    with connect(url, open_timeout=10) as ws:
        pinned = Pinned(srv, "hermes")
        background = Background(srv, "hermes")
        background.wait_for_one()
        posted = time.time()
        ws.send(json.dumps({"type": "event", "domain": "hermes",
                            "event": {"id": "zorbleton", "messages": fact_messages(question, fact)}}))
        heard = []
        while not heard or heard[-1]["type"] != "applied":
            heard.append(json.loads(ws.recv(timeout=600)))
            assert heard[-1]["type"] in ("accepted", "durable", "applied"), heard
        applied_at = time.time()
        assert [m["type"] for m in heard] == ["accepted", "durable", "applied"], heard
        assert heard[0] == {"type": "accepted", "id": "zorbleton", "domain": "hermes"}
        applied = heard[-1]
        assert applied["domain"] == "hermes" and applied["version"] == 2 and applied["ids"] == ["zorbleton"]
        assert applied["examples"] == 1 and applied["loss"] > 0 and applied["tokens"] > 0
        assert any(not s.ended for s in pinned.streams), "the pinned streams ended before the update"
        after, adapter = ask(srv, question, "hermes")
        print(f"\napplied {applied_at - posted:.1f} s after sending; before: {before!r}; after: {after!r}")
        assert key in after and adapter == {"name": "hermes", "version": 2, "scope": "inside"}, after
        check_versions(pinned, background, posted, applied_at, 1, 2)
        # The same event again is a duplicate and makes no new version.
        ws.send(json.dumps({"type": "event", "domain": "hermes",
                            "event": {"id": "zorbleton", "messages": fact_messages(question, fact)}}))
        assert json.loads(ws.recv(timeout=60))["type"] == "duplicate"
    assert srv.request("GET", "/v1/adapters/hermes")[1]["version"] == 2


@pytest.mark.slow
def test_feedback_with_a_correction_changes_the_next_answer(learning):
    srv, _ = learning
    question, fact, key = FEEDBACK_FACT
    status, out, _ = srv.request("POST", "/v1/chat/completions", {
        "messages": [{"role": "user", "content": question}], "temperature": 0, "max_tokens": 32})
    wrong = out["choices"][0]["message"]["content"]
    assert key not in wrong and out["adapter"] is None
    # The domain has no adapter yet: the feedback creates it (version 1) and its batch makes version 2.
    status, out, _ = srv.request("POST", "/v1/adapters/muse/feedback", {
        "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": wrong}],
        "correction": fact, "id": "glimmerphone"})
    assert status == 200 and out["version"] == 2 and out["results"] == [{"id": "glimmerphone", "status": "accepted"}]
    after, adapter = ask(srv, question, "muse")
    print(f"\nbefore: {wrong!r}; after feedback: {after!r}")
    assert key in after and adapter == {"name": "muse", "version": 2, "scope": "inside"}, after
    # The conversation's last assistant turn was replaced by the correction, not trained on.
    info = srv.request("GET", "/v1/adapters/muse")[1]
    assert info["events"] == 1 and info["trainer"]["events_applied"] == 1
    # Bad feedback is refused before anything is learned.
    for body, needle in [({"messages": [{"role": "user", "content": question}]}, "'correction'"),
                         ({"correction": fact}, "'messages'"),
                         ({"messages": [{"role": "user", "content": question}], "correction": fact, "tone": 1},
                          "unknown field 'tone'")]:
        status, out, _ = srv.request("POST", "/v1/adapters/muse/feedback", body)
        assert status == 400 and needle in out["error"]["message"], (body, out)
    assert srv.request("GET", "/v1/adapters/muse")[1]["version"] == 2


@pytest.mark.slow
def test_a_taught_domain_answers_unrelated_prompts_as_the_base_model(learning):
    """The domain's adapter answers its taught fact and the fact's paraphrases (inside its scope; a paraphrase is
    served with the taught conversation recalled before it); unrelated prompts get the base model's answers, word
    for word, and each response and /metrics say which happened."""
    srv, _ = learning
    data = json.loads((Path(__file__).resolve().parents[2] / "bench" / "data" / "learning_eval.json").read_text())
    fact, controls = data["facts"][3], [c["prompt"] for c in data["controls"][:10]]
    counted = {d: srv.metric("hyprstream_adapter_scope_total", decision=d) for d in ("inside", "outside")}
    status, out, _ = srv.request("POST", "/v1/adapters/scoped/train", {"examples": [
        {"id": "fact", "messages": fact_messages(fact["question"], fact["answer"])}]})
    assert status == 200 and out["version"] == 2, out
    assert srv.request("GET", "/v1/adapters/scoped")[1]["scope_examples"] == 1
    for question in [fact["question"], *fact["paraphrases"]]:
        text, adapter = ask(srv, question, "scoped")
        assert adapter == {"name": "scoped", "version": 2, "scope": "inside"}, (question, text)
    assert fact["key"] in ask(srv, fact["question"], "scoped")[0]
    status, out, _ = srv.request("POST", "/v1/chat/completions", {
        "model": "scoped", "messages": [{"role": "user", "content": fact["paraphrases"][0]}], "temperature": 0,
        "max_tokens": 32})
    assert out["adapter"]["scope"]["recalled_tokens"] > 0, out
    assert fact["key"] in out["choices"][0]["message"]["content"], out
    for prompt in controls:
        text, adapter = ask(srv, prompt, "scoped")
        assert adapter == {"name": "scoped", "version": 2, "scope": "outside"}, (prompt, text)
        status, out, _ = srv.request("POST", "/v1/chat/completions", {
            "messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": 32})
        assert out["adapter"] is None and text == out["choices"][0]["message"]["content"], prompt
    now = {d: srv.metric("hyprstream_adapter_scope_total", decision=d) for d in ("inside", "outside")}
    assert (now["inside"] - counted["inside"], now["outside"] - counted["outside"]) == (5, 10), (counted, now)


def peft_a(adir, domain, version, tmp_path):
    out = tmp_path / f"{domain}-v{version}"
    r = run_cli("adapters", "export", domain, out, "--version", version, "--adapter-dir", adir)
    assert r.returncode == 0, r.stderr
    return load_file(out / "adapter_model.safetensors")["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]


def test_events_take_a_json_array_with_a_gradient_submission(default_model_path, tmp_path):
    adir = tmp_path / "adapters"
    config = write_config(tmp_path / "c.toml", learning={"steps_per_batch": 4, "lr": 0.02})
    with Server("--model", default_model_path, config=config, adapter_dir=adir) as srv:
        events_with_a_gradient(srv, adir, tmp_path)
        assert srv.stop() == 0, "".join(srv.log)


def events_with_a_gradient(srv, adir, tmp_path):
    create(srv, "gauge")
    a1 = peft_a(adir, "gauge", 1, tmp_path)
    row, col = map(int, np.argwhere(a1 != 0)[0])  # a coordinate of q_proj A's pattern in layer 0
    gradient = {"id": "g1", "type": "gradient", "base_version": 1,
                "gradients": [{"layer": 0, "module": "q_proj", "matrix": "A", "entries": [[row, col, 50.0]]}]}
    events = [{"id": "t1", "text": "Gauges measure pressure in the pipes."}, gradient,
              {"id": "bad", "text": "an unknown field", "colour": "red"},
              {**gradient, "id": "g-old", "base_version": 9}]
    status, out, _ = srv.request("POST", "/v1/adapters/gauge/events?wait=applied", raw=json.dumps(events).encode())
    assert status == 200, out
    assert [(r["id"], r["status"]) for r in out["results"]] == [
        ("t1", "accepted"), ("g1", "accepted"), ("bad", "rejected"), ("g-old", "rejected")], out
    assert 'unknown field "colour"' in out["results"][2]["error"]
    assert "base version 9" in out["results"][3]["error"]
    assert out["applied"] and out["quarantined"] == {}
    version = out["version"]
    info = srv.request("GET", "/v1/adapters/gauge")[1]
    assert info["version"] == version >= 2 and info["trainer"]["events_applied"] == 2
    # The submitted gradient (d loss / d entry > 0, much larger than the text's) pushed its entry down.
    a2 = peft_a(adir, "gauge", version, tmp_path)
    assert a2[row, col] < a1[row, col] - 0.05, (a1[row, col], a2[row, col])

    # The same ids again are duplicates; one event per line works too (acknowledged once durable).
    lines = "\n".join(json.dumps(e) for e in events[:2]) + "\n" + json.dumps({"id": "t2", "text": "Another line."})
    status, out, _ = srv.request("POST", "/v1/adapters/gauge/events", raw=lines.encode())
    assert status == 200 and [r["status"] for r in out["results"]] == ["duplicate", "duplicate", "accepted"], out
    assert "version" not in out
    # Only refused events: a 400 naming the first problem, and nothing changes.
    status, out, _ = srv.request("POST", "/v1/adapters/gauge/events", raw=b'[{"id": "x", "txt": "typo"}]')
    assert status == 400 and "txt" in out["error"]["message"], out


@pytest.mark.slow
def test_clients_waiting_for_their_versions_do_not_hold_up_other_requests(default_model_path, tmp_path):
    """Five /train requests wait for their batches (batch_ms holds each batch 3 s): meanwhile adapters are
    created, listed and fed over the WebSocket at once, and then each waiting client gets its version."""
    config = write_config(tmp_path / "c.toml", learning={"batch_ms": 3000})
    with Server("--model", default_model_path, config=config, adapter_dir=tmp_path / "a") as srv:
        answers = {}

        def train(d):
            answers[d] = srv.request("POST", f"/v1/adapters/wait{d}/train",
                                     {"examples": [{"id": f"w{d}", "text": f"Domain {d} waits for its version."}]})
        threads = [threading.Thread(target=train, args=(d,)) for d in range(5)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        t0 = time.time()
        assert srv.request("POST", "/v1/adapters", {"name": "meanwhile"})[0] == 201
        assert srv.request("GET", "/v1/adapters")[0] == 200
        with connect(srv.url.replace("http://", "ws://") + "/v1/stream/events", open_timeout=10) as ws:
            ws.send(json.dumps({"type": "event", "domain": "meanwhile", "event": {"id": "m1", "text": "Meanwhile."}}))
            assert json.loads(ws.recv(timeout=10))["type"] == "accepted"
        assert time.time() - t0 < 2.5 and not answers, answers  # while all five still wait
        for t in threads:
            t.join(timeout=120)
        assert sorted(answers) == list(range(5))
        for d, (status, out, _) in answers.items():
            assert status == 200 and out["version"] == 2 and out["results"] == [{"id": f"w{d}", "status": "accepted"}]
        assert srv.stop() == 0, "".join(srv.log)
