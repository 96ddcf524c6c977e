"""A real HTTP receiver on 127.0.0.1 standing in for chat services (Apprise's json:// and form://)
and webhook endpoints: records every request as it arrives, and can answer slowly or with errors."""

from __future__ import annotations

import json
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(self.body.decode()))


@dataclass
class Script:
    replies: list[int] = field(default_factory=list)  # the status of the next answers (then 200)
    delay_s: float = 0.0  # hold every answer this long (a slow service)
    location: str | None = None  # with a 3xx reply: where to


class Receiver:
    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.script = Script()
        self.lock = threading.Lock()
        self.released = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with receiver.lock:
                    receiver.requests.append(Request(self.command, self.path, dict(self.headers.items()), body))
                    status = receiver.script.replies.pop(0) if receiver.script.replies else 200
                    delay, location = receiver.script.delay_s, receiver.script.location
                if delay:
                    receiver.released.wait(delay)
                try:
                    answer = b"ok" if status < 400 else b"no"
                    self.send_response(status)
                    if 300 <= status < 400 and location:
                        self.send_header("Location", location)
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                except OSError:  # the sender went away (killed, or timed out)
                    pass

            do_POST = do_PUT = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, scheme: str, path: str) -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def start(self) -> Receiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()

    def to(self, path: str) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if urllib.parse.urlsplit(r.path).path == path]
