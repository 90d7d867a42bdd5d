"""The model backend protocol: everything the runner asks of a model under test, whatever serves it.

Three requests, as lm-evaluation-harness names them: `generate` (text continuations), `loglikelihood` (a
continuation's log-probability given a context: multiple-choice and loglikelihood tasks) and
`loglikelihood_rolling` (a whole text's log-likelihood: perplexity tasks). A backend declares the task kinds it
serves, and the runner checks every task against it before any work starts (`check_tasks`).

A request a backend cannot answer for one sample (a server error, a reply without log-probabilities) comes back as
a `RequestError` with its reason in that sample's place: the run completes, the sample is recorded with the error
and left out of the metrics, and it is asked again on the next run (errors are never cached).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from harness.core.errors import HarnessError
from harness.core.record import ModelRunSpec
from harness.core.registry import SampleStats
from harness.core.taskspec import GenerationConfig, TaskSpec, Windows

T = TypeVar("T")


@dataclass(frozen=True)
class Prompt:
    """A sample's prompt: the rendered user text, its system prompt, and whether it goes through a chat template."""

    text: str
    system: str | None = None
    chat: bool = False

    def messages(self) -> list[dict[str, str]]:
        """The chat messages: the system turn (if any), then the one user turn."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, {"role": "user", "content": self.text}]


@dataclass(frozen=True)
class RequestError:
    """Why one sample's request failed: recorded with the sample, which the metrics leave out."""

    reason: str


@dataclass(frozen=True)
class ContinuationScore:
    """A continuation's summed log-probability given its context, its token count, and whether greedy decoding
    from the context would produce exactly its tokens."""

    logprob: float
    tokens: int
    greedy: bool


Generation = str | RequestError
Continuation = ContinuationScore | RequestError
Rolling = SampleStats | RequestError


class Backend(Protocol):
    """A model under test. `fingerprint` is what its outputs depend on (weights, adapter, served model, numeric
    settings): it keys the per-sample cache."""

    kinds: frozenset[str]  # the task kinds it serves

    @property
    def fingerprint(self) -> str: ...

    @property
    def label(self) -> str:
        """The model's name as tables show it (with the active adapter, if any)."""
        ...

    def describe(self) -> ModelRunSpec:
        """The model's part of the run record."""
        ...

    def unsupported(self, spec: TaskSpec) -> str | None:
        """Why this backend cannot run the task (beyond its kind), or None."""
        ...

    def model_input(self, prompt: Prompt) -> str:
        """The prompt exactly as the model is given it (a chat template applied): recorded and cached on."""
        ...

    def batch_size(self, requested: int) -> int:
        """Samples per batch: the batch size asked for, or what keeps a remote server's requests in flight."""
        ...

    def generate(self, prompts: Sequence[Prompt], config: GenerationConfig) -> list[Generation]: ...

    def loglikelihood(self, pairs: Sequence[tuple[str, str]], batch_size: int) -> list[Continuation]:
        """Each (context, continuation)'s score; contexts are model inputs (`model_input`)."""
        ...

    def loglikelihood_rolling(
        self, texts: Sequence[str], max_length: int, stride: int, batch_size: int, windows: Windows = "strided"
    ) -> Callable[[], list[Rolling]]:
        """Queue the texts' log-likelihoods and return a function that waits for them (a GPU backend keeps
        working while the caller prepares the next batch). `windows`: see PerplexityConfig."""
        ...


def check_tasks(backend: Backend, specs: Sequence[TaskSpec]) -> None:
    """Every task must be one the backend serves: checked before any model work, one clear error naming the task."""
    for spec in specs:
        reason = (
            f"serves {', '.join(sorted(backend.kinds))} tasks, not {spec.kind}"
            if spec.kind not in backend.kinds
            else backend.unsupported(spec)
        )
        if reason:
            raise HarnessError(f"task '{spec.name}': the model {backend.label} {reason}", field="--model")


def ready(results: list[T]) -> Callable[[], list[T]]:
    """Results already computed, as loglikelihood_rolling hands them back."""
    return lambda: results
