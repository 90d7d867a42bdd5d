"""Opik export through the real opik SDK against a local recording HTTP server on 127.0.0.1.

No Opik backend can run here (it needs Docker), so the server is a stand-in: it records every request and
answers as the Opik REST API does for the calls the SDK makes. The test checks the request sequence and
payloads: dataset created (or reused), items inserted, an experiment carrying the run spec, one trace per
sample with its scores as feedback scores, experiment items linking dataset items to traces."""

from __future__ import annotations

import gzip
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.core.record import RunResult
from tests.localhttp import send_json, serve, url_of


class Recorder:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, Any]] = []
        self.datasets: set[str] = set()
        self.lock = threading.Lock()


def _handler(recorder: Recorder) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self, method: str) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
            if self.headers.get("Content-Encoding") == "gzip":
                raw = gzip.decompress(raw)
            body = json.loads(raw) if raw else None
            path = self.path.split("?")[0]
            with recorder.lock:
                recorder.requests.append((method, path, body))
            status, payload = 200, {}
            if path.endswith("/datasets/retrieve"):
                name = body["dataset_name"]
                status, payload = (
                    (200, {"id": "0190aaaa-0000-7000-8000-000000000001", "name": name})
                    if name in recorder.datasets
                    else (404, {"errors": ["not found"]})
                )
            elif path.endswith("/private/datasets") and method == "POST":
                recorder.datasets.add(body["name"])
            elif path.endswith("/is-alive/ver"):
                payload = {"version": "1.9.0"}
            send_json(self, status, payload)

        def do_GET(self) -> None:
            self._answer("GET")

        def do_POST(self) -> None:
            self._answer("POST")

        def do_PUT(self) -> None:
            self._answer("PUT")

        def do_PATCH(self) -> None:
            self._answer("PATCH")

    return Handler


@pytest.fixture
def opik_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Recorder]:
    recorder = Recorder()
    httpd = serve(_handler(recorder))
    monkeypatch.setenv("OPIK_URL_OVERRIDE", url_of(httpd, "/api"))
    monkeypatch.setenv("OPIK_CONFIG_PATH", str(tmp_path / "absent.config"))
    monkeypatch.delenv("OPIK_SENTRY_ENABLE", raising=False)
    monkeypatch.delenv("OPIK_ANALYTICS_ENABLE", raising=False)
    yield recorder
    httpd.shutdown()
    httpd.server_close()


def _calls(recorder: Recorder, suffix: str, method: str | None = None) -> list[Any]:
    return [body for m, path, body in recorder.requests if path.endswith(suffix) and (method is None or m == method)]


def test_export_sends_dataset_experiment_traces_and_scores(
    opik_server: Recorder, real_runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    run = RunResult.read(real_runs["greedy"])
    result = CliRunner().invoke(app, ["export", "opik", str(real_runs["greedy"]), "--project", "evals"])
    assert result.exit_code == 0, result.output
    assert os.environ["OPIK_SENTRY_ENABLE"] == "false" and os.environ["OPIK_ANALYTICS_ENABLE"] == "false"

    paths = [path for _, path, _ in opik_server.requests]
    first = {
        suffix: next(i for i, p in enumerate(paths) if p.endswith(suffix))
        for suffix in (
            "/private/datasets",
            "/datasets/items",
            "/private/experiments",
            "/traces/batch",
            "/experiments/items",
        )
    }
    assert first["/private/datasets"] < first["/datasets/items"] < first["/experiments/items"]
    assert (
        first["/private/experiments"] < first["/experiments/items"]
        and first["/traces/batch"] < first["/experiments/items"]
    )

    assert {body["name"] for body in _calls(opik_server, "/private/datasets", "POST")} == {
        "harness-factual_qa",
        "harness-plain_english",
    }
    items = [item for body in _calls(opik_server, "/datasets/items") for item in body["items"]]
    assert len(items) == sum(task.n_samples for task in run.tasks.values())
    experiments = _calls(opik_server, "/private/experiments", "POST")
    assert {e["name"] for e in experiments} == {f"{run.run_id}-factual_qa", f"{run.run_id}-plain_english"}
    assert all(e["metadata"]["model"]["fingerprint"] == run.spec.model.fingerprint for e in experiments)
    traces = [trace for body in _calls(opik_server, "/traces/batch") for trace in body["traces"]]
    assert len(traces) == len(items)
    scores = [score for body in _calls(opik_server, "/traces/feedback-scores") for score in body["scores"]]
    assert {score["name"] for score in scores} >= {"exact_match", "f1", "bleu", "chrf", "rouge1"}
    linked = [item for body in _calls(opik_server, "/experiments/items") for item in body["experiment_items"]]
    assert {item["dataset_item_id"] for item in linked} == {item["id"] for item in items}
    assert {item["trace_id"] for item in linked} == {trace["id"] for trace in traces}


def test_a_second_export_reuses_the_datasets(opik_server: Recorder, real_runs: dict[str, Path]) -> None:
    for _ in range(2):
        assert CliRunner().invoke(app, ["export", "opik", str(real_runs["greedy"])]).exit_code == 0
    assert len(_calls(opik_server, "/private/datasets", "POST")) == 2  # created once per task, then reused
    assert len(_calls(opik_server, "/private/experiments", "POST")) == 4


def test_export_refuses_without_opik_configuration(
    real_runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("OPIK_URL_OVERRIDE", "OPIK_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPIK_CONFIG_PATH", str(tmp_path / "absent.config"))
    result = CliRunner().invoke(app, ["export", "opik", str(real_runs["greedy"])])
    assert result.exit_code == 2 and "Opik is not configured" in result.output
