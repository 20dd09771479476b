"""``resources: auto`` (orchestration.plan.resources): sized from the machine or Ray cluster a sweep runs on."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from deepsad.errors import ConfigError
from orchestration.plan.cells import enumerate_cells
from orchestration.plan.preflight import check_resources
from orchestration.plan.resources import resolve
from orchestration.spec.load import load_spec, parse_spec
from orchestration.spec.model import SweepSpec
from tests.conftest import REPO
from tests.orchestration.sweeps_helpers import cli, rows, small_spec, write_spec

AUTO = {"cpus_per_trial": "auto", "gpus_per_trial": "auto", "max_concurrent_trials": "auto", "bundle_size": "auto"}
MEMBER = 55_000_000  # an MNIST LeNet member (deepsad.sizing.member_bytes)
LAPTOP = {"CPU": 2.0}
H200 = {"CPU": 16.0, "GPU": 1.0, "accelerator_type:H200": 1.0}
CLUSTER = {"CPU": 64.0, "GPU": 4.0, "accelerator_type:A100-80G": 4.0}


def spec_of(**overrides: Any) -> SweepSpec:
    raw = small_spec("auto", **{"train__device": "auto", **overrides})
    raw["resources"] = {**raw["resources"], **AUTO, **raw["resources"].get("override", {})}
    raw["resources"].pop("override", None)
    return parse_spec(yaml.safe_dump(raw), "auto.yaml", base_dir=REPO)


def test_a_cpu_laptop_gets_cpu_bundles_that_use_every_core() -> None:
    res = resolve(spec_of(), LAPTOP, None, member_bytes=MEMBER, n_bundled=450, label="this machine")
    r = res.resources
    assert (r.gpus_per_trial, r.bundle_size, r.cpus_per_trial, r.max_concurrent_trials) == (0.0, 8, 2.0, 1)
    assert res.where == "this machine: 2 CPUs, no GPU"
    assert res.reasons["gpus_per_trial"] == "this machine has no GPU"
    assert "CPU worker threads" in res.reasons["bundle_size"]
    assert res.line() == "resources auto (this machine: 2 CPUs, no GPU): no GPU and 2 CPUs per bundle of 8, 1 at once"


def test_one_gpu_machine_gets_one_bundle_as_large_as_its_memory_allows() -> None:
    res = resolve(spec_of(), H200, 141.0, member_bytes=MEMBER, n_bundled=450)
    r = res.resources
    assert (r.gpus_per_trial, r.bundle_size, r.cpus_per_trial, r.max_concurrent_trials) == (1.0, 450, 16.0, 1)
    assert res.reasons["bundle_size"].endswith("the sweep bundles 450 trials")
    assert res.where == "the Ray cluster: 16 CPUs, 1 GPU (H200, 141 GB)"
    assert "55 MB per member" in res.reasons["bundle_size"]
    # without the spreading cap (unknown trial count) the memory decides, at most 512
    assert resolve(spec_of(), H200, 141.0, member_bytes=MEMBER).resources.bundle_size == 512
    assert resolve(spec_of(), H200, 16.0, member_bytes=MEMBER).resources.bundle_size == int(16e9 * 0.7 // MEMBER)


def test_a_multi_gpu_cluster_spreads_the_bundles_over_every_gpu() -> None:
    res = resolve(spec_of(), CLUSTER, 80.0, member_bytes=MEMBER, n_bundled=450)
    r = res.resources
    assert (r.gpus_per_trial, r.bundle_size, r.cpus_per_trial, r.max_concurrent_trials) == (1.0, 113, 16.0, 4)
    assert "450 bundled trials over 4 GPU slots: at most 113 each" in res.reasons["bundle_size"]
    assert res.reasons["max_concurrent_trials"] == "4 fit in the Ray cluster's 4 GPUs"


@pytest.mark.parametrize("overrides, reason", [
    ({"search__algorithm": "tpe", "search__num_trials": 4,
      "search__space": {"eta": {"distribution": "log_uniform", "low": 0.1, "high": 10}}}, "TPE suggests"),
    ({"search__scheduler": {"type": "asha", "grace_period": 2, "reduction_factor": 2}}, "ASHA stops trials one by one"),
])  # fmt: skip
def test_tpe_and_asha_resolve_to_single_trials_and_say_why(overrides: dict[str, Any], reason: str) -> None:
    spec = spec_of(**overrides)  # bundle_size: auto is accepted there (it resolves to 1)
    on_gpu = resolve(spec, H200, 141.0, member_bytes=MEMBER)
    assert on_gpu.resources.bundle_size == 1 and reason in on_gpu.reasons["bundle_size"]
    # single trials share the GPU: one per CPU, 16 at once
    assert (on_gpu.resources.gpus_per_trial, on_gpu.resources.cpus_per_trial,
            on_gpu.resources.max_concurrent_trials) == (0.0625, 1.0, 16)
    on_cpu = resolve(spec, LAPTOP, None).resources
    assert (on_cpu.bundle_size, on_cpu.cpus_per_trial, on_cpu.max_concurrent_trials) == (1, 1.0, 2)


def test_explicit_values_are_kept_and_auto_fields_fit_them() -> None:
    explicit = spec_of(resources__override={"cpus_per_trial": 3, "gpus_per_trial": 0.5, "max_concurrent_trials": 5,
                                            "bundle_size": 4})  # fmt: skip
    res = resolve(explicit, CLUSTER, 80.0, member_bytes=MEMBER, n_bundled=450)
    assert res.resources == explicit.resources and res.reasons == {}
    mixed = resolve(spec_of(resources__override={"gpus_per_trial": 0.5}), CLUSTER, 80.0, member_bytes=MEMBER,
                    n_bundled=450).resources
    assert (mixed.gpus_per_trial, mixed.cpus_per_trial, mixed.max_concurrent_trials) == (0.5, 8.0, 8)


def test_a_cpu_device_or_a_cuda_device_without_gpus() -> None:
    on_cpu = resolve(spec_of(train__device="cpu"), H200, 141.0, member_bytes=MEMBER)
    assert on_cpu.resources.gpus_per_trial == 0 and on_cpu.reasons["gpus_per_trial"] == "train.device is cpu"
    assert on_cpu.resources.bundle_size == 8 and on_cpu.resources.cpus_per_trial == 8
    cuda = spec_of(train__device="cuda")
    with pytest.raises(ConfigError, match=r"resources.gpus_per_trial: a trial needs 1 GPU but 0 are available"):
        check_resources(cuda, 2, 0)
    check_resources(spec_of(), 2, 0)  # auto fits what there is


def test_auto_is_refused_for_data_parallel_trials_and_numbers_keep_their_ranges(tmp_path: Path) -> None:
    raw = small_spec("dp", resources__workers_per_trial=2, resources__cpus_per_trial="auto")
    with pytest.raises(ConfigError, match=r"resources.cpus_per_trial: auto sizes single-process trials"):
        parse_spec(yaml.safe_dump(raw), "dp.yaml", base_dir=REPO)
    bad = small_spec("bad", resources__cpus_per_trial=0, resources__max_concurrent_trials="many")
    with pytest.raises(ConfigError) as e:
        parse_spec(yaml.safe_dump(bad), "bad.yaml", base_dir=REPO)
    assert "resources.cpus_per_trial: must be > 0 (got 0)" in str(e.value)
    assert "resources.max_concurrent_trials: must be an integer" in str(e.value)


def test_trial_keys_do_not_depend_on_resources() -> None:
    auto = enumerate_cells(spec_of())
    fixed = enumerate_cells(spec_of(resources__override={"cpus_per_trial": 1, "gpus_per_trial": 0,
                                                         "max_concurrent_trials": 2, "bundle_size": 1}))
    assert [c.key for c in auto] == [c.key for c in fixed]


@pytest.mark.parametrize("path", sorted((REPO / "sweeps").glob("paper_*.yaml")), ids=lambda p: p.stem)
def test_the_paper_sweeps_size_themselves(path: Path) -> None:
    spec = load_spec(path, base_dir=str(REPO))
    assert spec.resources.has_auto() and "edit" not in path.read_text(encoding="utf-8").lower()
    assert resolve(spec, CLUSTER, 80.0, member_bytes=MEMBER).resources.gpus_per_trial == 1


def test_dry_run_of_a_paper_sweep_says_what_auto_chose_here(shared_data: Path, tmp_path: Path) -> None:
    text = (REPO / "sweeps" / "paper_mnist_gamma_l.yaml").read_text(encoding="utf-8")
    path = tmp_path / "paper_mnist_gamma_l.yaml"
    path.write_text(text.replace("data_dir: ../shared/data", f"data_dir: {shared_data}"), encoding="utf-8")
    run = subprocess.run([str(REPO / ".venv" / "bin" / "deepsad"), "sweep", "submit", str(path), "--dry-run",
                          "--storage", str(tmp_path / "s")], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})  # no GPU, whatever the machine
    assert run.returncode == 0, run.stdout + run.stderr
    cpus = os.cpu_count() or 1
    k = min(cpus, 8)
    assert (f"resources auto (this machine: {cpus} CPU{'s' if cpus > 1 else ''}, no GPU): no GPU and "
            f"{k} CPU{'s' if k > 1 else ''} per bundle of 8, {max(1, cpus // k)} at once") in run.stdout
    assert "    gpus_per_trial: 0 — this machine has no GPU" in run.stdout
    assert "    bundle_size: 8 — 8 members on CPU worker threads" in run.stdout
    assert "the driver resolves auto again from the resources of the Ray it runs on" in run.stdout
    assert "Traceback" not in run.stderr


@pytest.mark.integration
def test_a_sweep_with_auto_resources_runs_on_the_local_ray_and_records_what_auto_chose(tmp_path: Path) -> None:
    raw = small_spec("autores", seeds=[0, 1], train__epochs=2, train__milestones=[1], pretrain__epochs=1,
                     pretrain__milestones=[])
    raw["resources"].update(AUTO)
    run = cli(["sweep", "submit", str(write_spec(tmp_path, raw)), "--storage", str(tmp_path / "s")], cwd=tmp_path,
              env={"CUDA_VISIBLE_DEVICES": ""})
    assert run.returncode == 0, run.stdout + run.stderr
    assert "resources auto (the local Ray:" in run.stdout
    recorded = json.loads((tmp_path / "s" / "autores" / "resources.json").read_text())
    assert recorded["resources"]["bundle_size"] == 8 and recorded["resources"]["gpus_per_trial"] == 0
    assert "bundle_size" in recorded["reasons"] and recorded["where"].startswith("the local Ray:")
    got = rows(tmp_path / "s", "autores")
    assert len(got) == 4 and {r["status"] for r in got} == {"finished"}
    assert {r["bundle_size"] for r in got} == {4}  # the sweep's 4 trials in one bundle (K = 8)


def test_tpe_bundles_a_batch_of_configurations_and_leaves_the_study_rounds_to_learn() -> None:
    tpe = {"search__algorithm": "tpe", "search__space": {"eta": {"distribution": "log_uniform", "low": 0.1,
                                                                  "high": 10}}}  # fmt: skip
    # 30 configurations × 3 seeds on one H200: memory would take 90, TPE_ROUNDS = 4 rounds leave 8 per batch
    res = resolve(spec_of(**tpe, search__num_trials=30, seeds=[0, 1, 2]), H200, 141.0, member_bytes=MEMBER,
                  n_bundled=90)  # fmt: skip
    assert (res.resources.bundle_size, res.resources.gpus_per_trial) == (24, 1.0)
    assert res.reasons["bundle_size"].endswith("TPE learns between batches: 8 configurations × 3 seeds per bundle "
                                               "leaves 4 rounds of batches")  # fmt: skip
    # on 4 GPUs the batches in flight together count as one round: 2 configurations per bundle
    four = resolve(spec_of(**tpe, search__num_trials=30, seeds=[0, 1, 2]), CLUSTER, 80.0, member_bytes=MEMBER,
                   n_bundled=90).resources  # fmt: skip
    assert (four.bundle_size, four.max_concurrent_trials) == (6, 4)
    # a laptop: 8 members on CPU threads, unless the study is small (12 configurations: 3 per batch)
    assert resolve(spec_of(**tpe, search__num_trials=100), LAPTOP, None).resources.bundle_size == 8
    assert resolve(spec_of(**tpe, search__num_trials=12), LAPTOP, None).resources.bundle_size == 3
