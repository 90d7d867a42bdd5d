"""lm-evaluation-harness task YAML, read as it is: a task file written for lm-eval (`task:`, `dataset_path`,
`doc_to_text` ...) becomes a TaskSpec with the same prompts, few-shot draws and metrics; a group file (`group:` with
`task:` members) a GroupSpec. What has no equivalent here (a `!function` hook, a filter other than regex and
take_first, an unknown key) is one error naming the key, never silently dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from harness.core.errors import HarnessError
from harness.core.taskspec import GroupSpec, TaskSpec
from harness.core.yamlfile import validate

KINDS = {
    "multiple_choice": "multiple_choice",
    "generate_until": "generate",
    "loglikelihood": "loglikelihood",
    "loglikelihood_rolling": "perplexity",
}
METRICS = {  # lm-eval's metric name -> ours, per kind (all of lm-eval's rolling metrics come from one here)
    "multiple_choice": {"acc": "acc", "acc_norm": "acc_norm", "acc_mutual_info": "acc_mutual_info"},
    "generate": {"exact_match": "exact_match", "bleu": "bleu", "chrf": "chrf", "f1": "f1", "rouge": "rouge"},
    "loglikelihood": {"acc": "acc", "perplexity": "perplexity"},
    "perplexity": {"word_perplexity": "perplexity", "byte_perplexity": "perplexity", "bits_per_byte": "perplexity"},
}
METRIC_OPTIONS = {"ignore_case", "ignore_punctuation", "regexes_to_ignore"}
IGNORED = {"tag", "metadata", "should_decontaminate", "doc_to_decontamination_query", "task_alias", "group_alias"}
IGNORED |= {"training_split", "validation_split", "test_split", "fewshot_split", "dataset_path", "dataset_name"}
IGNORED |= {"dataset_kwargs", "output_type", "doc_to_text", "doc_to_target", "doc_to_choice", "metric_list", "task"}
IGNORED |= {"generation_kwargs", "filter_list", "num_fewshot", "fewshot_config", "description", "repeats"}
IGNORED |= {"target_delimiter", "fewshot_delimiter", "include", "dataset_name", "group", "unsafe_code"}


class _FunctionRef(str):
    """A `!function module.name` value: a Python hook lm-eval would import."""


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_constructor("!function", lambda loader, node: _FunctionRef(loader.construct_scalar(node)))  # type: ignore[arg-type]


def is_lm_eval_file(path: Path) -> bool:
    """Whether a YAML file is written for lm-evaluation-harness (its `task:` key) rather than for us."""
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except (OSError, yaml.YAMLError):
        return False  # our reader reports it
    keys = ("group", "output_type", "dataset_path", "include", "doc_to_text")
    return isinstance(raw, dict) and "task" in raw and any(key in raw for key in keys)


def read_lm_eval(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The file's mapping with `include:` resolved (the included file first, this file's keys over it)."""
    if path in seen:
        raise HarnessError("include loops back to this file", path=path, field="include")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader) or {}
    except (OSError, yaml.YAMLError) as error:
        raise HarnessError(f"cannot read lm-eval task file: {error}", path=path) from None
    if not isinstance(raw, dict):
        raise HarnessError("an lm-eval task file must be a mapping", path=path, line=1)
    include = raw.pop("include", None)
    if include is None:
        return raw
    return {**read_lm_eval((path.parent / include).resolve(), (*seen, path)), **raw}


def _refuse(path: Path, key: str, why: str) -> HarnessError:
    return HarnessError(why, path=path, field=key)


def _template(value: Any, path: Path, key: str) -> str | None:
    """doc_to_* as ours: a template stays, a field name stays (we read both), a list or number becomes a template."""
    if value is None:
        return None
    if isinstance(value, _FunctionRef):
        raise _refuse(path, key, f"!function hooks ({value}) are not supported: write it as a Jinja template")
    if isinstance(value, str):
        return value
    return "{{ " + repr(value) + " }}"


DEFAULT_METRICS = {  # lm-eval's metrics when metric_list is absent
    "multiple_choice": ["acc", "acc_norm"],
    "generate": ["exact_match"],
    "loglikelihood": ["perplexity", "acc"],
    "perplexity": ["word_perplexity"],
}


def _metrics(raw: dict[str, Any], kind: str, path: Path) -> list[dict[str, Any]]:
    listed = raw.get("metric_list") or [{"metric": name} for name in DEFAULT_METRICS[kind]]
    metrics: list[dict[str, Any]] = []
    for index, entry in enumerate(listed):
        name = entry.get("metric")
        if isinstance(name, _FunctionRef) or name not in METRICS.get(kind, {}):
            known = ", ".join(METRICS.get(kind, {}))
            raise _refuse(
                path, f"metric_list.{index}.metric", f"metric '{name}' has no equivalent here (known: {known})"
            )
        ours = METRICS[kind][name]
        if any(m["name"] == ours for m in metrics):
            continue  # lm-eval's three rolling metrics are one here
        options = {key: entry[key] for key in METRIC_OPTIONS if key in entry}
        if ours == "exact_match":  # lm-eval compares as is unless told otherwise
            options = {"ignore_case": False, "ignore_punctuation": False, "ignore_articles": False, **options}
        metrics.append({"name": ours, "options": options} if options else {"name": ours})
    return metrics


