"""Deterministic fault injection for the fault-tolerance tests (never active unless asked for).

Set ``DEEPSAD_FAULTS`` to a JSON file before the sweep starts (Ray workers inherit the environment):

    {"rules": [{"at": "sad_epoch", "epoch": 2, "action": "raise", "once": "/tmp/x/failed-once",
                "rank": 0, "trial_key": null}]}

``at`` is a point the trial passes (``trial_start``, ``ae_epoch``, ``sad_epoch``, ``trial_end``);
``action`` is ``raise`` (an exception: Tune retries the trial), ``exit`` (the process dies at once,
like a killed worker) or ``hang`` (it sleeps ``seconds``, default an hour: the test kills what it
wants meanwhile); the driver's committer passes ``rows_commit`` before committing a finished row; ``once`` is a marker file: the rule fires only while it does not exist and
creates it when it fires, so a retried trial passes. ``touch`` (optional) is a file written every time
the point is passed (``trial_key at epoch pid node``, ``node`` being the Ray node id or ``-``) — tests
wait on it instead of sleeping, and see where each epoch ran; with ``touch``, ``nth`` (optional) fires
the rule only on the pass that writes the file's nth line (e.g. the second bundle a sweep starts).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

ENV = "DEEPSAD_FAULTS"


class InjectedFault(RuntimeError):
    """The exception an injected ``raise`` fault throws."""


def _rules() -> list[dict[str, Any]]:
    path = os.environ.get(ENV)
    if not path or not Path(path).is_file():
        return []
    rules = json.loads(Path(path).read_text()).get("rules", [])
    return [r for r in rules if isinstance(r, dict)]


def _node_id() -> str:
    try:
        import ray

        return str(ray.get_runtime_context().get_node_id()) if ray.is_initialized() else "-"
    except Exception:
        return "-"


def _lines(path: str) -> int:
    with open(path) as fh:
        return sum(1 for _ in fh)


def checkpoint(at: str, *, epoch: int | None = None, rank: int = 0, trial_key: str | None = None) -> None:
    """Fire the matching rules for this point (a no-op without ``DEEPSAD_FAULTS``)."""
    for rule in _rules():
        if rule.get("at") != at:
            continue
        if rule.get("epoch") is not None and rule["epoch"] != epoch:
            continue
        if rule.get("rank") is not None and rule["rank"] != rank:
            continue
        if rule.get("trial_key") is not None and rule["trial_key"] != trial_key:
            continue
        if rule.get("touch"):
            with open(rule["touch"], "a") as fh:
                fh.write(f"{trial_key} {at} {epoch} {os.getpid()} {_node_id()}\n")
            if rule.get("nth") is not None and _lines(rule["touch"]) != rule["nth"]:
                continue  # only its nth pass (counted in the touch file) fires
        once = rule.get("once")
        if once:
            try:
                fd = os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # atomic: one process fires
            except FileExistsError:
                continue
            os.write(fd, f"{trial_key} {at} {epoch}\n".encode())
            os.close(fd)
        action = rule.get("action")
        if action == "raise":
            raise InjectedFault(f"injected fault at {at} epoch {epoch} (trial {trial_key})")
        if action == "exit":
            os._exit(17)
        if action == "hang":
            time.sleep(float(rule.get("seconds", 3600)))
