"""Operating `hyprstream serve`, with real companions: a real Prometheus scrapes /metrics and answers queries
about it; headless Chromium (selenium) watches the dashboard's loss chart grow while a domain trains; SIGTERM
under load ends streams cleanly and leaves every adapter and checkpoint whole for the next start, and after a
SIGKILL every acknowledged event is replayed; the config
file is the documented default and refuses bad keys, types and values by name; the WebSocket survives bad
frames; health, readiness, the OpenAPI document and the stats answer."""
import http.client
import json
import shutil
import signal
import subprocess
import threading
import time
import tomllib
import urllib.parse
import urllib.request

import pytest
from websockets.sync.client import connect

from conftest import CLI, ROOT, run_cli
from server import Server, write_config
from server_clients import Stream, free_port

ARTIFACTS = ROOT / "tests" / "python" / "artifacts"


@pytest.fixture(scope="module")
def served(default_model_path, tmp_path_factory):
    adir = tmp_path_factory.mktemp("ops-adapters")
    with Server("--model", default_model_path, adapter_dir=adir) as srv:
        yield srv
        assert srv.stop() == 0, "".join(srv.log)


def ws_url(srv):
    return srv.url.replace("http://", "ws://") + "/v1/stream/events"


def wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# --- health, readiness, the OpenAPI document, stats -------------------------------------------------------


def test_health_ready_openapi_and_stats(served):
    srv = served
    assert srv.request("GET", "/health")[:2] == (200, {"status": "ok"})
    status, ready, _ = srv.request("GET", "/ready")
    assert status == 200 and ready == {"status": "ready", "model": "SmolLM2-135M-Instruct.Q4_1"}

    status, doc, headers = srv.request("GET", "/openapi.json")
    assert status == 200 and headers["Content-Type"] == "application/json" and isinstance(doc, dict), doc
    assert doc["openapi"].startswith("3.")
    paths = doc["paths"]
    for p in ["/v1/chat/completions", "/v1/completions", "/v1/models",  # OpenAI
              "/v1/generate", "/v1/adapters", "/v1/adapters/{domain}", "/v1/adapters/{domain}/rollback",
              "/v1/adapters/{domain}/train", "/v1/adapters/{domain}/events", "/v1/adapters/{domain}/feedback",
              "/v1/stream/events", "/v1/stats", "/health", "/ready", "/metrics"]:
        assert p in paths, p
    assert "post" in paths["/v1/chat/completions"] and "delete" in paths["/v1/adapters/{domain}"]
    # Every $ref points at something the document defines.
    refs = set()

    def walk(x):
        if isinstance(x, dict):
            for k, v in x.items():
                if k == "$ref":
                    refs.add(v)
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
    walk(doc)
    for ref in refs:
        node = doc
        for part in ref.removeprefix("#/").split("/"):
            assert part in node, f"dangling $ref {ref}"
            node = node[part]

    status, stats, _ = srv.request("GET", "/v1/stats")
    assert status == 200
    assert stats["model"] == "SmolLM2-135M-Instruct.Q4_1"
    assert stats["kv_slots"] == 16 and stats["kv_tokens"] == 16 * 2048
    assert stats["running"] == stats["waiting"] == stats["kv_slots_used"] == 0
    steps = stats["steps"]
    srv.request("POST", "/v1/generate", {"prompt": "Hello", "max_tokens": 3, "temperature": 0, "ignore_eos": True})
    # A prefill and two decodes at least (the stats are published after the step that ended the request).
    wait_for(lambda: srv.request("GET", "/v1/stats")[1]["steps"] >= steps + 3, 5, "the step count")


# --- WebSocket bad input ------------------------------------------------------------------------------------


