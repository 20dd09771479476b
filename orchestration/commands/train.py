"""``deepsad train``: one Deep SAD training run on this machine, with a progress display."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from deepsad.errors import ConfigError, StorageError


def check_writable_dir(path: Path, *, flag: str = "--out") -> None:
    """Make sure ``path`` can be created and written, before any work starts.

    Raises:
        StorageError: naming the flag and the path.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
    except OSError as e:
        raise StorageError(f"{flag} {path}: not a writable directory ({e.strerror or e})") from e


def train(
    dataset: Annotated[str, typer.Option(help="Data set name (see `deepsad data check`) or a .npz/.csv file.")],
    out: Annotated[Path, typer.Option(help="Output directory (model bundle + metrics.json).")],
    data_dir: Annotated[Path | None, typer.Option(help="Where the data files are.")] = None,
    normal_class: Annotated[list[int] | None, typer.Option(help="Normal class (repeatable).")] = None,
    known_anomaly_class: Annotated[
        list[int] | None, typer.Option(help="Known anomaly class (repeatable); default: drawn with the seed.")
    ] = None,
    n_known_classes: Annotated[int, typer.Option(help="Number of known anomaly classes to draw.")] = 1,
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
    bf16: Annotated[bool, typer.Option(help="bf16 autocast (GPU).")] = False,
    reference_compat: Annotated[
        bool, typer.Option(help="Reproduce the reference code's (empty) encoder weight transfer.")
    ] = False,
    force: Annotated[bool, typer.Option(help="Overwrite an existing model in --out.")] = False,
) -> None:
    """Train one Deep SAD model and report validation and test AUROC."""
    from deepsad.data.splits import Protocol
    from deepsad.networks import NetConfig  # noqa: F401  (validated through default_net_config)
    from deepsad.training import OptimConfig, TrainConfig

    milestones = tuple(milestone) if milestone else (50,)
    ae_milestones = tuple(ae_milestone) if ae_milestone else ()
    try:
        protocol = Protocol(
            normal_classes=tuple(normal_class or [0]),
            known_anomaly_classes=tuple(known_anomaly_class) if known_anomaly_class else None,
            n_known_outlier_classes=n_known_classes,
            n_labeled_anomalies=n_labeled_anomalies,
            ratio_known_outlier=ratio_labeled,
            ratio_pollution=pollution,
            ratio_known_normal=labeled_normals,
            val_fraction=val_fraction,
            seed=seed,
        )
        sad = OptimConfig(lr=lr, epochs=epochs, milestones=milestones, batch_size=batch_size, weight_decay=weight_decay)
        ae = (
            OptimConfig(lr=ae_lr, epochs=ae_epochs, milestones=ae_milestones, batch_size=batch_size,
                        weight_decay=ae_weight_decay)
            if ae_epochs > 0 else None
        )
    except ConfigError as e:
        raise ConfigError(f"{_flag_of(str(e))}{e}") from e
    if (out / "model").exists() and not force:
        raise StorageError(f"--out {out}: already holds a model (use --force to overwrite)")
    check_writable_dir(out)
    _check_device(device)

    from rich.console import Console

    from deepsad.data.sources import load_dataset, load_file
    from deepsad.data.splits import make_split
    from deepsad.networks import default_net_config
    from deepsad.training import train as run_training

    console = Console(stderr=True)
    path = Path(dataset)
    data = load_file(path) if path.suffix in (".npz", ".csv") else load_dataset(dataset, data_dir)
    split = make_split(data, protocol)
    net = default_net_config(data.name, split.train.x.shape[1:], rep_dim)
    cfg = TrainConfig(net=net, eta=eta, sad=sad, ae=ae, seed=seed, device=device, bf16=bf16,
                      reference_compat=reference_compat)
    counts = split.counts()
    console.print(
        f"[bold]{data.name}[/]: train {counts['n_train']} ({counts['n_labeled_anomaly']} labeled anomalies, "
        f"{counts['n_unlabeled_anomaly']} unlabeled), val {counts['n_val']}, test {counts['n_test']} · "
        f"net {net.name} rep_dim {net.rep_dim} · fingerprint {split.fingerprint[:12]}"
    )
    result = _train_with_progress(console, split, cfg, run_training)
    _save(out, result, split, cfg)
    val = "n/a (no anomalies in the validation split)" if result.val_auroc is None else f"{result.val_auroc:.4f}"
    typer.echo(f"val AUROC {val} · test AUROC {result.test_auroc:.4f} · test AP {result.test_ap:.4f}")
    typer.echo(f"model written to {out / 'model'}")


def _flag_of(message: str) -> str:
    """Prefix a core config error with the CLI flag the user typed."""
    names = {
        "ratio_known_outlier": "--ratio-labeled", "ratio_pollution": "--pollution",
        "ratio_known_normal": "--labeled-normals", "n_labeled_anomalies": "--n-labeled-anomalies",
        "normal_classes": "--normal-class", "known_anomaly_classes": "--known-anomaly-class",
        "val_fraction": "--val-fraction", "eta": "--eta", "lr": "--lr / --ae-lr",
        "epochs": "--epochs / --ae-epochs", "batch_size": "--batch-size", "milestones": "--milestone / --ae-milestone",
        "weight_decay": "--weight-decay / --ae-weight-decay", "n_known_outlier_classes": "--n-known-classes",
    }
    field = message.split(":", 1)[0].strip().removeprefix("protocol.")
    return f"{names[field]}: " if field in names else ""


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


def _save(out: Path, result: Any, split: Any, cfg: Any) -> None:
    """Write the model bundle and metrics.json; the model directory appears whole or not at all."""
    summary: dict[str, Any] = {
        "dataset": split.dataset,
        "fingerprint": split.fingerprint,
        "counts": split.counts(),
        "known_anomaly_classes": list(split.known_anomaly_classes),
        "config": cfg.to_dict(),
        "val_auroc": result.val_auroc,
        "val_ap": result.val_ap,
        "test_auroc": result.test_auroc,
        "test_ap": result.test_ap,
        "ae_seconds": result.ae_seconds,
        "sad_seconds": result.sad_seconds,
        "n_transferred": result.n_transferred,
        "history": [h.to_dict() for h in result.history],
    }
    result.model.meta["metrics"] = {k: summary[k] for k in ("val_auroc", "val_ap", "test_auroc", "test_ap")}
    if (out / "model").exists():
        shutil.rmtree(out / "model")
    result.model.save(out / "model")
    tmp = out / ".metrics.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, out / "metrics.json")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
