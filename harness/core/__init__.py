"""Layer 0: types and pure logic every other part shares: task specs and the registry, data loading and prompt
rendering, run records, fingerprints, the result cache, errors and paths. No torch-heavy imports."""

from harness.core.cache import ResultCache
from harness.core.data import Row, data_fingerprint, read_rows
from harness.core.errors import HarnessError
from harness.core.fingerprint import hash_file, hash_files, hash_json
from harness.core.record import MetricValue, RunResult, RunSpec, SampleRecord, TaskResult, write_atomic
from harness.core.registry import ChoiceStats, MetricDef, SampleStats, metric, task
from harness.core.samples import Sample, build_samples, load_samples
from harness.core.taskspec import GenerationConfig, JudgeConfig, MetricConfig, PerplexityConfig, TaskSpec

__all__ = [
    "ChoiceStats",
    "GenerationConfig",
    "HarnessError",
    "JudgeConfig",
    "MetricConfig",
    "MetricDef",
    "MetricValue",
    "PerplexityConfig",
    "ResultCache",
    "Row",
    "RunResult",
    "RunSpec",
    "Sample",
    "SampleRecord",
    "SampleStats",
    "TaskResult",
    "TaskSpec",
    "build_samples",
    "data_fingerprint",
    "hash_file",
    "hash_files",
    "hash_json",
    "load_samples",
    "metric",
    "read_rows",
    "task",
    "write_atomic",
]
