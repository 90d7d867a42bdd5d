"""Standard benchmarks that YAML alone cannot say: HellaSwag's row cleaning and MMLU's 57 subject tasks with
their category groups, as lm-evaluation-harness 0.4.13 defines them (facts from its task files; the code is ours).
"""

from __future__ import annotations

import functools
import re
from typing import Any

from harness.core.registry import preprocessor, register_group, task
from harness.core.taskspec import DatasetSource, GroupSpec, MetricConfig, TaskSpec


def _clean_hellaswag(text: str) -> str:
    """WikiHow's bracketed artefacts out: ' [title]' becomes '. ', any other [...] goes, double spaces once."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


@preprocessor("hellaswag")
def hellaswag(row: dict[str, Any]) -> dict[str, Any]:
    """`query`: the activity label and both context halves (the second capitalised), cleaned; `choices`: the
    cleaned endings."""
    context = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    return {
        **row,
        "query": _clean_hellaswag(row["activity_label"] + ": " + context),
        "choices": [_clean_hellaswag(ending) for ending in row["endings"]],
    }


MMLU_CATEGORIES = {
    "stem": "abstract_algebra anatomy astronomy college_biology college_chemistry college_computer_science "
    "college_mathematics college_physics computer_security conceptual_physics electrical_engineering "
    "elementary_mathematics high_school_biology high_school_chemistry high_school_computer_science "
    "high_school_mathematics high_school_physics high_school_statistics machine_learning",
    "other": "business_ethics clinical_knowledge college_medicine global_facts human_aging management marketing "
    "medical_genetics miscellaneous nutrition professional_accounting professional_medicine virology",
    "social_sciences": "econometrics high_school_geography high_school_government_and_politics "
    "high_school_macroeconomics high_school_microeconomics high_school_psychology human_sexuality "
    "professional_psychology public_relations security_studies sociology us_foreign_policy",
    "humanities": "formal_logic high_school_european_history high_school_us_history high_school_world_history "
    "international_law jurisprudence logical_fallacies moral_disputes moral_scenarios philosophy prehistory "
    "professional_law world_religions",
}
MMLU_TEMPLATE = (
    "{{ question.strip() }}\nA. {{ choices[0] }}\nB. {{ choices[1] }}\nC. {{ choices[2] }}\nD. {{ choices[3] }}\n"
    "Answer:"
)


def mmlu_subject(subject: str) -> TaskSpec:
    """One MMLU subject: lettered choices, few-shot examples the first n of its dev split (0 unless
    --num-fewshot), acc."""
    words = subject.replace("_", " ")
    return TaskSpec(
        name=f"mmlu_{subject}",
        description=f"MMLU: {words}",
        kind="multiple_choice",
        dataset=DatasetSource(path="cais/mmlu", name=subject, split="test"),
        fewshot_split="dev",
        fewshot_sampler="first_n",
        instruction=f"The following are multiple choice questions (with answers) about {words}.\n\n",
        template=MMLU_TEMPLATE,
        choices="{{ ['A', 'B', 'C', 'D'] }}",
        target="answer",
        metrics=[MetricConfig(name="acc")],
    )


for _category, _subjects in MMLU_CATEGORIES.items():
    for _subject in _subjects.split():
        task(f"mmlu_{_subject}")(functools.partial(mmlu_subject, _subject))
    register_group(
        GroupSpec(
            group=f"mmlu_{_category}",
            description=f"MMLU {_category.replace('_', ' ')} subjects, pooled",
            tasks=[f"mmlu_{s}" for s in _subjects.split()],
        )
    )
register_group(
    GroupSpec(
        group="mmlu",
        description="MMLU: 57 subjects, accuracy over all questions (as lm-evaluation-harness weights by size)",
        tasks=[f"mmlu_{category}" for category in MMLU_CATEGORIES],
    )
)
