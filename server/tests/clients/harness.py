"""Starting and stopping `kvpress serve` (and `redis-server`) for the client tests."""

import http.client
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

BIN = os.environ.get("KVPRESS_BIN", "target/debug/kvpress")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


class Server:
    """A `kvpress serve` process on a free port; `url` is its `/v1` base URL."""

    def __init__(self, store, *extra):
        self.store = store
        self.process = subprocess.Popen(
            [BIN, "serve", "--port", "0", "--store", store, *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
        )
        line = self.process.stdout.readline()
        if "listening on http://" not in line:
            self.process.kill()
            raise RuntimeError(f"kvpress serve did not start: {line!r}")
        self.base = line.split("listening on ")[1].split()[0]
        self.url = self.base + "/v1"
        self.model = self.get("/v1/models")["data"][0]["id"]

    def request(self, method, path, body=None):
        """(status, JSON body); (None, None) when the connection broke (the server died)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())
        except (ConnectionError, urllib.error.URLError, http.client.HTTPException):
            return None, None

    def get(self, path):
        status, body = self.request("GET", path)
        assert status == 200, body
        return body

    def create_context(self, text, press):
        status, body = self.request("POST", "/v1/contexts", {"text": text, "press": press})
        assert status == 200, body
        return body

    def stop(self):
        """SIGTERM (graceful shutdown); returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()
        return self.process.returncode

    def kill(self):
        """`kill -9`."""
        self.process.kill()
        self.process.wait()
        self.process.stdout.close()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    """A throwaway `redis-server` on a free port, persisting nothing."""

    def __init__(self):
        self.port = free_port()
        self.dir = tempfile.mkdtemp()
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        else:
            self.stop()
            raise RuntimeError("redis-server did not start")
        self.url = f"redis://127.0.0.1:{self.port}"

    def stop(self):
        self.process.kill()
        self.process.wait()


def kvpress(*args):
    """Runs the `kvpress` command line; returns its stdout."""
    return subprocess.run([BIN, *args], check=True, capture_output=True, text=True, cwd=ROOT).stdout


def run_answer(context_file, question, max_new_tokens):
    """`kvpress run --load FILE --question Q`'s answer text."""
    out = kvpress("run", "--load", context_file, "--question", question,
                  "--max-new-tokens", str(max_new_tokens))
    for line in out.splitlines():
        if line.startswith("A: "):
            return line[3:]
    raise AssertionError(f"no answer in: {out}")


def needle_text():
    with open(os.path.join(ROOT, "data", "needle-haystack.txt")) as f:
        return f.read()