def test_a_websocket_frame_that_is_not_json_gets_an_error_and_the_connection_stays_usable(served):
    srv = served
    before = srv.metric("hyprstream_rejected_requests_total", reason="ws_not_json")
    with connect(ws_url(srv), open_timeout=10) as ws:
        ws.send("this is {not json")
        reply = json.loads(ws.recv(timeout=10))
        assert reply["type"] == "error" and "JSON" in reply["error"], reply
        ws.send(b"\x00\x01binary")
        assert json.loads(ws.recv(timeout=10))["type"] == "error"
        ws.send(json.dumps([1, 2]))  # JSON, but not a message
        assert "'type'" in json.loads(ws.recv(timeout=10))["error"]
        # Still usable: a subscription is confirmed.
        ws.send(json.dumps({"type": "subscribe", "domain": "nobody-yet"}))
        assert json.loads(ws.recv(timeout=10)) == {"type": "subscribed", "domain": "nobody-yet"}
    assert srv.metric("hyprstream_rejected_requests_total", reason="ws_not_json") == before + 3
    assert srv.request("GET", "/health")[0] == 200


# --- Prometheus ---------------------------------------------------------------------------------------------


def prometheus_query(base, query):
    url = base + "/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]["result"]


@pytest.mark.skipif(not shutil.which("prometheus"), reason="Debian's prometheus is not installed (scripts/bootstrap)")
def test_a_real_prometheus_scrapes_the_server_and_answers_queries_about_it(served, tmp_path):
    srv = served
    target = srv.url.split("//")[1]
    config = tmp_path / "prometheus.yml"
    config.write_text(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: hyprstream
    scrape_interval: 1s
    scrape_timeout: 1s
    static_configs:
      - targets: ["{target}"]
""")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "prometheus.log", "w")
    prom = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def ready():
            try:
                with urllib.request.urlopen(base + "/-/ready", timeout=2) as r:
                    return r.status == 200
            except OSError:
                assert prom.poll() is None, (tmp_path / "prometheus.log").read_text()
                return False
        wait_for(ready, 60, "Prometheus to be ready")
        status, out, _ = srv.request("POST", "/v1/completions", {"prompt": "Prometheus stole fire", "max_tokens": 5,
                                                                 "temperature": 0, "ignore_eos": True})
        assert status == 200, out
        ours = srv.metric("hyprstream_requests_total", finish_reason="length")
        assert ours >= 1

        def scraped():
            up = prometheus_query(base, 'up{job="hyprstream"}')
            got = prometheus_query(base, 'hyprstream_requests_total{finish_reason="length"}')
            return up and up[0]["value"][1] == "1" and got and float(got[0]["value"][1]) >= ours and got
        result = wait_for(scraped, 30, "Prometheus to scrape the request")
        assert result[0]["metric"]["job"] == "hyprstream" and result[0]["metric"]["instance"] == target
        # A histogram and a gauge came through the text format too.
        assert float(prometheus_query(base, "hyprstream_time_to_first_token_seconds_count")[0]["value"][1]) >= 1
        assert prometheus_query(base, "hyprstream_requests_running")[0]["value"][1] == "0"
        # Prometheus read every series of the page: the scrape reported no errors and as many samples.
        samples = float(prometheus_query(base, 'scrape_samples_scraped{job="hyprstream"}')[0]["value"][1])
        assert samples >= 20
    finally:
        prom.terminate()
        try:
            prom.wait(timeout=20)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait(timeout=10)
        log.close()
    assert prom.poll() is not None


# --- Dashboard in headless Chromium -------------------------------------------------------------------------


def chromium():
    from selenium import webdriver
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1000,900",
                "--no-first-run", "--disable-extensions"]:
        options.add_argument(arg)
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    return webdriver.Chrome(options=options, service=service)


@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                    reason="Debian's chromium and chromium-driver are not installed (scripts/bootstrap)")
def test_the_dashboard_in_headless_chromium_shows_the_loss_curve_growing_while_a_domain_trains(served):
    srv = served
    driver = chromium()
    try:
        driver.set_script_timeout(10)
        driver.get(srv.url + "/")
        assert driver.title == "Hyprstream"
        wait_for(lambda: driver.find_element("id", "status").text == "live", 20, "the dashboard's WebSocket")
        wait_for(lambda: driver.find_element("id", "model").text == "SmolLM2-135M-Instruct.Q4_1", 10, "the stats poll")
        canvas = driver.find_element("id", "loss")
        before = int(canvas.get_attribute("data-points"))
        for i, text in enumerate(["The dashboard domain learns its first sentence.",
                                  "Then a second sentence arrives for the dashboard.",
                                  "And a third one, so the curve has a shape."]):
            status, out, _ = srv.request("POST", "/v1/adapters/dashboard/train", {"examples": [{"text": text}]})
            assert status == 200 and out["version"] == i + 2, out
        points = wait_for(lambda: int(canvas.get_attribute("data-points")) >= before + 3 and
                          int(canvas.get_attribute("data-points")), 20, "the loss chart to gain points")
        losses = driver.execute_script("return window.hyprstream.losses")
        assert len(losses["dashboard"]) == 3 and all(x > 0 for x in losses["dashboard"]), losses
        # The losses are the ones the trainer reported.
        trainer = srv.request("GET", "/v1/adapters/dashboard")[1]["trainer"]
        assert losses["dashboard"][-1] == pytest.approx(trainer["last_loss"], rel=1e-6)
        assert points == before + 3
        # The adapters table lists the domain at its new version; the legend counts its batches.
        rows = wait_for(lambda: [r.text for r in driver.find_elements("css selector", "#adapters tr")
                                 if r.text.startswith("dashboard 4")], 10, "the adapters table")
        assert rows, rows
        assert "dashboard: 3 batches" in driver.find_element("id", "legend").text
        # The canvas really has ink on it (not a blank chart with a counter).
        ink = driver.execute_script("""
            const c = document.getElementById('loss'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n;""")
        assert ink > 50
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "dashboard.png"
        assert driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 5000
        print(f"\ndashboard screenshot: {shot}")
    finally:
        driver.quit()


# --- Graceful stop ------------------------------------------------------------------------------------------


def no_half_written_files(adir, domain, tmp_path, export_all=True):
    """No temporary file anywhere; the adapter shows, and every version the manifest lists (or the current one)
    exports. Returns the manifest."""
    leftovers = [p for p in adir.rglob("*") if ".tmp." in p.name]
    assert not leftovers, leftovers
    manifest = json.loads((adir / domain / "manifest.json").read_text())
    shown = run_cli("adapters", "show", domain, "--json", "--adapter-dir", adir)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["current"] == manifest["current"]
    versions = [v["version"] for v in manifest["versions"]]
    assert manifest["current"] == max(versions)
    for v in versions if export_all else [manifest["current"]]:
        r = run_cli("adapters", "export", domain, tmp_path / f"export-{domain}-{v}", "--version", v,
                    "--adapter-dir", adir)
        assert r.returncode == 0, (v, r.stderr)
    return manifest


@pytest.mark.slow
def test_sigterm_with_no_connection_open_applies_and_checkpoints_every_acknowledged_event(default_model_path,
                                                                                          tmp_path):
    """The trainer's queue is finished and checkpointed before the process exits, even when no client holds a
    connection (the I/O loop then has nothing to wait for)."""
    adir = tmp_path / "adapters"
    config = write_config(tmp_path / "c.toml", learning={"batch_events": 1})
    events = [{"id": f"idle-{i}", "text": f"Idle sentence {i} for the trainer."} for i in range(3)]
    with Server("--model", default_model_path, config=config, adapter_dir=adir) as srv:
        status, out, _ = srv.request("POST", "/v1/adapters/idle/events", raw=json.dumps(events).encode())
        assert status == 200 and [r["status"] for r in out["results"]] == ["accepted"] * 3, out
        assert srv.stop() == 0, "".join(srv.log)
        assert "info stopped" in "".join(srv.log)
    manifest = no_half_written_files(adir, "idle", tmp_path, export_all=False)
    assert manifest["versions"][-1]["events"] == 3 and manifest["current"] >= 2, manifest
    # The clean stop checkpointed the last batch (its image and optimizer state are there).
    training = adir / "idle" / "training"
    checkpoint = json.loads((training / "CHECKPOINT").read_text())
    assert (training / (checkpoint["name"] + ".hsl")).is_file() and (training / (checkpoint["name"] + ".state")).is_file()
    with Server("--model", default_model_path, config=config, adapter_dir=adir) as srv:
        status, out, _ = srv.request("POST", "/v1/generate", {"prompt": "Idle", "max_tokens": 2, "adapter": "idle"})
        assert status == 200 and out["adapter"] == {"name": "idle", "version": manifest["current"]}, out
        for v in manifest["versions"]:  # every kept version opens
            status, out, _ = srv.request("POST", "/v1/generate", {"prompt": "Idle", "max_tokens": 1, "adapter": "idle",
                                                                  "adapter_version": v["version"]})
            assert status == 200 and out["adapter"]["version"] == v["version"], out
        assert srv.stop() == 0


@pytest.mark.slow
def test_after_a_kill_every_acknowledged_event_is_replayed_and_the_domain_keeps_learning(default_model_path,
                                                                                         tmp_path):
    """An /events answer means the events are in the write-ahead log: SIGKILL right after it loses none, and the
    first request to the domain after the restart (whose trainer replays the log) is answered."""
    adir = tmp_path / "adapters"
    config = write_config(tmp_path / "c.toml", learning={"batch_events": 1})
    events = [{"id": f"kill-{i}", "text": f"Sentence {i}, acknowledged before the kill."} for i in range(4)]
    with Server("--model", default_model_path, config=config, adapter_dir=adir) as srv:
        status, out, _ = srv.request("POST", "/v1/adapters/crash/events", raw=json.dumps(events).encode())
        assert status == 200 and [r["status"] for r in out["results"]] == ["accepted"] * 4, out
        srv.proc.kill()
        srv.proc.wait()
    with Server("--model", default_model_path, config=config, adapter_dir=adir) as srv:
        status, out, _ = srv.request("POST", "/v1/adapters/crash/events?wait=applied", timeout=120,
                                     raw=json.dumps([events[0], {"id": "after", "text": "After the kill."}]).encode())
        assert status == 200 and [r["status"] for r in out["results"]] == ["duplicate", "accepted"], out
        info = srv.request("GET", "/v1/adapters/crash")[1]
        assert info["trainer"]["events_applied"] == 5 and info["events"] == 5, info
        assert out["version"] == info["version"]
        assert srv.stop() == 0, "".join(srv.log)


@pytest.mark.slow
def test_sigterm_under_load_ends_streams_cleanly_and_a_restart_serves_the_last_applied_version(default_model_path,
                                                                                                tmp_path):
    adir = tmp_path / "adapters"
    config = write_config(tmp_path / "stop.toml", learning={"steps_per_batch": 3, "batch_events": 1,
                                                            "checkpoint_every": 2})
    events = [{"id": f"stop-{i}", "text": f"Sentence number {i} teaches the stopping domain something new."}
              for i in range(8)]
    with Server("--model", default_model_path, config=config, adapter_dir=adir) as srv:
        status, created, _ = srv.request("POST", "/v1/adapters", {"name": "stop"})
        assert status == 201, created
        heard = []
        with connect(ws_url(srv), open_timeout=10) as ws:
            ws.send(json.dumps({"type": "subscribe", "domain": "stop"}))
            assert json.loads(ws.recv(timeout=10))["type"] == "subscribed"
            # The trainer gets a queue of one-event batches (over the WebSocket: accepted when queued; an HTTP
            # answer would wait until the last one is in the log, behind the others' training).
            for e in events:
                ws.send(json.dumps({"type": "event", "domain": "stop", "event": e}))
            accepted = 0
            while accepted < len(events):
                heard.append(json.loads(ws.recv(timeout=60)))
                accepted += heard[-1]["type"] == "accepted"
                assert heard[-1]["type"] in ("accepted", "durable", "applied"), heard[-1]
            # Streams with the adapter and without, running when the signal comes.
            streams = [Stream(srv, "/v1/generate", {"prompt": "Once upon a time", "max_tokens": 40, "temperature": 0,
                                                    "ignore_eos": True}),
                       Stream(srv, "/v1/chat/completions", {"messages": [{"role": "user", "content": "Tell a story"}],
                                                            "model": "stop", "max_tokens": 40, "temperature": 0,
                                                            "ignore_eos": True}),
                       Stream(srv, "/v1/completions", {"prompt": "The sea", "max_tokens": 40, "temperature": 0,
                                                       "ignore_eos": True, "adapter": "stop"})]
            assert all(s.status == 200 for s in streams)
            readers = [threading.Thread(target=s.read) for s in streams]
            for r in readers:
                r.start()
            wait_for(lambda: all(s.tokens() for s in streams), 60, "every stream's first token")
            stats = srv.request("GET", "/v1/adapters/stop")[1]["trainer"]
            assert stats["queue_depth"] > 0, stats  # the trainer is busy: 8 one-event batches of 3 steps
            assert srv.metric("hyprstream_requests_running") == 3
            host, port = srv.url.split("//")[1].split(":")
            kept = http.client.HTTPConnection(host, int(port), timeout=30)  # open before the signal
            kept.request("GET", "/ready")
            r = kept.getresponse()
            assert (r.status, json.loads(r.read())["status"]) == (200, "ready")
            srv.proc.send_signal(signal.SIGTERM)
            signalled = time.time()
            # While the streams finish: not ready, and new work is refused (new connections are not accepted).
            for _ in range(100):
                kept.request("GET", "/ready")
                r = kept.getresponse()
                ready = (r.status, json.loads(r.read()))
                if r.status == 503:
                    break
                time.sleep(0.02)
            assert ready == (503, {"status": "shutting down"}), ready
            kept.request("POST", "/v1/completions", json.dumps({"prompt": "Too late", "max_tokens": 2}),
                         {"Content-Type": "application/json"})
            r = kept.getresponse()
            refused = (r.status, json.loads(r.read()))
            assert refused[0] in (429, 503) and "shutting down" in refused[1]["error"]["message"], refused
            kept.close()
            assert all(not s.ended for s in streams), "the streams ended before the signal"
            try:
                while True:
                    heard.append(json.loads(ws.recv(timeout=60)))
            except Exception:  # the connection ends with the server
                pass
        assert srv.proc.wait(timeout=120) == 0, "".join(srv.log)  # one SIGTERM only: srv.stop() would send another
        stop_seconds = time.time() - signalled
        srv.stop()
        for r in readers:
            r.join(timeout=30)
        log = "".join(srv.log)

    # Every stream ran to its end: all 40 tokens, its final event and [DONE].
    for s in streams:
        assert s.error is None and s.ended and s.done, (s.error, s.events[-2:], log)
        assert len(s.tokens()) == 40 or s.final()["usage"]["completion_tokens"] == 40, s.events[-2:]
    assert streams[1].final()["adapter"]["name"] == "stop"

    # Nothing half-written: no temporary file anywhere, every version in the manifest opens and exports.
    manifest = no_half_written_files(adir, "stop", tmp_path)
    current = manifest["current"]
    versions = [v["version"] for v in manifest["versions"]]
    # The trainer finished its queue before exiting: the current version holds all 8 events.
    assert manifest["versions"][-1]["events"] == len(events), manifest
    applied = [m["version"] for m in heard if m["type"] == "applied"]
    assert applied and max(applied) <= current
    print(f"\nstopped in {stop_seconds:.1f} s; versions {versions}, heard applied {applied}")

    # A restart serves the last applied version, and its trainer resumes from the checkpoint.
    with Server("--model", default_model_path, config=config, adapter_dir=adir) as srv:
        status, info, _ = srv.request("GET", "/v1/adapters/stop")
        assert status == 200 and info["version"] == current and info["events"] == len(events), info
        status, out, _ = srv.request("POST", "/v1/generate", {"prompt": "Once upon a time", "max_tokens": 4,
                                                              "temperature": 0, "adapter": "stop"})
        assert status == 200 and out["adapter"] == {"name": "stop", "version": current}, out
        # The checkpoint knew every id: sending one again is a duplicate, a new one makes the next version.
        status, out, _ = srv.request("POST", "/v1/adapters/stop/events?wait=applied",
                                     raw=json.dumps([events[0], {"id": "after", "text": "After the restart."}]).encode())
        assert status == 200, out
        assert [r["status"] for r in out["results"]] == ["duplicate", "accepted"]
        assert out["version"] == current + 1
        assert srv.stop() == 0


# --- Config --------------------------------------------------------------------------------------------------


def serve(*args, timeout=60):
    return subprocess.run([str(CLI), "serve", *map(str, args)], capture_output=True, text=True, timeout=timeout)


def test_print_config_without_a_file_equals_the_documented_default_file():
    built_in = serve("--print-config")
    from_file = serve("--print-config", "--config", ROOT / "config" / "default.toml")
    assert built_in.returncode == 0 and from_file.returncode == 0, (built_in.stderr, from_file.stderr)
    assert built_in.stdout == from_file.stdout
    parsed = tomllib.loads(built_in.stdout)
    documented = tomllib.loads((ROOT / "config" / "default.toml").read_text())
    assert parsed == documented  # every key, and no key the file does not document


@pytest.mark.parametrize("section, key, value, needle", [
    ("server", "prot", 8080, "'server.prot' is not a setting"),
    ("scheduler", "max_seqs", "many", "'scheduler.max_seqs' must be an integer"),
    ("learning", "lr", "fast", "'learning.lr' must be a number"),
    ("server", "port", 70000, "'server.port' must lie in [0, 65535], not 70000"),
    ("scheduler", "training_share", 1.5, "'scheduler.training_share' must lie in"),
    ("model", "dtype", "float8", "'model.dtype' must be one of"),
    ("learning", "batch_events", 0, "'learning.batch_events' must lie in"),
    ("learning", "rehearsal_examples", 5000, "'learning.rehearsal_examples' must lie in"),
    ("scheduler", "recall_taught", 1, "'scheduler.recall_taught' must be true or false"),
    ("scheduler", "cuda_graphs", "yes", "'scheduler.cuda_graphs' must be true or false"),
    ("scheduler", "max_step_tokens", 8, "max_step_tokens (8) must be at least max_seqs (16)"),
    ("server", "idle_timeout_ms", 10**12, "'server.idle_timeout_ms' must be an integer of milliseconds"),
])
def test_a_bad_config_is_refused_at_start_naming_the_key(tmp_path, section, key, value, needle):
    config = write_config(tmp_path / "bad.toml", **{section: {key: value}})
    r = serve("--config", config, "--port", 0, "--adapter-dir", tmp_path / "a")  # a real start, not --print-config
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert needle in r.stderr, r.stderr
    assert "listening" not in r.stdout


def test_a_config_that_is_not_toml_or_not_there_is_refused(tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text("[server]\nport = = 1\n")
    r = serve("--config", broken, "--port", 0)
    assert r.returncode == 2 and "is not valid TOML at line 2" in r.stderr, r.stderr
    r = serve("--config", tmp_path / "missing.toml", "--port", 0)
    assert r.returncode == 3 and "missing.toml" in r.stderr, (r.returncode, r.stderr)
    r = serve("--config", broken.parent, "--port", 0)  # a folder
    assert r.returncode != 0 and str(broken.parent) in r.stderr, (r.returncode, r.stderr)


def test_flags_override_the_config_file(tmp_path):
    config = write_config(tmp_path / "c.toml", server={"port": 9999, "threads": 2},
                          scheduler={"max_seqs": 3, "queue_capacity": 7}, learning={"lr": 0.05})
    r = serve("--print-config", "--config", config, "--max-seqs", 5, "--port", 1234)
    assert r.returncode == 0, r.stderr
    c = tomllib.loads(r.stdout)
    assert c["server"]["port"] == 1234 and c["scheduler"]["max_seqs"] == 5  # flags win
    assert c["server"]["threads"] == 2 and c["scheduler"]["queue_capacity"] == 7 and c["learning"]["lr"] == 0.05
    # And a flag's own value is checked like the file's.
    bad = serve("--print-config", "--config", config, "--max-seqs", 0)
    assert bad.returncode == 2 and "max_seqs" in bad.stderr, bad.stderr
