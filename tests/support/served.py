"""Test-only: real HTTP servers on 127.0.0.1 — the tiny model behind the OpenAI chat-completions protocol
(``ergo_train.eval.chat_server`` in its own process), and a fault server that answers with given HTTP statuses."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.support.paths import ROOT


@contextmanager
def served_tiny_process(max_pixels: int) -> Iterator[str]:
    """``python -m ergo_train.eval.chat_server --model tiny --port 0`` in a subprocess; yields its api_base."""
    proc = subprocess.Popen([sys.executable, "-m", "ergo_train.eval.chat_server", "--model", "tiny", "--port", "0",
                             "--max-pixels", str(max_pixels), "--device", "cpu"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = ""
        while proc.poll() is None and "serving" not in line:
            line = proc.stdout.readline()
        if "serving" not in line:
            raise RuntimeError(f"the chat server did not start: {proc.stdout.read()}")
        yield line.split(" on ", 1)[1].split()[0]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextmanager
def fault_server(replies: list[tuple[int, dict]], delay_s: float = 0.0) -> Iterator[tuple[str, list[dict]]]:
    """A real server answering POSTs with ``replies`` in turn (the last one repeats), after ``delay_s``.

    Yields ``(api_base, bodies)``: the request bodies it received."""
    import time

    bodies: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            status, payload = replies[min(len(bodies) - 1, len(replies) - 1)]
            time.sleep(delay_s)
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client timed out first
                pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", bodies
    finally:
        server.shutdown()
        server.server_close()


def reply(content: str) -> dict:
    """A chat-completions reply with one assistant message."""
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
            "usage": {"completion_tokens": 1}}
