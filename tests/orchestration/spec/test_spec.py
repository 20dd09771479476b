"""The sweep file model: every bad file gives exact one-line messages, good files load."""

from __future__ import annotations

import subprocess
import sys
import typing
from dataclasses import fields
from pathlib import Path

import pytest

from deepsad.errors import ConfigError
from orchestration.spec.load import load_spec, parse_spec
from orchestration.spec.model import (
    REGISTRY_SAMPLE_SHAPES,
    SPACE_KEYS,
    Choice,
    LogUniform,
    NetName,
    PretrainSpec,
    ProtocolSpec,
    SpaceSpec,
    TrainSpec,
)

REPO = Path(__file__).resolve().parents[3]
BAD = Path(__file__).parents[1] / "bad_specs"

GOOD = """
name: good
data: {dataset: digits}
protocol: {normal_classes: [0], known_anomaly_classes: [1], n_labeled_anomalies: 10, ratio_pollution: 0.05}
search:
  num_trials: 2
  space:
    eta: {distribution: log_uniform, low: 0.1, high: 10}
"""


def _expected(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [
        ln.removeprefix("# expect: ").replace("{file}", str(path))
        for ln in lines
        if ln.startswith("# expect: ")
    ]


@pytest.mark.parametrize("path", sorted(BAD.glob("*.yaml")), ids=lambda p: p.stem)
def test_bad_spec_gives_exact_lines(path: Path) -> None:
    expected = _expected(path)
    assert expected, f"{path.name} has no '# expect:' line"
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    assert str(info.value).splitlines() == expected


def test_file_not_found_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"^.*/nope\.yaml: file not found$"):
        load_spec(missing)
    with pytest.raises(ConfigError, match="is a directory"):
        load_spec(tmp_path)


def test_every_problem_is_one_line_prefixed_with_the_file() -> None:
    path = BAD / "many_problems.yaml"
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    lines = str(info.value).splitlines()
    assert len(lines) >= 5
    assert all(ln.startswith(f"{path}: ") for ln in lines)
    assert not any("pydantic" in ln or "Input should" in ln for ln in lines)


def test_good_spec_defaults_and_normalisation() -> None:
    spec = parse_spec(GOOD, "good.yaml", base_dir="/somewhere")
    assert spec.source == "good.yaml" and spec.base_dir == "/somewhere"
    assert spec.seeds == (0,) and spec.search.algorithm == "tpe" and spec.net is None
    assert spec.pretrain == PretrainSpec() and spec.train.device == "auto"
    assert spec.storage is None and spec.search.objective.metric == "val_auroc"
    assert spec.search.space.items() == [("eta", LogUniform(distribution="log_uniform", low=0.1, high=10.0))]


def test_aliases_and_yaml11_floats() -> None:
    text = GOOD.replace("dataset: digits", "dataset: Fashion-MNIST").replace(
        "protocol: {", "pretrain: null\ntrain: {lr: 1e-4, weight_decay: 5e-7}\nprotocol: {"
    )
    spec = parse_spec(text)
    assert spec.data.dataset == "fmnist"
    # PyYAML reads `1e-4` (no dot) as a string; the model still takes it as the number meant.
    assert spec.train.lr == 1e-4 and spec.train.weight_decay == 5e-7
    assert spec.pretrain is None


def test_data_file_is_not_checked_against_the_registry() -> None:
    spec = parse_spec(GOOD.replace("dataset: digits", "dataset: my/data.NPZ"))
    assert spec.data.dataset == "my/data.NPZ"


def test_defaults_match_the_core() -> None:
    from deepsad.data.splits import Protocol
    from deepsad.networks import default_net_config
    from deepsad.training import OptimConfig, TrainConfig

    core = TrainConfig(net=default_net_config("digits", (64,)))
    assert core.ae is not None
    for f in fields(OptimConfig):
        assert getattr(TrainSpec(), f.name) == getattr(core.sad, f.name), f.name
        assert getattr(PretrainSpec(), f.name) == getattr(core.ae, f.name), f.name
    assert (core.sad.milestones, core.ae.milestones, core.ae.weight_decay) == ((50,), (), 0.5e-3)
    proto = ProtocolSpec(normal_classes=(0,))
    for f in fields(Protocol):
        if f.name != "seed":
            assert getattr(proto, f.name) == getattr(Protocol(), f.name), f.name
    assert set(ProtocolSpec.model_fields) == {f.name for f in fields(Protocol)} - {"seed"}


def test_closed_sets_match_the_core() -> None:
    from deepsad.data.sources import DATASETS
    from deepsad.networks import _BUILDERS

    assert set(typing.get_args(NetName)) == set(_BUILDERS)
    assert set(REGISTRY_SAMPLE_SHAPES) == set(DATASETS)
    assert tuple(SpaceSpec.model_fields) == SPACE_KEYS


@pytest.mark.parametrize("name", ["digits", "breast_cancer"])
def test_registry_shapes_of_builtin_sets(name: str) -> None:
    from deepsad.data.sources import load_dataset

    assert load_dataset(name, None).sample_shape == REGISTRY_SAMPLE_SHAPES[name]


def test_grid_of_choices_and_int_uniform_rep_dim_are_accepted() -> None:
    text = GOOD.replace(
        "  num_trials: 2\n  space:\n    eta: {distribution: log_uniform, low: 0.1, high: 10}",
        "  algorithm: grid\n  space:\n    eta: {distribution: choice, values: [0.5, 1, 2]}\n"
        "    rep_dim: {distribution: choice, values: [8, 16]}",
    )
    spec = parse_spec(text)
    assert spec.search.space.eta == Choice(distribution="choice", values=(0.5, 1, 2))
    spec = parse_spec(GOOD.replace("eta: {distribution: log_uniform, low: 0.1, high: 10}",
                                   "rep_dim: {distribution: int_uniform, low: 4, high: 12}"))  # fmt: skip
    assert spec.search.space.rep_dim is not None


@pytest.mark.parametrize("name", ["quickstart", "mnist_search"])
def test_shipped_sweeps_load(name: str) -> None:
    spec = load_spec(REPO / "sweeps" / f"{name}.yaml")
    assert spec.name == name


def test_import_is_light() -> None:
    """The CLI imports these modules while building `--help`: no torch, ray, optuna or sklearn."""
    code = (
        "import sys, orchestration.spec.model, orchestration.plan.cells;"
        "print(sorted(m for m in ('torch', 'ray', 'optuna', 'sklearn', 'pyarrow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