def _filters(raw: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    filters = []
    for index, pipeline in enumerate(raw.get("filter_list") or []):
        steps = [step for step in pipeline.get("filter", []) if step.get("function") != "take_first"]
        if not steps:
            continue
        if len(steps) > 1 or steps[0].get("function") != "regex":
            functions = ", ".join(str(step.get("function")) for step in steps)
            raise _refuse(path, f"filter_list.{index}", f"filters other than regex and take_first ({functions})")
        regex = steps[0]
        filters.append(
            {
                "name": pipeline.get("name", f"filter{index}"),
                "regex": regex.get("regex_pattern", r"#### (\-?[0-9\.\,]+)"),
                "group_select": regex.get("group_select", 0),
                "fallback": regex.get("fallback", "[invalid]"),
            }
        )
    return filters


def _generation(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    kwargs = dict(raw.get("generation_kwargs") or {})
    generation: dict[str, Any] = {"stop": kwargs.pop("until", [raw.get("fewshot_delimiter", "\n\n")])}
    if isinstance(generation["stop"], str):
        generation["stop"] = [generation["stop"]]
    generation["max_new_tokens"] = kwargs.pop("max_gen_toks", 256)
    do_sample = kwargs.pop("do_sample", False)
    temperature = kwargs.pop("temperature", 0.0)
    generation["temperature"] = float(temperature) if do_sample else 0.0
    for key in ("top_p", "top_k"):
        if key in kwargs:
            generation[key] = kwargs.pop(key)
    if kwargs:
        raise _refuse(path, f"generation_kwargs.{next(iter(kwargs))}", "not a generation setting this harness has")
    return generation


def lm_eval_task(path: Path) -> TaskSpec | GroupSpec:
    """The TaskSpec (or GroupSpec) an lm-evaluation-harness YAML file stands for."""
    raw = read_lm_eval(path)
    if "group" in raw and isinstance(raw.get("task"), list):
        weights = [m.get("weight_by_size", True) for m in raw.get("aggregate_metric_list") or [{}]]
        members = [m if isinstance(m, str) else m.get("task") for m in raw["task"]]
        group = {"group": raw["group"], "tasks": members, "aggregate": "micro" if all(weights) else "macro"}
        return validate(GroupSpec, group, path, None).model_copy(update={"source": path})
    for key, value in raw.items():
        if isinstance(value, _FunctionRef):
            raise _refuse(path, key, f"!function hooks ({value}) are not supported: write it as a Jinja template")
        if key not in IGNORED:
            raise _refuse(path, key, "an lm-eval task key this harness does not read")
    if raw.get("repeats", 1) != 1:
        raise _refuse(path, "repeats", "repeats other than 1 are not supported")
    kind = KINDS.get(raw.get("output_type", "generate_until"))
    if kind is None:
        raise _refuse(path, "output_type", f"unknown output_type '{raw.get('output_type')}'")
    dataset_kwargs = dict(raw.get("dataset_kwargs") or {})
    dataset_kwargs.pop("trust_remote_code", None)
    unknown = sorted(set(dataset_kwargs) - {"data_files", "revision"})
    if unknown:
        raise _refuse(path, f"dataset_kwargs.{unknown[0]}", "only data_files and revision are read")
    data_files = dataset_kwargs.get("data_files")
    if isinstance(data_files, dict):  # relative to the task file, as a user keeps them beside it
        data_files = {
            k: str(path.parent / v) if not Path(v).is_absolute() and (path.parent / v).exists() else v
            for k, v in data_files.items()
        }
    eval_split = raw.get("test_split") or raw.get("validation_split")
    if not eval_split:
        raise _refuse(path, "test_split", "an lm-eval task needs test_split or validation_split")
    fewshot_split = raw.get("fewshot_split") or raw.get("training_split") or raw.get("validation_split") or eval_split
    sampler = (raw.get("fewshot_config") or {}).get("sampler", "default")
    spec: dict[str, Any] = {
        "name": raw["task"],
        "kind": kind,
        "dataset": {
            "path": raw["dataset_path"],
            "name": raw.get("dataset_name"),
            "split": eval_split,
            "revision": dataset_kwargs.get("revision"),
            "data_files": data_files,
        },
        "instruction": raw.get("description", ""),
        "template": _template(raw.get("doc_to_text"), path, "doc_to_text") or "",
        "num_fewshot": raw.get("num_fewshot") or 0,
        "fewshot_split": fewshot_split,
        "fewshot_sampler": "first_n" if sampler == "first_n" else "random",
        # lm-eval drops the row itself (drawing n+1) when its few-shot split setting equals its test split setting
        "fewshot_exclude_self": raw.get("fewshot_split") == raw.get("test_split"),
        "target_delimiter": raw.get("target_delimiter", " "),
        "fewshot_separator": raw.get("fewshot_delimiter", "\n\n"),
        "metrics": _metrics(raw, kind, path),
    }
    target = _template(raw.get("doc_to_target"), path, "doc_to_target")
    if kind == "generate":
        spec |= {"reference_field": target, "generation": _generation(raw, path), "filters": _filters(raw, path)}
    elif kind == "multiple_choice":
        spec |= {"choices": _template(raw.get("doc_to_choice"), path, "doc_to_choice"), "target": target}
    elif kind == "loglikelihood":
        spec["target"] = target
    else:  # loglikelihood_rolling scores the target text
        spec["template"] = target or "{{ text }}"
    return validate(TaskSpec, spec, path, None).model_copy(update={"source": path})
