"""Layer 2: turning tasks into RunResults: the task catalog (task files on a search path, @task functions) and the
runner (batching, the per-sample cache, scoring, judges, the run record)."""

from harness.evaluation.catalog import add_search_path, find_tasks, get_tasks, load_task_file
from harness.evaluation.runner import PreparedTask, RunOptions, evaluate, prepare_tasks

__all__ = [
    "PreparedTask",
    "RunOptions",
    "add_search_path",
    "evaluate",
    "find_tasks",
    "get_tasks",
    "load_task_file",
    "prepare_tasks",
]
