"""``deepsad sweep submit|status|resume`` and ``deepsad results show``."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from orchestration.store.layout import DEFAULT_STORAGE

if TYPE_CHECKING:
    from orchestration.engine.prepare import Prepared

app = typer.Typer(help="Run hyperparameter sweeps of Deep SAD on Ray Tune.", no_args_is_help=True)
results_app = typer.Typer(help="Inspect a sweep's results.", no_args_is_help=True)

StorageOpt = Annotated[
    str | None, typer.Option("--storage", help="Sweep storage: a directory (default runs/sweeps) or s3://bucket/prefix.")
]
AddressOpt = Annotated[
    str | None,
    typer.Option("--address", help="A Ray cluster's dashboard URL (http://HEAD:8265; default: $RAY_ADDRESS): "
                 "run the sweep there as a Ray job. With RAY_AUTH_MODE=token the token is sent."),
]
WaitOpt = Annotated[bool, typer.Option("--wait", help="With --address: stream the driver's output until it ends.")]
DepsOpt = Annotated[
    str, typer.Option("--deps", help="With --address: `pinned` ships the project's dependencies pinned to the "
                      "versions installed here; `image` relies on the cluster image's.")
]
PythonOpt = Annotated[
    str | None, typer.Option("--python", help="With --address: the cluster's interpreter for the driver "
                             "(default $DEEPSAD_CLUSTER_PYTHON or `python`).")
]
BaseDirOpt = Annotated[
    str | None,
    typer.Option("--base-dir", help="Where relative paths in SPEC (data_dir, ...) are taken from. Default: the "
                 "current directory; with --address, /home/ray/deepsad (the project image's directory on the "
                 "cluster; infra/ puts the data in /home/ray/shared/data)."),
]
InClusterOpt = Annotated[
    bool, typer.Option("--in-cluster", help="Run the driver on the Ray cluster this process belongs to (inside "
                       "a Ray job, e.g. a KubeRay RayJob) instead of starting a local Ray.")
]


@app.command("submit")
def submit(
    spec: Annotated[Path, typer.Argument(help="The sweep file (YAML).")],
    storage: StorageOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; start nothing.")] = False,
    address: AddressOpt = None,
    wait: WaitOpt = False,
    deps: DepsOpt = "pinned",
    python: PythonOpt = None,
    base_dir: BaseDirOpt = None,
    in_cluster: InClusterOpt = False,
) -> None:
    """Validate SPEC and run it on a local Ray (started for you, on 127.0.0.1 only) or, with --address,
    on a Ray cluster (returns at once with the job id; --wait streams the driver's output)."""
    from orchestration.engine.prepare import prepare
    from orchestration.engine.remote import resolve_address
    from orchestration.plan.summary import make_plan

    url = None if in_cluster else resolve_address(address)
    if url is not None:
        _submit_remote(spec, storage, url, wait=wait, deps=deps, python=python, dry_run=dry_run,
                       base_dir=base_dir or CLUSTER_BASE_DIR)
        return
    prep = prepare(spec, storage, in_cluster=in_cluster, base_dir=base_dir)
    shown, auto_lines = prep.spec, []
    if prep.spec.resources.has_auto():  # the plan shows what auto picks here; the driver sizes it again
        from orchestration.plan.resources import resolve_here

        resolution = resolve_here(prep.spec, prep.cells)
        shown = prep.spec.model_copy(update={"resources": resolution.resources})
        auto_lines = [*resolution.describe(), "  (here, without Ray; the driver resolves auto again from the "
                      "resources of the Ray it runs on — on a cluster, the cluster's)"]
    plan = make_plan(shown, prep.cells if prep.spec.search.algorithm != "tpe" else None,
                     storage=prep.sweep_dir.uri.rsplit("/", 1)[0])
    for line in [*plan.describe(), *auto_lines]:
        typer.echo(line)
    if prep.spec.search.algorithm != "tpe":
        typer.echo(f"already finished: {len(prep.cells) - len(prep.pending)} of {len(prep.cells)} trials "
                   f"(they are skipped); to run: {len(prep.pending)}")
    racing = prep.spec.racing
    if racing is not None:
        seeds = prep.spec.seeds
        first = ", ".join(str(s) for s in seeds[: racing.start])
        typer.echo(f"  racing: every configuration starts on seeds [{first}] (of {len(seeds)}); the next seed goes "
                   f"only to configurations whose {racing.confidence:.0%} interval of the mean overlaps the "
                   "leader's, round by round, until it is settled")
    res = shown.resources
    if res.bundle_size != 1 and prep.spec.search.algorithm == "tpe" and prep.spec.ablation is None:
        from orchestration.plan.bundles import configs_per_batch
        from orchestration.plan.cells import amount

        per, n_seeds = configs_per_batch(int(res.bundle_size), len(prep.spec.seeds)), len(prep.spec.seeds)
        typer.echo(f"  TPE in bundles: {amount(per, 'configuration')} × {amount(n_seeds, 'seed')} per batch, asked of "
                   f"the study at once (constant liar) and trained as bundles of up to {res.bundle_size}")
    elif res.bundle_size != 1 and prep.spec.ablation is None and prep.pending:
        from orchestration.jobs.kinds import plan_jobs

        main_seeds = prep.spec.seeds[: prep.spec.racing.start] if prep.spec.racing else prep.spec.seeds
        main = [c for c in prep.pending if getattr(c, "seed", None) in main_seeds]  # racing: the first seeds' trials
        sizes = [len(j.keys) for j in plan_jobs(main, res.bundle_size, res.gpus_per_trial)] or [0]
        typer.echo(f"  bundles: {len(sizes)} (of {min(sizes)}–{max(sizes)} trials each) trained as one process each")
    typer.echo(f"sweep directory: {prep.sweep_dir.uri}")
    if dry_run:
        return
    _run(prep, resume=False, in_cluster=in_cluster)


#: Relative paths of a cluster sweep are taken from here on the cluster: the image's project directory.
CLUSTER_BASE_DIR = "/home/ray/deepsad"


def _submit_remote(spec_path: Path, storage: str | None, url: str, *, wait: bool, deps: str,
                   python: str | None, dry_run: bool, base_dir: str) -> None:
    """Validate the sweep file and the storage here, then hand the driver to the cluster."""
    from orchestration.engine.remote import (
        check_cluster_storage,
        python_default,
        quiet_ray_client,
        submit_job,
    )
    from orchestration.spec.load import load_spec

    parsed = load_spec(spec_path, base_dir=base_dir)
    uri = check_cluster_storage(storage, parsed)
    from orchestration.plan.identity import check_identity
    from orchestration.store.storage import Storage

    check_identity(parsed, Storage.from_uri(uri).child(parsed.name))  # the driver checks again; say it here
    text = spec_path.read_text(encoding="utf-8")
    typer.echo(f"sweep {parsed.name}: {parsed.search.algorithm} · storage {uri}/{parsed.name} · cluster {url}")
    if parsed.resources.has_auto():
        typer.echo("resources auto: sized by the driver from the cluster's resources when it starts "
                   "(its line and resources.json in the sweep directory say what it chose)")
    if dry_run:
        typer.echo("dry run: nothing submitted (the data and every trial are validated on the cluster)")
        return
    with quiet_ray_client():
        job_id = submit_job(address=url, name=parsed.name, storage=uri, spec_text=text,
                            driver_args=["sweep", "submit", "submission/spec.yaml", "--base-dir", base_dir],
                            action="submit",
                            deps=deps, python=python or python_default())
    _after_submit(parsed.name, url, job_id, wait=wait)


def _after_submit(name: str, url: str, job_id: str, *, wait: bool) -> None:
    from orchestration.engine.remote import quiet_ray_client, wait_for_job

    typer.echo(f"submitted: sweep {name} runs as Ray job {job_id} on {url}")
    if not wait:
        typer.echo(f"follow: `deepsad sweep logs {name} --address {url} --follow` · progress: "
                   f"`deepsad sweep status {name} --address {url}` · stop: `deepsad sweep stop {name} --address {url}`")
        return
    with quiet_ray_client():
        status = wait_for_job(url, job_id, typer.echo)
    typer.echo(f"job {job_id}: {status}")
    if status != "SUCCEEDED":
        sys.exit(130 if status == "STOPPED" else 1)


@app.command("resume")
def resume(
    name: Annotated[str, typer.Argument(help="Sweep name.")],
    storage: StorageOpt = None,
    address: AddressOpt = None,
    wait: WaitOpt = False,
    deps: DepsOpt = "pinned",
    python: PythonOpt = None,
    in_cluster: InClusterOpt = False,
) -> None:
    """Continue sweep NAME whose driver died or was interrupted (finished trials are not rerun)."""
    from orchestration.engine.prepare import load_submitted
    from orchestration.engine.remote import resolve_address

    url = None if in_cluster else resolve_address(address)
    if url is None:
        _run(load_submitted(name, storage), resume=True, in_cluster=in_cluster)
        return
    from orchestration.engine.remote import (
        check_cluster_storage,
        python_default,
        quiet_ray_client,
        submit_job,
    )

    uri = check_cluster_storage(storage, None)
    prep = load_submitted(name, uri)  # the sweep must exist in the bucket
    with quiet_ray_client():
        job_id = submit_job(address=url, name=name, storage=uri, spec_text=prep.spec_text,
                            driver_args=["sweep", "resume", name], action="resume", deps=deps,
                            python=python or python_default())
    _after_submit(name, url, job_id, wait=wait)


def _run(prep: Prepared, *, resume: bool, in_cluster: bool = False) -> None:
    from orchestration.engine.runner import run_sweep

    try:
        summary = run_sweep(prep, resume=resume, progress=typer.echo, in_cluster=in_cluster)
    except KeyboardInterrupt:
        name = prep.spec.name
        typer.echo(f"\ninterrupted: finished trials are kept; continue with `deepsad sweep resume {name}`",
                   err=True)
        sys.exit(130)
    _print_summary(summary)
    name = prep.spec.name
    root = prep.sweep_dir.uri.rsplit("/", 1)[0]
    where = "" if root.endswith(DEFAULT_STORAGE) else f" --storage {root}"
    typer.echo(f"results: `deepsad results show {name}{where}` · status: `deepsad sweep status {name}{where}`")


def _print_summary(summary: dict[str, Any]) -> None:
    by_status = summary.get("by_status", {})
    parts = ", ".join(f"{n} {s}" for s, n in sorted(by_status.items()))
    saved = float(summary.get("ae_seconds_saved", 0.0) or 0.0)
    typer.echo(f"trials: {summary.get('trials', 0)} ({parts or 'none'}) · AE cache hits: "
               f"{summary.get('cache_hits', 0)} · pretraining compute saved: {saved:.1f} s")


@app.command("status")
def status(
    name: Annotated[str, typer.Argument(help="Sweep name.")], storage: StorageOpt = None, address: AddressOpt = None
) -> None:
    """A table of the sweep's trials and its progress (with --address: its Ray job's state first)."""
    from orchestration.engine.prepare import load_submitted
    from orchestration.engine.remote import resolve_address
    from orchestration.report.tables import status_table

    url = resolve_address(address)
    if url is not None:
        from orchestration.engine.remote import connect, latest_job, quiet_ray_client

        with quiet_ray_client():
            job = latest_job(connect(url), name, url, storage)
        when = datetime.fromtimestamp(job.start_time, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        typer.echo(f"job {job.job_id} ({job.action}, started {when}): {job.status}"
                   + (f" — {job.message}" if job.message and job.status != "SUCCEEDED" else ""))
        storage = storage or job.storage
        if job.running:
            from deepsad.errors import StorageError

            try:
                prep = load_submitted(name, storage)
            except StorageError:
                typer.echo("the driver is still validating the sweep: no trial yet")
                return
            status_table(prep)
            return
    status_table(load_submitted(name, storage))


@app.command("logs")
def logs(
    name: Annotated[str, typer.Argument(help="Sweep name.")],
    address: AddressOpt = None,
    storage: StorageOpt = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep streaming until the job ends.")] = False,
) -> None:
    """The output of the sweep's driver on the cluster (its latest Ray job)."""
    from orchestration.engine.remote import connect, latest_job, quiet_ray_client, wait_for_job

    url = _need_address(address, "logs")
    with quiet_ray_client():
        client = connect(url)
        job = latest_job(client, name, url, storage)
        if follow:
            status = wait_for_job(url, job.job_id, typer.echo)
            typer.echo(f"job {job.job_id}: {status}")
            return
        typer.echo(client.get_job_logs(job.job_id), nl=False)


@app.command("stop")
def stop(
    name: Annotated[str, typer.Argument(help="Sweep name.")], address: AddressOpt = None, storage: StorageOpt = None
) -> None:
    """Stop the sweep's driver on the cluster gracefully; finished trials are kept, `resume` continues."""
    from orchestration.engine.remote import quiet_ray_client, stop_sweep

    url = _need_address(address, "stop")
    with quiet_ray_client():
        job = stop_sweep(url, name, storage, typer.echo)
    typer.echo(f"job {job.job_id}: {job.status}; continue with `deepsad sweep resume {name} --address {url} "
               f"--storage {job.storage}`")


def _need_address(address: str | None, command: str) -> str:
    from deepsad.errors import ConfigError
    from orchestration.engine.remote import resolve_address

    url = resolve_address(address)
    if url is None:
        raise ConfigError(f"sweep {command}: needs --address http://HEAD:8265 (or RAY_ADDRESS): only cluster "
                          "sweeps run as jobs (a local sweep's output is in your terminal)")
    return url


@results_app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="Sweep name.")],
    storage: StorageOpt = None,
    top: Annotated[int | None, typer.Option("--top", help="Only the best K trials.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
    configs: Annotated[bool, typer.Option("--configs", help="Configurations (over their seeds) instead of "
                                          "trials, as `checkpoint pull` ranks them.")] = False,
    by: Annotated[str, typer.Option("--by", help="With --configs: rank by the mean over seeds, or by lcb (the "
                                    "lower bound of its 95% t interval).")] = "mean",
) -> None:
    """The sweep's trials from its result store, best validation objective first (--configs: its
    configurations, by mean or lower confidence bound, a lucky winner flagged)."""
    from deepsad.errors import ConfigError
    from orchestration.engine.prepare import load_submitted
    from orchestration.report.tables import results_output

    if fmt not in ("table", "csv", "json"):
        raise ConfigError(f"--format: must be table, csv or json (got {fmt})")
    if top is not None and top < 1:
        raise ConfigError(f"--top: must be >= 1 (got {top})")
    if configs:
        _configs_output(load_submitted(name, storage, plan=False), top=top or 10, by=by, fmt=fmt)
        return
    if by != "mean":
        raise ConfigError("--by: ranks configurations; add --configs")
    results_output(load_submitted(name, storage, plan=False), top=top, fmt=fmt)


def _configs_output(prep: Any, *, top: int, by: str, fmt: str) -> None:
    """The sweep's configurations ranked as `checkpoint pull` ranks them."""
    import json

    from orchestration.deploy.registry import check_ranking, format_ranking, lucky, rank_configurations
    from orchestration.store.results import ResultStore

    check_ranking(by)
    metric = prep.spec.search.objective.metric
    rows = ResultStore(prep.sweep_dir).trials().to_pylist()
    ranked = rank_configurations(rows, metric, by=by)
    n_fewer = len(rank_configurations(rows, metric, by=by, min_seeds=1)) - len(ranked)
    if fmt != "table":
        flagged = lucky(ranked)
        doc = [{"rank": i + 1, "mean": c.mean, "std": c.std, "lower": c.lower() if c.n > 1 else None, "n": c.n,
                "params": c.params, "best_seed": c.best.seed, "best_value": c.best.value,
                "lucky": flagged is not None and flagged[0] == i} for i, c in enumerate(ranked[:top])]  # fmt: skip
        if fmt == "json":
            typer.echo(json.dumps(doc, indent=1))
            return
        import csv

        writer = csv.DictWriter(sys.stdout, fieldnames=list(doc[0]) if doc else ["rank"])
        writer.writeheader()
        for d in doc:
            writer.writerow({**d, "params": json.dumps(d["params"])})
        return
    if not ranked:
        typer.echo(f"{prep.spec.name}: no finished configuration yet")
        return
    for line in format_ranking(ranked, metric, top=top, chosen=-1, by=by):
        typer.echo(line)
    if n_fewer:
        typer.echo(f"({n_fewer} configuration(s) with fewer finished seeds not ranked: a race left them behind, "
                   "or their seeds failed)")


@results_app.command("compact")
def compact(
    name: Annotated[str, typer.Argument(help="Sweep name.")],
    storage: StorageOpt = None,
) -> None:
    """Compact the sweep's result tables into a few files and remove the files no reader needs any more
    (a sweep does this itself every few hundred commits and when it ends; for sweeps of earlier versions
    it also converts one file per trial into the tables, leaving the old files in place)."""
    from deepsad.errors import StorageError
    from orchestration.store.layout import SPEC_FILE, sweep_location
    from orchestration.store.results import ResultStore

    sweep_dir = sweep_location(name, storage)
    if not sweep_dir.exists(SPEC_FILE):
        raise StorageError(f"no sweep {name!r} under {sweep_dir.uri.rsplit('/', 1)[0]} (no {SPEC_FILE})")
    store = ResultStore(sweep_dir)
    if not store.exists():
        typer.echo(f"{name}: no result rows yet, nothing to compact")
        return
    done = store.maintain()
    for table, files in done.items():
        typer.echo(f"{name}: {table}: {files['files_before']} data file(s) -> {files['files_after']}")
