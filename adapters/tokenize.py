"""Gemma turn rendering and response-only loss masks.

    <bos><start_of_turn>user\n{prompt}<end_of_turn>\n<start_of_turn>model\n{response}<end_of_turn>\n

The text is rendered as pieces marked supervised or not; each cumulative prefix is tokenized, so a piece's
tokens are exactly the ones its text adds. Exactly one <bos>. The prompt side renders as the inference chat
template does (`harness.backends.embedded.GEMMA_CHAT_TEMPLATE`), so training and evaluation see the same prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from adapters.formats import Example, Turn
from harness.core.errors import HarnessError

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where the token carries no loss
    line: int

    @property
    def supervised(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def render_pieces(turns: tuple[Turn, ...], bos: str, eos: str) -> list[tuple[str, bool]]:
    """(text, supervised) pieces of one example. Plain text is all supervised and ends with <eos>."""
    if turns[0].role == "text":
        return [(bos, False), (turns[0].content + eos, True)]
    pieces = [(bos, False)]
    for turn in turns:
        if turn.role == "user":
            pieces.append((f"<start_of_turn>user\n{turn.content.strip()}<end_of_turn>\n<start_of_turn>model\n", False))
        else:
            pieces.append((f"{turn.content.strip()}<end_of_turn>\n", True))
    return pieces


def tokenize_example(
    example: Example, tokenizer: Any, max_seq_len: int, train_on_prompt: bool = False
) -> TokenizedExample:
    """Token ids and labels of one example, truncated to `max_seq_len`; at least one supervised token."""
    pieces = render_pieces(example.turns, tokenizer.bos_token, tokenizer.eos_token)
    input_ids: list[int] = []
    labels: list[int] = []
    text = ""
    for piece, supervised in pieces:
        text += piece
        ids = tokenizer(text, add_special_tokens=False).input_ids
        if ids[: len(input_ids)] != input_ids:
            raise HarnessError("tokenization of a turn boundary is not stable", line=example.line, field="turns")
        added = ids[len(input_ids) :]
        input_ids.extend(added)
        labels.extend(added if supervised or train_on_prompt else [IGNORE_INDEX] * len(added))
    labels[0] = IGNORE_INDEX  # <bos> is never predicted
    tokenized = TokenizedExample(input_ids[:max_seq_len], labels[:max_seq_len], example.line)
    if tokenized.supervised == 0:
        raise HarnessError(
            f"no response token left within max_seq_len={max_seq_len} (the prompt alone is {len(input_ids)} tokens"
            " or longer)",
            line=example.line,
            field="max_seq_len",
            hint="raise max_seq_len or shorten the prompt",
        )
    return tokenized
