"""``deepsad replay SWEEP TRIAL_KEY``: retrain one result row with its recorded configuration and seed,
and compare its metrics with the row's (:mod:`orchestration.jobs.replay`).

Exit codes: 0 every metric equal (within ``--tolerance``, exactly by default); 3 some differ (listed);
2 a user error — an unknown sweep or key, a row that is not finished, data that is missing or whose
split fingerprint is not the row's. Heavy modules are imported inside the command.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from orchestration.jobs.replay import Compared, ReplayResult

#: The exit code of a replay whose metrics differ from the row's.
DIFFER = 3  # (1 is an internal error, 2 a user error)


def replay(
    sweep: Annotated[str, typer.Argument(help="Sweep name.")],
    trial_key: Annotated[str, typer.Argument(help="The row's trial key (`deepsad results show SWEEP`).")],
    storage: Annotated[
        str | None, typer.Option("--storage", help="Sweep storage: a directory or s3://bucket/prefix (default runs/sweeps).")
    ] = None,
    data_dir: Annotated[
        str | None, typer.Option("--data-dir", help="Where the data is now, if not where the sweep read it "
                                 "(a data file is looked for there by its name).")
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="auto, cpu or cuda (default: the device the row trained on).")
    ] = None,
    retrain_ae: Annotated[
        bool, typer.Option("--retrain-ae", help="Pretrain every autoencoder again, also those the rows took "
                           "from the sweep's cache.")
    ] = False,
    tolerance: Annotated[
        float, typer.Option("--tolerance", min=0.0, help="Largest absolute difference of a metric that counts as "
                            "equal (default 0: bit for bit).")
    ] = 0.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON.")] = False,
) -> None:
    """Retrain one row of a sweep and compare its metrics with the recorded ones.

    The split is rebuilt from the row's protocol and checked against its fingerprint; the training runs
    with the recorded configuration and seed (a bundle member: with the members it trained with; a
    baseline: choosing its hyperparameters again). Nothing is written to the sweep. Exit 0 when equal,
    3 when a metric differs, 2 on a user error.
    """
    from orchestration.engine.prepare import load_submitted
    from orchestration.jobs.replay import prepare_replay, run_replay

    submitted = load_submitted(sweep, storage, plan=False)
    plan = prepare_replay(submitted.spec, submitted.sweep_dir, trial_key, data_dir=data_dir, device=device,
                          retrain_ae=retrain_ae)
    for line in plan.describe():
        print(line, file=sys.stderr, flush=True)
    result = run_replay(plan, tolerance=tolerance)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=1, default=str, allow_nan=True))
    else:
        for line in format_result(result):
            typer.echo(line)
    if not result.equal:
        raise typer.Exit(DIFFER)


def format_result(result: ReplayResult) -> list[str]:
    """The comparison as a table (metric, recorded, replayed, difference), a baseline's chosen
    hyperparameters, and a verdict line."""
    metrics = [c for c in result.compared if c.name != "params_json"]
    width = max(len(c.name) for c in metrics)
    lines = [f"{'metric':<{width}}  {'recorded':>20}  {'replayed':>20}  {'difference':>11}"]
    for c in metrics:
        mark = "" if c.equal else "  ≠"
        lines.append(f"{c.name:<{width}}  {_show(c.recorded):>20}  {_show(c.replayed):>20}  {_difference(c):>11}{mark}")
    for c in result.compared:
        if c.name == "params_json":
            lines.append(f"hyperparameters chosen: {_show(c.replayed)} (as recorded)" if c.equal else
                         f"hyperparameters chosen: recorded {_show(c.recorded)}, replayed {_show(c.replayed)}  ≠")
    if result.weights is not None:
        lines.append(f"model weights: {result.weights} {'to' if result.weights == 'identical' else 'from'} the "
                     "recorded checkpoint")
    if result.fellows:
        off = sorted(k for k, same in result.fellows.items() if not same)
        lines.append(f"the bundle's other {len(result.fellows)} members: "
                     + (f"{len(off)} differ ({', '.join(off)})" if off else "equal too"))
    lines += [f"note: {n}" for n in result.notes if n not in result.plan.notes]
    n = len(result.differing)
    tol = result.compared[0].tolerance if result.compared else 0.0
    within = f" (within {tol:g})" if tol else ""
    lines.append(f"equal{within}" if n == 0 else f"{n} metric{'s differ' if n != 1 else ' differs'}")
    return lines


def _show(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return repr(v)  # every digit: a difference in the last bit must be visible
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True)
    return str(v)


def _difference(c: Compared) -> str:
    d = c.difference
    if d is None:
        return "" if c.equal else "differs"
    return "0" if d == 0 else f"{d:+.3e}"


def register(app: typer.Typer) -> None:
    """Add ``replay`` to the ``deepsad`` app."""
    app.command("replay")(replay)
