"""The SQLite result cache shared by several processes opening it at once (as ranks under torchrun do)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from harness.core.cache import ResultCache

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
