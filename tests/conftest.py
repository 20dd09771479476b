"""Shared fixtures: where the real data lives, and small real data sets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["tests.s3_servers"]
REPO = Path(__file__).resolve().parents[1]


def _shared_data() -> Path:
    env = os.environ.get("DEEPSAD_SHARED_DATA")
    return Path(env) if env else (REPO.parent / "shared" / "data")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data`: real MNIST, Fashion-MNIST (IDX .gz) and the raw UCI files."""
    path = _shared_data()
    if not (path / "mnist").is_dir():
        pytest.fail(f"real data not found at {path} (set DEEPSAD_SHARED_DATA)")
    return path


#: Tests that start a token-authenticated Ray cluster in this process: Ray reads RAY_AUTH_MODE once, at
#: its first import, so they run before any test that imports Ray in its body (tests/orchestration/engine/
#: test_batched.py does, and ran before them: "InvalidAuthToken", seen in CI).
RAY_AUTH_FIRST = ("tests/orchestration/engine/test_cluster.py::",)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    first = [i for i in items if i.nodeid.startswith(RAY_AUTH_FIRST)]
    if first:
        items[:] = first + [i for i in items if not i.nodeid.startswith(RAY_AUTH_FIRST)]
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
