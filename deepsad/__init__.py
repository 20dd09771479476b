"""Deep SAD (Ruff et al., ICLR 2020) in pure PyTorch.

This package never imports ray, optuna, boto3, pyarrow, pydantic or typer: it runs anywhere
PyTorch runs. Orchestration lives in the separate ``orchestration`` package.
"""

from __future__ import annotations

__version__ = "0.1.0"
