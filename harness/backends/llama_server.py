"""llama.cpp's OpenAI-compatible server (llama-cpp-python's `llama_cpp.server`) on 127.0.0.1, on a free port, for
a GGUF file: the local judge runs in one, and tests serve the embedded Gemma through one to the `openai` backend.
Needs llama-cpp-python's server extra.

The server never outlives the process that started it: leaving the block stops it by its process group, SIGTERM
is turned into an exit that leaves the block, and on Linux the kernel sends the server SIGTERM when its parent dies
(kill -9 included: a parent-death signal set in the child before it runs the server)."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.core.errors import HarnessError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LlamaServer:
    base_url: str
    model: str  # the alias it serves the GGUF under
    pid: int


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def answers(url: str) -> bool:
    """Whether an OpenAI-compatible server answers at `url` (its model list)."""
    try:
        with urllib.request.urlopen(f"{url}/models", timeout=1):
            return True
    except OSError:
        return False


def _wait_ready(url: str, process: subprocess.Popen[bytes], log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise HarnessError(f"the llama.cpp server {_ended(process.returncode)}", path=log_path)
        if answers(url):
            return
        time.sleep(0.2)
    raise HarnessError(f"the llama.cpp server did not answer within {timeout:.0f} s", path=log_path)


PR_SET_PDEATHSIG = 1  # prctl(2)


def _die_with_parent(parent_pid: int) -> None:
    """Runs in the child between fork and exec: ask the kernel for SIGTERM when the parent dies (Linux only; the
    setting survives exec). A parent that died before this call is caught by the check after it."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    if os.getppid() != parent_pid:
        os._exit(1)


@contextlib.contextmanager
def _sigterm_leaves_the_block() -> Iterator[None]:
    """SIGTERM raises SystemExit (143) in the main thread while the server runs, so that `finally` stops it as it
    would on Ctrl-C; the previous handler comes back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def leave(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _ended(returncode: int) -> str:
    if returncode < 0:
        return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with code {returncode}"


@contextlib.contextmanager
def serve_gguf(
    model_path: Path,
    alias: str,
    log_path: Path,
    n_ctx: int = 4096,
    extra_args: Sequence[str] = (),
    timeout: float = 120.0,
) -> Iterator[LlamaServer]:
    """Serve `model_path` as `alias` for the duration of the block; it is stopped by PID (and its group). A server
    that died while the block ran is an error when the block ends: every request after its death failed, and the
    log says why it died."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model_path),
        "--model_alias",
        alias,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        *extra_args,
    ]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as server_log:
        process = subprocess.Popen(
            command,
            stdout=server_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=functools.partial(_die_with_parent, os.getpid()),
        )
    url = f"http://127.0.0.1:{port}/v1"
    log.debug("llama.cpp server pid %d at %s (log %s): %s", process.pid, url, log_path, " ".join(command))
    with _sigterm_leaves_the_block():
        yield from _serve(process, url, alias, log_path, timeout)


def _serve(
    process: subprocess.Popen[bytes], url: str, alias: str, log_path: Path, timeout: float
) -> Iterator[LlamaServer]:
    """Wait for the server, hand it out, then stop it by its process group; its death while in use is an error."""
    died: int | None = None
    try:
        _wait_ready(url, process, log_path, timeout)
        yield LlamaServer(base_url=url, model=alias, pid=process.pid)
        died = process.poll()
        if died is None and not answers(url):  # a dying server's sockets close before its exit can be reaped
            with contextlib.suppress(subprocess.TimeoutExpired):
                died = process.wait(timeout=5)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    if died is not None:
        raise HarnessError(
            f"the llama.cpp server {_ended(died)} while in use: judgments after that are recorded as errors",
            path=log_path,
        )
