"""Imports run one way (issue 15): the import-linter contracts of pyproject.toml ([tool.importlinter]).

cli > engine > jobs | report | deploy > plan > spec | store inside ``orchestration``, and ``deepsad`` below
everything: it imports nothing of ``orchestration`` nor of the orchestration stack (Ray, Optuna, ...).
``lint-imports`` reads the source (function-level imports count too) and runs in well under a second.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
LAYERS = "orchestration layers: cli > engine > jobs | report | deploy > plan > spec | store"
CORE_BELOW = "deepsad (the core) imports nothing of orchestration"
CORE_PURE = "deepsad (the core) imports none of the orchestration stack"


def _lint_imports(root: Path) -> tuple[int, str]:
    """Run lint-imports on the packages under `root` (its pyproject.toml); the exit code and the output
    with its whitespace collapsed (rich wraps long lines)."""
    assert LINT_IMPORTS.exists(), f"{LINT_IMPORTS} missing: `make setup` installs import-linter (dev extra)"
    # PYTHONPATH (and the cwd, which lint-imports puts first on sys.path) make it analyse the packages under
    # `root`, not the editable install; no cache, so nothing is written under `root`.
    env = {**os.environ, "PYTHONPATH": str(root), "COLUMNS": "250", "NO_COLOR": "1"}
    done = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, " ".join((done.stdout + done.stderr).split())


def test_the_tree_keeps_the_import_contracts() -> None:
    rc, out = _lint_imports(REPO)
    assert rc == 0, out
    assert "3 kept, 0 broken" in out, out


@pytest.fixture()
def copy(tmp_path: Path) -> Path:
    """The two packages' sources and pyproject.toml, copied into tmp_path."""
    for package in ("orchestration", "deepsad"):
        for src in (REPO / package).rglob("*.py"):
            dst = tmp_path / src.relative_to(REPO)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    shutil.copyfile(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _plant(copy: Path, package: str, statement: str) -> tuple[str, int]:
    """Append `statement` to the first (sorted) plain module of `package` in the copy; its dotted name and
    the planted line's number."""
    path = sorted(p for p in (copy / package.replace(".", "/")).glob("*.py") if p.name != "__init__.py")[0]
    text = path.read_text()
    path.write_text(text + ("" if text.endswith("\n") else "\n") + statement + "\n")
    line = len(path.read_text().splitlines())
    return f"{package}.{path.stem}", line


@pytest.mark.parametrize(
    ("package", "statement", "imported", "contract"),
    [
        # a lower layer imports a higher one
        ("orchestration.store", "import orchestration.cli.app", "orchestration.cli.app", LAYERS),
        # siblings of one `|` layer are independent
        ("orchestration.report", "import orchestration.deploy", "orchestration.deploy", LAYERS),
        # the core imports orchestration
        ("deepsad", "import orchestration", "orchestration", CORE_BELOW),
        # the core imports Ray, inside a function (grimp counts function-level imports)
        ("deepsad", "def _planted() -> None:\n    import ray", "ray", CORE_PURE),
    ],
    ids=["store-imports-cli", "report-imports-deploy", "core-imports-orchestration", "core-imports-ray"],
)
def test_a_planted_bad_import_breaks_its_contract(
    copy: Path, package: str, statement: str, imported: str, contract: str
) -> None:
    importer, line = _plant(copy, package, statement)
    rc, out = _lint_imports(copy)
    assert rc != 0, out
    # the contract is reported broken, and the planted import (only in the copy) is named with its line
    assert f"{contract} BROKEN" in out, out
    assert f"{importer} -> {imported} (l.{line})" in out, out


def test_a_subpackage_outside_the_layers_breaks_the_exhaustive_contract(copy: Path) -> None:
    (copy / "orchestration" / "planted").mkdir()
    (copy / "orchestration" / "planted" / "__init__.py").write_text("")
    rc, out = _lint_imports(copy)
    assert rc != 0, out
    assert f"{LAYERS} BROKEN" in out, out
    assert "not listed as layers: - orchestration.planted" in out, out
