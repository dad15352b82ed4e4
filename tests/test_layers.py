"""The package layers point down only (pyproject.toml's import-linter contracts)."""

import os
import shutil
import subprocess
import sys

from tests.conftest import REPO

LINT = "from importlinter.cli import lint_imports; raise SystemExit(lint_imports(no_cache=True, no_logo=True))"


def lint(root) -> subprocess.CompletedProcess:
    """import-linter over the packages of `root`, in a process of its own (it reads the
    packages found first on the path)."""
    return subprocess.run([sys.executable, "-c", LINT], cwd=root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(root)})


def test_imports_point_down_the_layers():
    result = lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_module_that_imports_upwards_breaks_the_contract(tmp_path):
    """The check can fail: a copy of the tree whose core imports a judge."""
    for package in ("wsd", "eval", "pipelines"):
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    with (tmp_path / "wsd" / "core" / "prompts.py").open("a") as f:
        f.write("\nfrom eval import judges  # noqa\n")
    result = lint(tmp_path)
    assert result.returncode == 1 and "wsd.core.prompts -> eval.judges" in result.stdout, result.stdout
