"""From a `--model` value to its backend: `openai:MODEL` (an endpoint at --base-url), `gguf:PATH` or
`gemma-3-270m-gguf` (llama.cpp in process), anything else transformers in process (the embedded `gemma-3-270m`,
a local checkpoint folder, or a hub ID `org/name[@revision]`)."""

from __future__ import annotations

from dataclasses import dataclass

from harness.backends.api_client import Endpoint
from harness.backends.gguf import DEFAULT_CONTEXT, GGUFBackend, is_gguf_name
from harness.backends.hf import ModelOptions, load_model
from harness.backends.hf_backend import HFBackend
from harness.backends.openai_backend import OPENAI_PREFIX, OpenAIBackend, openai_model_name
from harness.backends.protocol import Backend
from harness.core.errors import HarnessError


@dataclass(frozen=True)
class ServedOptions:
    """How to reach a served model (`openai:`) and how big a llama.cpp context to make (`gguf:`)."""

    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    timeout: float = 120.0
    n_ctx: int = DEFAULT_CONTEXT


def backend_kind(name: str) -> str:
    if name.startswith(OPENAI_PREFIX):
        return "openai"
    return "gguf" if is_gguf_name(name) else "hf"


def open_backend(options: ModelOptions, served: ServedOptions, adapters: bool = False) -> Backend:
    """The backend for `options.name`; only the transformers backend takes PEFT adapters."""
    kind = backend_kind(options.name)
    if adapters and kind != "hf":
        raise HarnessError(
            f"--adapter needs a transformers model, not the {kind} backend",
            field="--adapter",
            hint="evaluate the base checkpoint with its adapters, or merge the adapter (harness merge) and serve that",
        )
    if kind == "openai":
        if not served.base_url:
            raise HarnessError("an openai: model needs --base-url, e.g. http://127.0.0.1:8000/v1", field="--base-url")
        endpoint = Endpoint(
            model=openai_model_name(options.name),
            base_url=served.base_url,
            api_key_env=served.api_key_env,
            concurrency=served.concurrency,
            timeout=served.timeout,
        )
        return OpenAIBackend(endpoint)
    if kind == "gguf":
        return GGUFBackend(options.name, n_ctx=served.n_ctx)
    return HFBackend(load_model(options))
