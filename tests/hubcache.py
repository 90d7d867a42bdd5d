"""A Hugging Face cache filled as an online `datasets.load_dataset` of a hub dataset leaves it, from local rows, so
that hub tasks run offline in tests: the datasets arrow cache (`<org>___<name>/<config>/0.0.0/<commit>/`, what an
offline `load_dataset(repo_id)` reads) and the huggingface_hub snapshot (`datasets--org--name/snapshots/<commit>`
with `refs/main`). The layout was checked against a real download from a local hub server."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def prefill_hub_dataset(
    cache_root: Path,
    repo_id: str,
    configs: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]] | Path]],
    revision: str = "0" * 40,
) -> None:
    """`configs`: {config name: {split: rows or a JSONL file}}; `revision`: the commit `main` points at."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets.naming import camelcase_to_snakecase
    from datasets.packaged_modules.parquet.parquet import Parquet

    org, _, name = repo_id.rpartition("/")
    dataset_name = camelcase_to_snakecase(name)
    repo_dir = cache_root / "hub" / f"datasets--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / revision
    readme = ["---", "configs:"]
    for config, splits in configs.items():
        data_files: dict[str, list[str]] = {}
        readme.append(f"- config_name: {config}\n  data_files:")
        for split, rows in splits.items():
            if isinstance(rows, Path):
                rows = [json.loads(line) for line in rows.read_text(encoding="utf-8").splitlines() if line.strip()]
            relative = f"{config}/{split}-00000-of-00001.parquet"
            (snapshot / relative).parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(list(rows)), snapshot / relative)
            data_files[split] = [str(snapshot / relative)]
            readme.append(f"  - split: {split}\n    path: {relative}")
        builder = Parquet(
            cache_dir=str(cache_root / "datasets"),
            dataset_name=dataset_name,
            config_name=config,
            config_id=config,
            hash=revision,
            data_files=data_files,
        )
        target = cache_root / "datasets" / f"{org}___{dataset_name}" / config / str(builder.config.version) / revision
        builder.download_and_prepare(output_dir=str(target), download_mode="force_redownload")
    (snapshot / "README.md").write_text("\n".join([*readme, "---", ""]), encoding="utf-8")
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision)
