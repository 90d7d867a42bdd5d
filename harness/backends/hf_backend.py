"""The in-process transformers backend: a LoadedModel (the embedded Gemma, a local or hub checkpoint, its PEFT
adapters) behind the backend protocol. The active adapter is the LoadedModel's (`loaded.activate`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from harness.backends import hf_loglikelihood, hf_requests
from harness.backends.hf import LoadedModel
from harness.backends.protocol import Continuation, Generation, Prompt, Rolling
from harness.core.record import ModelRunSpec
from harness.core.taskspec import GenerationConfig, TaskSpec, Windows


def _training_manifest(adapter_dir: Path) -> dict[str, Any] | None:
    path = adapter_dir / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else None


class HFBackend:
    kinds = frozenset({"generate", "perplexity", "multiple_choice", "loglikelihood"})

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded

    @property
    def fingerprint(self) -> str:
        return self.loaded.fingerprint

    @property
    def label(self) -> str:
        active = self.loaded.active_adapter
        adapter = f" + {self.loaded.adapters[active].path.name}" if active else ""
        return self.loaded.options.name + adapter

    def describe(self) -> ModelRunSpec:
        loaded = self.loaded
        adapter = loaded.adapters.get(loaded.active_adapter) if loaded.active_adapter else None
        return ModelRunSpec(
            name=loaded.options.name,
            checkpoint=str(loaded.checkpoint),
            fingerprint=loaded.fingerprint,
            base_fingerprint=loaded.base_fingerprint,
            hub_revision=loaded.hub_revision,
            adapter_path=str(adapter.path) if adapter else None,
            adapter_fingerprint=adapter.fingerprint if adapter else None,
            training=_training_manifest(adapter.path) if adapter else None,
            dtype=str(loaded.options.resolved_dtype()).removeprefix("torch."),
            device=loaded.device.type,
            quant=loaded.options.quant,
        )

    def unsupported(self, spec: TaskSpec) -> str | None:
        return None

    def model_input(self, prompt: Prompt) -> str:
        if not prompt.chat:
            return prompt.text
        tokenizer = self.loaded.tokenizer
        return str(tokenizer.apply_chat_template(prompt.messages(), tokenize=False, add_generation_prompt=True))

    def batch_size(self, requested: int) -> int:
        return requested

    def generate(self, prompts: Sequence[Prompt], config: GenerationConfig) -> list[Generation]:
        chat = any(prompt.chat for prompt in prompts)
        texts = [self.model_input(prompt) for prompt in prompts]
        return list(hf_requests.generate(self.loaded, texts, config, chat=chat))

    def loglikelihood(self, pairs: Sequence[tuple[str, str]], batch_size: int) -> list[Continuation]:
        return list(hf_loglikelihood.loglikelihood(self.loaded, pairs, batch_size))

    def loglikelihood_rolling(
        self, texts: Sequence[str], max_length: int, stride: int, batch_size: int, windows: Windows = "strided"
    ) -> Callable[[], list[Rolling]]:
        pending = hf_requests.queue_rolling(self.loaded, texts, max_length, stride, batch_size, windows)
        return lambda: list(pending())
