"""``deepsad train``: one Deep SAD training run on this machine, with a progress display.

Every flag is checked before any data loads (the network of a registry data set too: its sample shape is
known without the data), and a value the core refuses is reported as one line naming its flag.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from deepsad.errors import ConfigError

#: What `train` writes into --out (and so all that its --force may replace).
TRAIN_OWNS: tuple[str, ...] = ("metrics.json", "model/**")


def train(
    dataset: Annotated[str, typer.Option(help="Data set name (see `deepsad data check`) or a .npz/.csv file.")],
    out: Annotated[str, typer.Option(help="Output directory (model bundle + metrics.json), created.")],
    data_dir: Annotated[Path | None, typer.Option(help="Where the data files are.")] = None,
    normal_class: Annotated[list[int] | None, typer.Option(help="Normal class (repeatable).")] = None,
    known_anomaly_class: Annotated[
        list[int] | None, typer.Option(help="Known anomaly class (repeatable); default: drawn with the seed.")
    ] = None,
    n_known_classes: Annotated[
        int | None, typer.Option(help="Number of known anomaly classes to draw (default 1).")
    ] = None,
    n_labeled_anomalies: Annotated[int | None, typer.Option(help="Labeled anomalies (a count).")] = None,
    ratio_labeled: Annotated[float, typer.Option(help="γ_l: labeled anomalies as a ratio of the training set.")] = 0.0,
    pollution: Annotated[float, typer.Option(help="γ_p: ratio of unlabeled anomalies in the unlabeled data.")] = 0.0,
    labeled_normals: Annotated[float, typer.Option(help="γ_n: ratio of labeled normals.")] = 0.0,
    val_fraction: Annotated[float, typer.Option(help="Validation share carved from the training pool.")] = 0.15,
    seed: Annotated[int, typer.Option(help="Seeds the split, the init and the batch order.")] = 0,
    eta: Annotated[float, typer.Option(help="η, weight of the labeled terms.")] = 1.0,
    rep_dim: Annotated[int | None, typer.Option(help="Latent dimension (default: the paper's per data set).")] = None,
    lr: Annotated[float, typer.Option(help="Deep SAD learning rate.")] = 1e-4,
    epochs: Annotated[int, typer.Option(help="Deep SAD epochs.")] = 150,
    weight_decay: Annotated[float, typer.Option(help="Deep SAD weight decay.")] = 0.5e-6,
    ae_lr: Annotated[float, typer.Option(help="Autoencoder learning rate.")] = 1e-4,
    ae_epochs: Annotated[int, typer.Option(help="Autoencoder epochs (0: no pretraining).")] = 150,
    ae_weight_decay: Annotated[float, typer.Option(help="Autoencoder weight decay.")] = 0.5e-3,
    milestone: Annotated[
        list[int] | None, typer.Option(help="Deep SAD LR milestone epoch, ×0.1 (repeatable; default 50).")
    ] = None,
    ae_milestone: Annotated[
        list[int] | None, typer.Option(help="Autoencoder LR milestone epoch (repeatable; default none).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Batch size, both phases.")] = 128,
    device: Annotated[str, typer.Option(help="torch device (cpu, cuda, cuda:1).")] = "cpu",
    bf16: Annotated[
        bool,
        typer.Option(help="bf16 autocast of the forward passes: not a speed option — slower than fp32 for "
                     "these small networks on an H200 (0.68× AE, 0.79× Deep SAD); for precision studies."),
    ] = False,
    reference_compat: Annotated[
        bool, typer.Option(help="Reproduce the reference code's (empty) encoder weight transfer.")
    ] = False,
    force: Annotated[
        bool, typer.Option(help="Replace an earlier `deepsad train` output in --out (never other files).")
    ] = False,
) -> None:
    """Train one Deep SAD model and report validation and test AUROC."""
    from orchestration.store.outputs import OutputDir, output_path

    protocol, sad, ae = _configs(
        normal_class=normal_class, known_anomaly_class=known_anomaly_class, n_known_classes=n_known_classes,
        n_labeled_anomalies=n_labeled_anomalies, ratio_labeled=ratio_labeled, pollution=pollution,
        labeled_normals=labeled_normals, val_fraction=val_fraction, seed=seed, eta=eta, lr=lr, epochs=epochs,
        weight_decay=weight_decay, ae_lr=ae_lr, ae_epochs=ae_epochs, ae_weight_decay=ae_weight_decay,
        milestone=milestone, ae_milestone=ae_milestone, batch_size=batch_size,
    )
    settings = {"eta": eta, "sad": sad, "ae": ae, "seed": seed, "device": device, "bf16": bf16,
                "reference_compat": reference_compat}
    _check_rep_dim(dataset, rep_dim, settings)
    output = OutputDir(output_path(out, "--out"), command="train", flag="--out", owns=TRAIN_OWNS, force=force,
                       what="the model")
    output.check()
    _check_device(device)
    split, cfg, result = _load_and_train(dataset, data_dir, protocol, rep_dim, settings)
    with output.staging() as staged:
        _save(staged, result, split, cfg, _split_record(dataset, data_dir, split))
    val = ("n/a (no labelled anomalies in the validation split)" if result.val_auroc is None
           else f"{result.val_auroc:.4f}")
    oracle = "" if result.val_auroc_oracle is None else f" (true labels: {result.val_auroc_oracle:.4f})"
    typer.echo(f"val AUROC {val}{oracle} · test AUROC {result.test_auroc:.4f} · test AP {result.test_ap:.4f}")
    typer.echo(f"model written to {output.path / 'model'}")


def _configs(
    *, normal_class: list[int] | None, known_anomaly_class: list[int] | None, n_known_classes: int | None,
    n_labeled_anomalies: int | None, ratio_labeled: float, pollution: float, labeled_normals: float,
    val_fraction: float, seed: int, eta: float, lr: float, epochs: int, weight_decay: float, ae_lr: float,
    ae_epochs: int, ae_weight_decay: float, milestone: list[int] | None, ae_milestone: list[int] | None,
    batch_size: int,
) -> tuple[Any, Any, Any]:
    """The split protocol and both phases' optimiser settings, every value checked before any data loads.

    Raises:
        ConfigError: one line naming the flag the user typed.
    """
    from deepsad.data.splits import Protocol
    from deepsad.training import OptimConfig, check_eta

    if known_anomaly_class and n_known_classes is not None and n_known_classes != len(set(known_anomaly_class)):
        raise ConfigError(
            f"--n-known-classes {n_known_classes} conflicts with --known-anomaly-class "
            f"({len(set(known_anomaly_class))} given): give one of them"
        )
    if ae_epochs < 0:
        raise ConfigError(f"--ae-epochs: must be >= 0 (0: no pretraining) (got {ae_epochs})")
    try:
        protocol = Protocol(
            normal_classes=tuple(normal_class or [0]),
            known_anomaly_classes=tuple(known_anomaly_class) if known_anomaly_class else None,
            n_known_outlier_classes=1 if n_known_classes is None else n_known_classes,
            n_labeled_anomalies=n_labeled_anomalies,
            ratio_known_outlier=ratio_labeled,
            ratio_pollution=pollution,
            ratio_known_normal=labeled_normals,
            val_fraction=val_fraction,
            seed=seed,
        )
    except ConfigError as e:
        raise ConfigError(f"{_flag_of(str(e), PROTOCOL_FLAGS)}{e}") from e
    sad_flags = {"lr": "--lr", "epochs": "--epochs", "weight_decay": "--weight-decay", "milestones": "--milestone",
                 "batch_size": "--batch-size", "eta": "--eta"}
    ae_flags = {"lr": "--ae-lr", "epochs": "--ae-epochs", "weight_decay": "--ae-weight-decay",
                "milestones": "--ae-milestone", "batch_size": "--batch-size"}
    try:
        check_eta(eta)
        sad = OptimConfig(lr=lr, epochs=epochs, milestones=tuple(milestone) if milestone else (50,),
                          batch_size=batch_size, weight_decay=weight_decay)
    except ConfigError as e:
        raise ConfigError(f"{_flag_of(str(e), sad_flags)}{e}") from e
    try:
        ae = OptimConfig(lr=ae_lr, epochs=ae_epochs, milestones=tuple(ae_milestone) if ae_milestone else (),
                         batch_size=batch_size, weight_decay=ae_weight_decay)
    except ConfigError as e:
        raise ConfigError(f"{_flag_of(str(e), ae_flags)}{e}") from e
    return protocol, sad, (ae if ae_epochs > 0 else None)


#: The flag of each protocol field, for messages.
PROTOCOL_FLAGS = {
    "ratio_known_outlier": "--ratio-labeled", "ratio_pollution": "--pollution",
    "ratio_known_normal": "--labeled-normals", "n_labeled_anomalies": "--n-labeled-anomalies",
    "normal_classes": "--normal-class", "known_anomaly_classes": "--known-anomaly-class",
    "val_fraction": "--val-fraction", "n_known_outlier_classes": "--n-known-classes", "seed": "--seed",
}


def _flag_of(message: str, names: dict[str, str]) -> str:
    """Prefix a core config error with the CLI flag the user typed."""
    field = message.split(":", 1)[0].strip().removeprefix("protocol.")
    return f"{names[field]}: " if field in names else ""


#: The flag of each field of the core's TrainConfig and NetConfig that a flag sets, for messages.
TRAIN_FLAGS = {"eta": "--eta", "rep_dim": "--rep-dim"}


def _check_rep_dim(dataset: str, rep_dim: int | None, settings: dict[str, Any]) -> None:
    """Check ``--rep-dim`` before any data loads: its range, and — for a registry data set, whose sample
    shape is known without loading it — the network it builds (a LeNet needs a multiple of 16).

    Raises:
        ConfigError: one line naming ``--rep-dim`` (or the flag of another refused setting).
    """
    from deepsad.netconfig import MAX_REP_DIM

    if rep_dim is not None and not 1 <= rep_dim <= MAX_REP_DIM:
        raise ConfigError(f"--rep-dim: must be in [1, {MAX_REP_DIM}] (got {rep_dim})")
    if dataset.lower().endswith((".npz", ".csv")):
        return  # a file's shape is known once it is loaded: _train_config names the flag then
    from deepsad.data.sources import resolve_name
    from orchestration.spec.model import REGISTRY_SAMPLE_SHAPES

    try:
        name = resolve_name(dataset)
    except ConfigError:
        return  # an unknown name: loading the data says so, with the known names
    _train_config(name, REGISTRY_SAMPLE_SHAPES[name], rep_dim, settings)


def _train_config(dataset: str, sample_shape: tuple[int, ...], rep_dim: int | None, settings: dict[str, Any]) -> Any:
    """The run's :class:`deepsad.training.TrainConfig`: the data set's reference network (with ``--rep-dim``)
    and ``settings`` (its other fields, checked by :func:`_configs`).

    Raises:
        ConfigError: one line, naming the flag when the core refuses a flag's value.
    """
    from deepsad.netconfig import default_net_config
    from deepsad.training import TrainConfig

    try:
        return TrainConfig(net=default_net_config(dataset, sample_shape, rep_dim), **settings)
    except ConfigError as e:
        raise ConfigError(f"{_flag_of(str(e), TRAIN_FLAGS)}{e}") from e


def _load_and_train(
    dataset: str, data_dir: Path | None, protocol: Any, rep_dim: int | None, settings: dict[str, Any]
) -> tuple[Any, Any, Any]:
    """Load the data, split it, train with a progress display on stderr: ``(split, config, result)``."""
    from rich.console import Console

    from deepsad.data.sources import load_dataset, load_file
    from deepsad.data.splits import make_split
    from deepsad.training import train as run_training

    console = Console(stderr=True)
    path = Path(dataset)
    data = load_file(path) if path.suffix in (".npz", ".csv") else load_dataset(dataset, data_dir)
    split = make_split(data, protocol)
    cfg = _train_config(data.name, split.train.x.shape[1:], rep_dim, settings)
    counts, net = split.counts(), cfg.net
    console.print(
        f"[bold]{data.name}[/]: train {counts['n_train']} ({counts['n_labeled_anomaly']} labeled anomalies, "
        f"{counts['n_unlabeled_anomaly']} unlabeled), val {counts['n_val']}, test {counts['n_test']} · "
        f"net {net.name} rep_dim {net.rep_dim} · fingerprint {split.fingerprint[:12]}"
    )
    return split, cfg, _train_with_progress(console, split, cfg, run_training)


def _check_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"--device: not a torch device: {device!r}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")


def _train_with_progress(console: Any, split: Any, cfg: Any, run_training: Any) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[info]}"))
    with Progress(*columns, console=console, transient=False) as progress:
        tasks = {}
        if cfg.ae is not None:
            tasks["ae"] = progress.add_task("autoencoder", total=cfg.ae.epochs, info="")
        tasks["sad"] = progress.add_task("deep sad", total=cfg.sad.epochs, info="")

        def on_epoch(report: Any, _state: Any) -> None:
            info = f"loss {report.loss:.4g} · {report.samples_per_s:,.0f} samples/s"
            if report.val_auroc is not None:
                info += f" · val AUROC {report.val_auroc:.4f}"
            progress.update(tasks[report.phase], completed=report.epoch, info=info)

        return run_training(split, cfg, on_epoch=on_epoch)


def _split_record(dataset: str, data_dir: Path | None, split: Any) -> dict[str, Any]:
    """How to rebuild this run's split, for `deepsad export` / `score` to calibrate a threshold on its
    validation part: the data set (a file as an absolute path), the data directory and the protocol
    with its seed. The shape of ``selection.json``'s ``"split"`` (orchestration.deploy.registry.split_source);
    the export checks the rebuilt split's fingerprint against the model's."""
    from dataclasses import asdict

    source = dataset
    if dataset.lower().endswith((".npz", ".csv")):  # a file: where it is, as load_dataset finds it
        path = Path(dataset).expanduser()
        if not path.is_absolute() and not path.exists() and data_dir is not None:
            path = Path(data_dir).expanduser() / path
        source = str(path.resolve())
    protocol = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(split.protocol).items()}
    where = str(Path(data_dir).expanduser().resolve()) if data_dir is not None else None
    return {"dataset": source, "data_dir": where, "protocol": protocol, "from": "deepsad train run"}


def _save(out: Path, result: Any, split: Any, cfg: Any, split_record: dict[str, Any] | None = None) -> None:
    """Write the model bundle and metrics.json; the model directory appears whole or not at all.

    ``split_record`` (:func:`_split_record`) goes into the model's meta as ``"split"``: what threshold
    calibration needs to rebuild the validation split (orchestration.deploy.export.calibration_source)."""
    if split_record is not None:
        result.model.meta["split"] = split_record
    summary: dict[str, Any] = {
        "dataset": split.dataset,
        "fingerprint": split.fingerprint,
        "counts": split.counts(),
        "known_anomaly_classes": list(split.known_anomaly_classes),
        "config": cfg.to_dict(),
        "val_auroc": result.val_auroc,
        "val_ap": result.val_ap,
        "val_auroc_oracle": result.val_auroc_oracle,
        "val_ap_oracle": result.val_ap_oracle,
        "test_auroc": result.test_auroc,
        "test_ap": result.test_ap,
        "ae_seconds": result.ae_seconds,
        "sad_seconds": result.sad_seconds,
        "n_transferred": result.n_transferred,
        "history": [h.to_dict() for h in result.history],
    }
    result.model.meta["metrics"] = {k: summary[k] for k in ("val_auroc", "val_ap", "val_auroc_oracle", "val_ap_oracle",
                                                            "test_auroc", "test_ap")}
    result.model.save(out / "model")
    tmp = out / ".metrics.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, out / "metrics.json")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
