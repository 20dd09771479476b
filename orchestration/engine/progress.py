"""A live progress display for a running sweep: one line per trial event, plus a running tally.

Tune's own tables are switched off (``verbose=0``); this callback prints what a researcher wants to
see — which trial started, its Deep SAD epochs every few epochs, its final metrics, failures — and
a ``[done/total]`` prefix. It must stay picklable (Tune stores its callbacks with the experiment).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from ray import tune


def _short(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(params.items()))


class ProgressPrinter(tune.Callback):
    """Prints trial events to stdout (flushed, so logs of remote jobs stream too)."""

    def __init__(self, total: int, every: int = 5) -> None:
        self.total = total
        self.every = every
        self.done = 0
        self.failed = 0
        self.best: float | None = None
        self.t0 = time.monotonic()

    def _say(self, text: str) -> None:
        elapsed = time.monotonic() - self.t0
        print(f"[{self.done + self.failed}/{self.total} {elapsed:6.0f}s] {text}", file=sys.stdout, flush=True)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        shown = {k: v for k, v in trial.config.items() if not k.startswith("__")}
        if "job" in shown:
            shown = {"job": shown["job"]}
        self._say(f"start   {trial.trial_id} {_short(shown)}")

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any],
                        **info: Any) -> None:
        if result.get("done") or result.get("phase") != "sad":
            return
        epoch = result.get("sad_epoch")
        if isinstance(epoch, int) and epoch % self.every == 0:
            auroc = result.get("val_auroc")
            shown = "n/a" if auroc is None else f"{auroc:.4f}"
            self._say(f"epoch   {trial.trial_id} {epoch:>4} val_auroc {shown}")

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        self.done += 1
        auroc = last.get("val_auroc")
        if isinstance(auroc, float):
            self.best = auroc if self.best is None else max(self.best, auroc)
        state = "skipped (finished before)" if last.get("skipped") else ("done" if last.get("done") else "stopped")
        hit = " · AE from cache" if last.get("cache_hit") else ""
        if last.get("members"):
            hit = f" · bundle of {last['members']}: {last.get('finished', 0)} finished, {last.get('failed', 0)} failed"
        metrics = " ".join(f"{k} {last[k]:.4f}" for k in ("val_auroc", "test_auroc") if isinstance(last.get(k), float))
        best = f" · best val_auroc {self.best:.4f}" if self.best is not None else ""
        self._say(f"{state:7} {trial.trial_id} {metrics}{hit}{best}")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.failed += 1
        self._say(f"failed  {trial.trial_id} {trial_error(trial)[:200]}")

    def __repr__(self) -> str:
        return f"ProgressPrinter({json.dumps({'total': self.total})})"


def trial_error(trial: Any) -> str:
    """The last line of a failed trial's error (its exception), read from the driver's local copy:
    the copy in storage is synced later than the callbacks run."""
    text = ""
    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        text = Path(path).read_text(errors="replace")
    else:
        with contextlib.suppress(Exception):
            text = str(trial.get_error() or "")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("Failure #")]
    return (lines[-1] if lines else "trial failed")[:500]
