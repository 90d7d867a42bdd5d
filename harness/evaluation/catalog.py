"""The task catalog: YAML task files found on a search path (the built-in `tasks/` folder, folders added with
`add_search_path` or `--tasks-dir`) and the `@task` functions of the registry, each validated against the
registered metrics.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.core.errors import HarnessError
from harness.core.lmeval_yaml import is_lm_eval_file, lm_eval_task
from harness.core.registry import registered_groups, registered_tasks
from harness.core.taskspec import GroupSpec, TaskSpec
from harness.core.yamlfile import read_mapping, validate, yaml_line
from harness.metrics import get_metric

_SEARCH_PATHS: list[Path] = []


def builtin_task_dir() -> Path:
    """The folder of the built-in task files: `tasks/`, installed beside the `harness` package. Found by path, not
    by importing `tasks`: under `python -m harness` (and torchrun) a `tasks/` folder in the working directory
    would shadow that package."""
    return Path(__file__).resolve().parents[2] / "tasks"


def add_search_path(folder: Path) -> None:
    """Add a user folder of task YAML (and @task Python) files to every later task lookup."""
    if folder not in _SEARCH_PATHS:
        _SEARCH_PATHS.append(folder)


def load_task_file(path: Path) -> TaskSpec:
    """Parse and validate one task YAML; errors name the file, line and field."""
    raw, root = read_mapping(path, "a task file")
    spec = validate(TaskSpec, {"name": path.stem, **raw}, path, root)
    relative = {key: getattr(spec, key) for key in ("data", "fewshot_data") if getattr(spec, key) is not None}
    resolved = {key: value if value.is_absolute() else path.parent / value for key, value in relative.items()}
    spec = spec.model_copy(update={**resolved, "source": path})
    for index, metric_config in enumerate(spec.metrics):
        line = yaml_line(root, ("metrics", index))
        metric_def = get_metric(metric_config.name, spec.kind, path=path, field_name=f"metrics.{index}", line=line)
        unknown = sorted(set(metric_config.options) - set(metric_def.option_names()))
        if unknown:
            raise HarnessError(
                f"unknown option(s) {', '.join(unknown)} for metric '{metric_def.name}'",
                path=path,
                line=yaml_line(root, ("metrics", index, "options")),
                field=f"metrics.{index}.options",
                hint=f"it takes: {', '.join(metric_def.option_names()) or 'no options'}",
            )
    return spec


@functools.cache
def _import_task_module(module_path: Path) -> None:
    """Run a task folder's Python module once per process (its @metric and @task register on import)."""
    spec = importlib.util.spec_from_file_location(f"harness_user_tasks.{module_path.stem}", module_path)
    if spec is None or spec.loader is None:
        raise HarnessError("cannot import task module", path=module_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


@dataclass(frozen=True)
class Catalog:
    tasks: dict[str, TaskSpec]
    groups: dict[str, GroupSpec]


def find_catalog(extra_dirs: Iterable[Path] = ()) -> Catalog:
    """Every task and group: YAML files in `tasks/` (and its subfolders), the search path and `extra_dirs`, plus
    the `@task` functions and groups registered from Python. Later folders win."""
    tasks: dict[str, TaskSpec] = {}
    groups: dict[str, GroupSpec] = {}
    for task_dir in [builtin_task_dir(), *_SEARCH_PATHS, *extra_dirs]:
        if not task_dir.is_dir():
            raise HarnessError("task folder does not exist", path=task_dir, field="--tasks-dir")
        for module_path in sorted(task_dir.rglob("*.py")):
            if module_path.name != "__init__.py":
                _import_task_module(module_path.resolve())
        for yaml_path in sorted([*task_dir.rglob("*.yaml"), *task_dir.rglob("*.yml")]):
            found = load_any_task_file(yaml_path)
            if isinstance(found, GroupSpec):
                groups[found.group] = found
            else:
                tasks[found.name] = found
    for name, build in registered_tasks().items():
        tasks[name] = build()
    return Catalog(tasks, {**registered_groups(), **groups})


def find_tasks(extra_dirs: Iterable[Path] = ()) -> dict[str, TaskSpec]:
    """Every task by name (see find_catalog)."""
    return find_catalog(extra_dirs).tasks


def load_any_task_file(path: Path) -> TaskSpec | GroupSpec:
    """A task or group file: ours, or one written for lm-evaluation-harness."""
    if is_lm_eval_file(path):
        return lm_eval_task(path)
    raw, root = read_mapping(path, "a task file")
    if "group" in raw:
        return validate(GroupSpec, raw, path, root).model_copy(update={"source": path})
    return load_task_file(path)


def _expand(name: str, catalog: Catalog, groups: dict[str, GroupSpec], chain: tuple[str, ...] = ()) -> list[str]:
    """The tasks a name stands for (a group: its members', depth first), collecting the groups met."""
    if name in chain:
        raise HarnessError(f"group '{name}' contains itself ({' -> '.join((*chain, name))})", field="--tasks")
    if name in catalog.tasks:
        return [name]
    if name not in catalog.groups:
        raise HarnessError(
            f"unknown task or group '{name}'",
            field="--tasks",
            hint=f"known tasks: {len(catalog.tasks)}, groups: {len(catalog.groups)}; `harness tasks` lists them; "
            "add your own task folder with --tasks-dir",
        )
    groups[name] = catalog.groups[name]
    return [task for member in catalog.groups[name].tasks for task in _expand(member, catalog, groups, (*chain, name))]


def resolve_tasks(names: Sequence[str], extra_dirs: Iterable[Path] = ()) -> tuple[list[TaskSpec], list[GroupSpec]]:
    """The tasks the names stand for (groups expanded, each task once, in order) and the groups among them."""
    catalog = find_catalog(extra_dirs)
    for name in names:  # a task file named by its path: `--tasks path/to/task.yaml`
        if name.endswith((".yaml", ".yml")) and Path(name).is_file():
            found = load_any_task_file(Path(name).resolve())
            if isinstance(found, GroupSpec):
                catalog.groups[name] = found
            else:
                catalog.tasks[name] = found.model_copy(update={"name": found.name})
    groups: dict[str, GroupSpec] = {}
    expanded = [task for name in names for task in _expand(name, catalog, groups)]
    return [catalog.tasks[name] for name in dict.fromkeys(expanded)], list(groups.values())


def get_tasks(names: Sequence[str], extra_dirs: Iterable[Path] = ()) -> list[TaskSpec]:
    """The tasks the names stand for, groups expanded; an unknown name is a user error."""
    return resolve_tasks(names, extra_dirs)[0]
