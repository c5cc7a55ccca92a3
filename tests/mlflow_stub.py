"""A stub MLflow tracking server on 127.0.0.1 for the relay tests: it answers log-batch, answers 503, or hangs."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOG_BATCH = "/api/2.0/mlflow/runs/log-batch"


class StubServer:
    """An MLflow REST stand-in: mode 'ok' records each log-batch body, '503' refuses, 'hang' never answers
    (until stopped)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.bodies: list[dict] = []
        self.requests = 0
        self.release = threading.Event()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                stub.requests += 1
                if stub.mode == "hang":
                    stub.release.wait(60)
                    return
                if stub.mode == "503" or self.path != LOG_BATCH:
                    self.send_response(503)
                    self.end_headers()
                    return
                stub.bodies.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
