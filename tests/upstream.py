"""A real OpenAI-compatible HTTP upstream on 127.0.0.1 for the openai backend's tests.

`http.server` on a thread of its own, HTTP/1.1 with chunked SSE bodies. What it answers
depends on the request's `model`:

- `replay:NAME`   the recorded SSE text `fixtures/openai_sse/NAME.txt`, byte for byte;
- `error:STATUS`  an OpenAI-style JSON error body with that HTTP status;
- `slow`          one content chunk every 20 ms until the client closes the connection
                  (`Upstream.closed` is set when it sees that);
- `stall`         the SSE headers, then nothing (a read timeout);
- `broken`        one chunk, then an error event mid-stream.

Every request is recorded (`Upstream.requests`: path, headers, JSON body).
"""

from __future__ import annotations

import json
import select
import socket
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures" / "openai_sse"


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


def _chunk(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-slow",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client pool that closes an idle keep-alive connection resets it: not an error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class Upstream:
    """Start with `Upstream()`, stop with `close()`; `base_url` is `http://127.0.0.1:PORT/v1`."""

    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self.closed = threading.Event()
        self.release = threading.Event()  # ends a `stall` answer
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                upstream.requests.append(Seen(self.path, dict(self.headers.items()), body))
                model = str(body.get("model", ""))
                kind, _, arg = model.partition(":")
                if kind == "error":
                    self.error(int(arg))
                elif kind == "replay":
                    self.start_sse()
                    text = (FIXTURES / f"{arg}.txt").read_bytes()
                    # Split across writes as a real server would: not on event boundaries.
                    for i in range(0, len(text), 97):
                        self.send_chunk(text[i : i + 97])
                    self.end_chunks()
                elif kind == "slow":
                    self.start_sse()
                    self.slow()
                elif kind == "stall":
                    self.start_sse()
                    upstream.release.wait(10)
                elif kind == "broken":
                    self.start_sse()
                    self.send_chunk(f"data: {json.dumps(_chunk('partial'))}\n\n".encode())
                    error = {"error": {"message": "model worker crashed", "type": "server_error"}}
                    self.send_chunk(f"data: {json.dumps(error)}\n\n".encode())
                    self.end_chunks()
                else:
                    self.error(404, f"The model `{model}` does not exist")

            def error(self, status: int, message: str = "") -> None:
                message = message or f"upstream says {status}"
                kind = {401: "invalid_request_error", 429: "rate_limit_exceeded"}.get(status, "")
                data = json.dumps({"error": {"message": message, "type": kind or "api_error"}})
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data.encode())

            def start_sse(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream; charset=utf-8")
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()

            def send_chunk(self, data: bytes) -> None:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            def end_chunks(self) -> None:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

            def slow(self) -> None:
                conn = self.connection
                for i in range(1000):  # 20 s at most
                    try:
                        self.send_chunk(f"data: {json.dumps(_chunk(f' t{i}'))}\n\n".encode())
                    except OSError:
                        break
                    readable, _, _ = select.select([conn], [], [], 0.02)
                    if readable and conn.recv(1, socket.MSG_PEEK) == b"":
                        break  # the client closed its end
                upstream.closed.set()
                self.close_connection = True

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)
