"""No test module imports Ray when pytest collects it.

Ray reads ``RAY_AUTH_MODE`` once, when ``ray._raylet`` is imported: a test module that imports Ray (or
``orchestration.engine.search``, which does) at collection time fixes the whole test process to "disabled",
and the token-authenticated cluster of ``tests/orchestration/engine/test_cluster.py`` then cannot start
("InvalidAuthToken", seen in CI). Tests that need Ray import it inside the test, or run it in a
subprocess.
"""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

_PROBE = """
import importlib, pathlib, sys
for path in sorted(pathlib.Path("tests").rglob("test_*.py")):
    name = ".".join(path.with_suffix("").parts)
    importlib.import_module(name)
    if "ray" in sys.modules:
        print(name)
        break
"""


def test_no_test_module_imports_ray_at_collection() -> None:
    done = subprocess.run([sys.executable, "-c", _PROBE], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "", f"{done.stdout.strip()} imports Ray at collection time"
