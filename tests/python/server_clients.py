"""Small real clients of `hyprstream serve` shared by the server tests: a streamed (SSE) request read event by
event with the time each arrived, and a free port for companion processes (Prometheus)."""
import http.client
import json
import socket
import time


class Stream:
    """One streamed POST on its own connection. `events` holds (arrival time, parsed data) per SSE event;
    `done` is true once `data: [DONE]` arrived, `ended` once the server closed the stream (chunked end)."""

    def __init__(self, srv, path, body, timeout=600):
        host, port = srv.url.split("//")[1].split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
        self.conn.request("POST", path, json.dumps({**body, "stream": True}), {"Content-Type": "application/json"})
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.events, self.done, self.ended, self.error = [], False, False, None

    def read(self, on_event=None):
        """Reads to the end of the stream (or until the connection breaks, kept in `error`)."""
        try:
            for raw in self.resp:
                line = raw.decode().strip()
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    self.done = True
                    continue
                event = json.loads(line[6:])
                self.events.append((time.time(), event))
                if on_event:
                    on_event(event)
            self.ended = True
        except (OSError, http.client.HTTPException) as e:
            self.error = e
        finally:
            self.conn.close()
        return self

    def tokens(self):
        """Times and events of the generated tokens (native /v1/generate and OpenAI chunks alike)."""
        out = []
        for t, e in self.events:
            if "token" in e or any(c.get("delta", {}).get("content") or c.get("text") for c in e.get("choices", [])):
                out.append((t, e))
        return out

    def final(self):
        """The last event that names the adapter: the native final event, or the OpenAI chunk that carries it."""
        for _, e in reversed(self.events):
            if "adapter" in e:
                return e
        return None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
