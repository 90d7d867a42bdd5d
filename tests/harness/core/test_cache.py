"""The SQLite result cache shared by several processes opening it at once (as ranks under torchrun do)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.core.cache import ResultCache
from harness.core.errors import HarnessError

WRITER = (
    "import sys; from pathlib import Path; from harness.core.cache import ResultCache; "
    "cache = ResultCache(Path(sys.argv[1])); cache.put_many({'key' + sys.argv[2]: {'value': int(sys.argv[2])}})"
)


def test_many_processes_open_and_write_a_new_cache_at_once(tmp_path: Path) -> None:
    for trial in range(3):
        path = tmp_path / f"cache-{trial}.sqlite"
        writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(i)]) for i in range(6)]
        assert [writer.wait(timeout=120) for writer in writers] == [0] * 6
        found = ResultCache(path).get_many([f"key{i}" for i in range(6)])
        assert found == {f"key{i}": {"value": i} for i in range(6)}


def test_a_file_that_is_no_database_is_a_user_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    path.write_bytes(b"this is not an SQLite database, just bytes " * 100)
    with pytest.raises(HarnessError, match="result cache cannot be opened") as raised:
        ResultCache(path)
    assert str(raised.value).startswith(f"{path}: ") and "--no-cache" in str(raised.value)
