"""Misbehaving local servers for fault tests: a stdlib HTTP server on 127.0.0.1 in a daemon thread, and a JSON
reply helper for its handlers."""

from __future__ import annotations

import http.server
import json
import threading
from typing import Any


def serve(handler: type[http.server.BaseHTTPRequestHandler]) -> http.server.ThreadingHTTPServer:
    """A threading HTTP server on a free port of 127.0.0.1, serving in a daemon thread (stop it with shutdown)."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def url_of(httpd: http.server.ThreadingHTTPServer, path: str = "") -> str:
    return f"http://127.0.0.1:{httpd.server_address[1]}{path}"


def send_json(
    handler: http.server.BaseHTTPRequestHandler,
    status: int,
    payload: Any,
    headers: dict[str, str] | None = None,
    kind: str = "application/json",
) -> None:
    """One reply: `payload` as JSON (or bytes as they are), with its length and any extra headers."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", kind)
    handler.send_header("Content-Length", str(len(data)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(data)
