"""Seeds derived from a run's seed, one per purpose, and seeded blocks that leave the caller's RNG alone.

A run has one seed; weight initialisation, batch shuffling and any other random draw each use
:func:`derive_seed` of it with their own purpose (``"ae-init"``, ``"sad-shuffle"``, ...), so adding a
draw for one purpose never shifts another's, and a bundle member draws exactly what its separate run
draws.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import torch


def derive_seed(seed: int, purpose: str) -> int:
    """A stable 63-bit seed for one purpose (init, shuffling, ...) derived from the run's seed."""
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@contextlib.contextmanager
def seeded(seed: int, purpose: str) -> Iterator[None]:
    """Seed torch's global RNG (used by layer initialisers) for the block, leaving the caller's as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, purpose))
        yield
