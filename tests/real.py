"""Tests run against real components (Ray, moto, SeaweedFS, a browser). When one cannot start, a test must
not pass by skipping in CI: there a missing component fails the run (``CI=true``), while on a
developer's machine it is skipped with the reason."""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """Whether this run is CI's (``.ci/run`` sets ``CI=true``)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def unavailable(reason: str) -> NoReturn:
    """A real component this test needs is missing: fail in CI, skip elsewhere."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a real component that cannot start fails the run instead of skipping)")
    pytest.skip(reason)


def require_module(name: str, reason: str) -> ModuleType:
    """``import name``, or :func:`unavailable` with ``reason``."""
    try:
        return importlib.import_module(name)
    except ImportError:
        unavailable(reason)
