"""The core is pure PyTorch: every ``deepsad`` module imports with the orchestration stack blocked."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import REPO

BLOCKED = ["ray", "optuna", "boto3", "botocore", "pyarrow", "pydantic", "typer", "pandas", "yaml"]


def test_every_deepsad_module_imports_without_the_orchestration_stack() -> None:
    code = textwrap.dedent(
        f"""
        import importlib, importlib.abc, pkgutil, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {BLOCKED!r}:
                    raise ImportError("blocked: " + name)
                return None

        sys.meta_path.insert(0, Block())
        import deepsad
        names = [m.name for m in pkgutil.walk_packages(deepsad.__path__, "deepsad.")]
        for name in names:
            importlib.import_module(name)
        print(len(names))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) >= 10


def test_orchestration_is_not_imported_by_the_core() -> None:
    offenders = [
        str(p.relative_to(REPO))
        for p in (REPO / "deepsad").rglob("*.py")
        if "orchestration" in p.read_text()
        and any(line.lstrip().startswith(("import orchestration", "from orchestration"))
                for line in p.read_text().splitlines())
    ]
    assert offenders == []


def test_what_a_sweep_file_check_needs_imports_neither_torch_nor_sklearn() -> None:
    """Checking a sweep file (network names and sizes, the protocol) must stay quick: ``sweep status``,
    ``results show`` and every typo's error line go through it."""
    code = (
        "import sys\n"
        "import deepsad.netconfig, deepsad.data.splits, deepsad.data.sources\n"
        "print(sorted(m for m in ('torch', 'sklearn', 'scipy') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_registry_of_names_matches_the_builders() -> None:
    from deepsad import netconfig, networks

    assert tuple(networks._BUILDERS) == netconfig.NETWORKS
    assert networks.NetConfig is netconfig.NetConfig
