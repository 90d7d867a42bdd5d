"""Task rows from a hub dataset (`dataset: {path, name, split, revision, data_files}`), through `datasets`.

Online, `datasets.load_dataset` fetches and caches as usual. Offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE), the
huggingface_hub snapshot of the revision is read when there is one (what `hf download` or an online load leaves;
it honours `revision` and `data_files`), else the `datasets` cache. That cache ignores the revision asked for
offline and serves its newest copy, so the commit actually read is checked against a pinned one. Whatever fails,
the error names the dataset and says how to pre-fetch it. The run record gets the commit read and a hash of the
rows themselves.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from harness.core.data import Row, TaskRows
from harness.core.errors import HarnessError
from harness.core.fingerprint import hash_json
from harness.core.taskspec import DatasetSource

_SHA = re.compile(r"[0-9a-f]{40}")
_BUILDERS = ("json", "csv", "parquet", "text", "arrow")  # datasets' own loaders for local data_files


def _offline() -> bool:
    import datasets
    import huggingface_hub

    return bool(datasets.config.HF_HUB_OFFLINE or huggingface_hub.constants.HF_HUB_OFFLINE)


def _prefetch_hint(source: DatasetSource) -> str:
    args = ", ".join(
        [repr(source.path)]
        + ([repr(source.name)] if source.name else [])
        + ([f"revision={source.revision!r}"] if source.revision else [])
    )
    return (
        "pre-fetch it on a machine with network into the cache this one reads (HF_HOME): "
        f'python -c "import datasets; datasets.load_dataset({args})", or '
        f"hf download --repo-type dataset {source.path}" + (f" --revision {source.revision}" if source.revision else "")
    )


def _snapshot(source: DatasetSource) -> Path | None:
    """The hub-cache snapshot folder of the revision (a branch through refs/, a commit directly), if cached."""
    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE, f"datasets--{source.path.replace('/', '--')}")
    revision = source.revision or "main"
    ref = repo / "refs" / revision
    sha = revision if _SHA.fullmatch(revision) else ref.read_text().strip() if ref.is_file() else None
    folder = repo / "snapshots" / sha if sha else None
    return folder if folder is not None and folder.is_dir() else None


def _commit(dataset: Any) -> str | None:
    """The commit a hub dataset's cached arrow files came from (their folder is named by it)."""
    for cache_file in dataset.cache_files:
        folder = Path(cache_file["filename"]).parent.name
        if _SHA.fullmatch(folder):
            return folder
    return None


def _error(source: DatasetSource, split: str, error: Exception) -> HarnessError:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    where = source.label(split)
    if "Unknown split" in text:
        return HarnessError(f"no split '{split}': {text}", path=where, field="dataset.split")
    if "BuilderConfig" in text and "not found" in text:
        return HarnessError(f"no such config: {text}", path=where, field="dataset.name")
    if type(error).__name__ == "DatasetNotFoundError":
        return HarnessError(text, path=where, field="dataset.path")
    reason = "not in the local cache and offline mode is on" if _offline() else "cannot be loaded"
    return HarnessError(
        f"{reason} ({type(error).__name__}: {text})", path=where, field="dataset", hint=_prefetch_hint(source)
    )


def _load_split(source: DatasetSource, split: str) -> tuple[Any, str | None]:
    """One split as a `datasets.Dataset`, and the commit it was read at (None for local builders)."""
    import datasets

    datasets.disable_progress_bars()
    args: dict[str, Any] = {"split": split, "data_files": source.data_files}
    try:
        if source.path in _BUILDERS or Path(source.path).is_dir():
            return datasets.load_dataset(source.path, source.name, **args), None
        snapshot = _snapshot(source) if _offline() else None
        if snapshot is not None:
            return datasets.load_dataset(str(snapshot), source.name, **args), snapshot.name
        loaded = datasets.load_dataset(source.path, source.name, revision=source.revision, **args)
    except Exception as error:  # datasets raises ConnectionError, ValueError, FileNotFoundError, ... for these
        raise _error(source, split, error) from None
    return loaded, _commit(loaded)


def _rows(source: DatasetSource, split: str) -> tuple[list[Row], str | None]:
    loaded, commit = _load_split(source, split)
    pinned = source.revision if source.revision and _SHA.fullmatch(source.revision) else None
    if pinned and commit and commit != pinned:
        raise HarnessError(
            f"the cached copy is commit {commit}, the task pins {pinned}",
            path=source.label(split),
            field="dataset.revision",
            hint=_prefetch_hint(source),
        )
    rows = [Row(index + 1, dict(values)) for index, values in enumerate(loaded)]
    if not rows:
        raise HarnessError("the split is empty", path=source.label(split), field="dataset.split")
    return rows, commit


def read_hub_rows(source: DatasetSource, fewshot_split: str | None) -> TaskRows:
    """The split to score and the few-shot split (when given), with a fingerprint of their content and commit."""
    rows, commit = _rows(source, source.split)
    fewshot = _rows(source, fewshot_split)[0] if fewshot_split and fewshot_split != source.split else None
    fewshot_values = [r.values for r in fewshot] if fewshot is not None else None
    content = [source.model_dump(mode="json"), commit, [r.values for r in rows], fewshot_values]
    return TaskRows(rows, fewshot, hash_json(content), revision=commit)
