"""Run-time prompt controls (--num-fewshot, --system-prompt, --gen-kwargs, --apply-chat-template) over a task's
own settings, and their part in the task's fingerprint (so the cache never mixes them up)."""

from __future__ import annotations

from harness.core.taskspec import TaskSpec

GENERATE = {
    "name": "qa",
    "kind": "generate",
    "data": "qa.jsonl",
    "template": "Q: {{ q }}\nA:",
    "reference_field": "a",
    "metrics": ["exact_match"],
}
PERPLEXITY = {"name": "text", "kind": "perplexity", "data": "text.jsonl", "metrics": ["perplexity"]}


def test_each_control_overrides_the_task_and_changes_its_fingerprint() -> None:
    spec = TaskSpec.model_validate(GENERATE)
    changed = spec.with_overrides(
        num_fewshot=2, system_prompt="Be brief.", gen_kwargs={"max_new_tokens": 5}, chat_template=True
    )
    assert (changed.num_fewshot, changed.system_prompt, changed.chat_template) == (2, "Be brief.", True)
    assert changed.generation.max_new_tokens == 5
    assert changed.fingerprint("data") != spec.fingerprint("data")
    assert spec.with_overrides() is spec
    assert changed.with_overrides(chat_template=False).chat_template is False


def test_a_perplexity_task_keeps_scoring_its_text_as_written() -> None:
    spec = TaskSpec.model_validate(PERPLEXITY)
    assert spec.with_overrides(chat_template=True, gen_kwargs={"max_new_tokens": 5}) is spec
