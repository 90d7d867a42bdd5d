"""The house rules that keep the layout readable: the import contract of docs/architecture.md (layers, no cycles),
modules under 500 lines, and each package's public names exported from its __init__."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "adapters", "judges", "reports", "tasks")
MAX_MODULE_LINES = 500


def test_import_contract_is_kept() -> None:
    """import-linter's contracts in pyproject.toml: imports run down the layers, no package or module imports its
    way back round (a broken contract prints the offending import chain)."""
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def _modules() -> list[Path]:
    return sorted(path for package in (*PACKAGES, "bench") for path in (REPO_ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("module_path", _modules(), ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_module_is_small(module_path: Path) -> None:
    lines = len(module_path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES, f"{module_path.relative_to(REPO_ROOT)} has {lines} lines: split it by role"


def _packages() -> list[str]:
    return sorted(
        ".".join(init.parent.relative_to(REPO_ROOT).parts)
        for package in PACKAGES[:-1]
        for init in (REPO_ROOT / package).rglob("__init__.py")
    )


@pytest.mark.parametrize("package", _packages())
def test_package_exports_its_public_names(package: str) -> None:
    """Every package says what it offers in `__all__`, and each name there is importable from it."""
    module = importlib.import_module(package)
    exported = getattr(module, "__all__", None)
    assert exported, f"{package}/__init__.py has no __all__"
    missing = [name for name in exported if not hasattr(module, name)]
    assert not missing, f"{package} lists {missing} in __all__ but does not define them"
