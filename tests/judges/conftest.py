"""Judge fixtures: the real local llama.cpp judge server, and a misbehaving stdlib HTTP server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from judges.local_server import LocalJudge, local_judge
from tests.localhttp import send_json, serve, url_of


@pytest.fixture(scope="session")
def judge_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalJudge]:
    """SmolLM2-135M-Instruct behind llama.cpp's OpenAI-compatible server, started once per session."""
    with local_judge(tmp_path_factory.mktemp("judge") / "server.log") as server:
        yield server


def completion(content: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fault",
        "object": "chat.completion",
        "created": 0,
        "model": "fault",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


class FaultServer:
    """Answers chat completions; the behaviour for a request is chosen by a CASE-<name> marker in its prompt.

    Behaviours per case are lists consumed one per attempt (the last one repeats): "ok", "429", "500", "hang",
    "reset", "badjson", "missing", and replies that are no chat completion: "nochoices" (a 200 with an empty
    `choices`), "errorbody" (a 200 holding only an error object), "html" (a text/html page), "truncated" (JSON cut
    short); "trickle" (a 200 whose body comes a byte every 0.2 s, for ever); "echokey" (a 401 echoing the key).
    `attempts` counts requests per case; `auth` keeps Authorization headers.
    """

    def __init__(self, plans: dict[str, list[str]], good_answer: str, hang_seconds: float) -> None:
        self.plans = plans
        self.good_answer = good_answer
        self.hang_seconds = hang_seconds
        self.attempts: Counter[str] = Counter()
        self.auth: list[str] = []
        self.lock = threading.Lock()

    def behaviour(self, body: str) -> tuple[str, str]:
        case = next((name for name in self.plans if f"CASE-{name}" in body), "default")
        with self.lock:
            attempt = self.attempts[case]
            self.attempts[case] += 1
        plan = self.plans.get(case, ["ok"])
        return case, plan[min(attempt, len(plan) - 1)]


def _handler(server: FaultServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(
            self, status: int, payload: bytes, headers: dict[str, str] | None = None, kind: str = "application/json"
        ) -> None:
            send_json(self, status, payload, headers, kind)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
            server.auth.append(self.headers.get("Authorization", ""))
            _, action = server.behaviour(body)
            if action == "429":
                self._send(429, b'{"error": {"message": "slow down"}}', {"Retry-After": "1"})
            elif action == "500":
                self._send(500, b'{"error": {"message": "boom"}}')
            elif action == "hang":
                time.sleep(server.hang_seconds)
                self._send(200, json.dumps(completion(server.good_answer)).encode())
            elif action == "reset":
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                self.connection.close()
            elif action == "badjson":
                self._send(200, json.dumps(completion("this is {not json")).encode())
            elif action == "missing":
                self._send(200, json.dumps(completion('{"relevance": {"reason": "ok"}}')).encode())
            elif action == "nochoices":
                self._send(200, json.dumps({**completion(""), "choices": []}).encode())
            elif action == "errorbody":
                self._send(200, b'{"error": {"message": "model overloaded", "type": "server_error"}}')
            elif action == "html":
                self._send(200, b"<html><body>502 Bad Gateway</body></html>", kind="text/html")
            elif action == "echokey":  # as some hosted APIs do: "Incorrect API key provided: sk-..."
                auth = self.headers.get("Authorization", "")
                self._send(401, json.dumps({"error": {"message": f"Incorrect API key provided: {auth}"}}).encode())
            elif action == "trickle":
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "1000000")
                self.end_headers()
                with contextlib.suppress(OSError):  # the client gives up and closes
                    for _ in range(300):
                        self.wfile.write(b" ")
                        self.wfile.flush()
                        time.sleep(0.2)
            elif action == "truncated":
                self._send(200, json.dumps(completion(server.good_answer)).encode()[:40])
            else:
                self._send(200, json.dumps(completion(server.good_answer)).encode())

    return Handler


@pytest.fixture
def fault_server() -> Iterator[Callable[..., tuple[str, FaultServer]]]:
    """Returns `start(plans, good_answer, hang_seconds)` -> (base_url, server state); stopped after the test."""
    started: list[http.server.ThreadingHTTPServer] = []

    def start(plans: dict[str, list[str]], good_answer: str, hang_seconds: float = 3.0) -> tuple[str, FaultServer]:
        state = FaultServer(plans, good_answer, hang_seconds)
        httpd = serve(_handler(state))
        started.append(httpd)
        return url_of(httpd, "/v1"), state

    yield start
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def judged_task(tmp_path: Path) -> Callable[[list[dict[str, Any]], list[Any]], Path]:
    """Returns `make(rows, judges)`: a generate task folder whose rows carry prompts and references."""

    def make(rows: list[dict[str, Any]], judges: list[Any]) -> Path:
        import yaml

        folder = tmp_path / "tasks"
        folder.mkdir(exist_ok=True)
        (folder / "judged.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        spec = {
            "kind": "generate",
            "data": "judged.jsonl",
            "id_field": "id",
            "template": "{{ question }}",
            "reference_field": "answer",
            "metrics": ["exact_match"],
            "judges": judges,
            "generation": {"max_new_tokens": 4, "stop": ["\n"]},
        }
        (folder / "judged.yaml").write_text(yaml.safe_dump(spec))
        return folder

    return make
