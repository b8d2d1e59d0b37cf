"""`hyprstream serve` as a test fixture: the real binary on 127.0.0.1 with a free port, its output kept."""
import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request

from conftest import CLI


class Server:
    """Starts the server and waits until it listens (HTTP at `url`, gRPC at `grpc_target`, both on free ports).
    Output goes to `log` (read it when a test fails)."""

    def __init__(self, *args, adapter_dir, config=None, env=None):
        cmd = [str(CLI), "serve", "--port", "0", "--grpc-port", "0", "--adapter-dir", str(adapter_dir), *map(str, args)]
        if config:
            cmd += ["--config", str(config)]
        self.log = []
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, **(env or {})})
        deadline = time.time() + 180
        self.url = self.grpc_target = None
        for line in self.proc.stdout:
            self.log.append(line)
            if "listening on grpc://" in line:
                self.grpc_target = line.strip().split("listening on grpc://")[1]
            if "listening on http://" in line:
                self.url = line.strip().split("listening on ")[1]
                break
            if time.time() > deadline:
                break
        if not self.url:
            self.proc.kill()
            raise AssertionError("the server did not start:\n" + "".join(self.log))
        self.reader = threading.Thread(target=self._drain, daemon=True)
        self.reader.start()

    def _drain(self):
        for line in self.proc.stdout:
            self.log.append(line)

    def stop(self, sig=signal.SIGTERM, timeout=120):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return rc

    def request(self, method, path, body=None, headers=None, raw=None, timeout=300):
        """(status, parsed JSON or text, headers) of one HTTP request."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status, text, hdrs = r.status, r.read().decode(), dict(r.headers)
        except urllib.error.HTTPError as e:
            status, text, hdrs = e.code, e.read().decode(), dict(e.headers)
        try:
            return status, json.loads(text), hdrs
        except json.JSONDecodeError:
            return status, text, hdrs

    def metric(self, name, **labels):
        """The value of one series in /metrics (0 when absent)."""
        _, text, _ = self.request("GET", "/metrics")
        want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
        for line in text.splitlines():
            if line.startswith(want + " "):
                return float(line.split()[-1])
        return 0.0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.stop(signal.SIGKILL)


def write_config(path, **sections):
    """A TOML config with the given sections: write_config(p, learning={"lr": 0.01})."""
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        for k, v in values.items():
            lines.append(f"{k} = {json.dumps(v)}")
    path.write_text("\n".join(lines) + "\n")
    return path
