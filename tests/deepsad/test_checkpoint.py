"""Bundles (safetensors + strict JSON), the exact JSON encoding, and lossless training-state round trips."""

from __future__ import annotations

import json
import math
import os
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from deepsad.checkpoint import (
    META_FILE,
    TENSORS_FILE,
    from_json_value,
    generator_state_from_tensor,
    generator_state_to_tensor,
    load_bundle,
    numpy_generator_from_json,
    numpy_generator_state_from_json,
    numpy_generator_state_to_json,
    optimizer_state_from_bundle,
    optimizer_state_to_bundle,
    read_bundle_meta,
    save_bundle,
    scheduler_state_from_json,
    scheduler_state_to_json,
    sha256_file,
    to_json_value,
)
from deepsad.errors import CheckpointError, IntegrityError, StorageError


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(4, 3, generator=g),
        "b16": torch.randn(5, generator=g).to(torch.bfloat16),
        "i": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "mask": torch.tensor([True, False]),
        "scalar": torch.tensor(2.5),
        "empty": torch.empty(0, 3),
    }


# --------------------------------------------------------------------------------------------- bundles


def test_bundle_round_trip_is_exact(tmp_path: Path) -> None:
    tensors = _tensors()
    meta = {"epoch": 3, "c": [0.5, -1.0], "name": "x", "nested": {"ok": True, "none": None}}
    save_bundle(tmp_path / "ck", tensors, meta, kind="model")
    loaded, loaded_meta = load_bundle(tmp_path / "ck", kind="model")
    assert loaded_meta == meta
    assert set(loaded) == set(tensors)
    for k, t in tensors.items():
        assert loaded[k].dtype == t.dtype and loaded[k].shape == t.shape
        assert torch.equal(loaded[k], t)
    record = json.loads((tmp_path / "ck" / META_FILE).read_text())
    assert record["format"] == "deepsad-checkpoint" and record["format_version"] == 1
    assert record["kind"] == "model"
    assert record["tensors_sha256"] == sha256_file(tmp_path / "ck" / TENSORS_FILE)
    assert record["tensors_bytes"] == (tmp_path / "ck" / TENSORS_FILE).stat().st_size
    assert sorted(os.listdir(tmp_path)) == ["ck"]  # no temp dirs left behind
    assert read_bundle_meta(tmp_path / "ck")["meta"] == meta


def test_save_handles_shared_views_noncontiguous_and_grad(tmp_path: Path) -> None:
    base = torch.arange(12.0).reshape(3, 4)
    lin = torch.nn.Linear(4, 4)
    tensors = {
        "tied_a": lin.weight,  # requires grad
        "tied_b": lin.weight,  # the same storage twice, like tied embeddings
        "view": base[1:],
        "transposed": base.t(),
    }
    save_bundle(tmp_path / "ck", tensors, {}, kind="model")
    loaded, _ = load_bundle(tmp_path / "ck")
    assert torch.equal(loaded["tied_a"], lin.weight.detach()) and torch.equal(
        loaded["tied_b"], loaded["tied_a"]
    )
    assert torch.equal(loaded["view"], base[1:]) and torch.equal(loaded["transposed"], base.t())


def test_save_replaces_existing_bundle(tmp_path: Path) -> None:
    save_bundle(tmp_path / "ck", {"a": torch.zeros(2)}, {"v": 1}, kind="model")
    save_bundle(tmp_path / "ck", {"b": torch.ones(3)}, {"v": 2}, kind="model")
    tensors, meta = load_bundle(tmp_path / "ck")
    assert meta == {"v": 2} and set(tensors) == {"b"}
    assert sorted(os.listdir(tmp_path)) == ["ck"]


def test_save_refuses_to_replace_a_non_bundle(tmp_path: Path) -> None:
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="not a checkpoint bundle"):
        save_bundle(tmp_path / "precious", {}, {}, kind="model")
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"


def test_failed_save_leaves_old_bundle_and_no_temp_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_bundle(tmp_path / "ck", {"a": torch.zeros(2)}, {"v": 1}, kind="model")

    def half_write(tensors: object, filename: str) -> None:  # the disk fills up mid-write
        Path(filename).write_bytes(b"\x00" * 10)
        raise RuntimeError("No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", half_write)
    with pytest.raises(CheckpointError, match="No space left"):
        save_bundle(tmp_path / "ck", {"a": torch.ones(2)}, {"v": 2}, kind="model")
    monkeypatch.undo()
    assert load_bundle(tmp_path / "ck")[1] == {"v": 1}
    assert sorted(os.listdir(tmp_path)) == ["ck"]


def test_crash_between_renames_never_leaves_a_partial_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_bundle(tmp_path / "ck", {"a": torch.zeros(2)}, {"v": 1}, kind="model")
    real_rename, calls = os.rename, []

    def rename(src: Path, dst: Path) -> None:
        calls.append((src, dst))
        if len(calls) == 2:  # old moved away, new not yet in place
            raise OSError(5, "Input/output error")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(StorageError, match="Input/output error"):
        save_bundle(tmp_path / "ck", {"a": torch.ones(2)}, {"v": 2}, kind="model")
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_bundle(tmp_path / "ck")
    (old,) = [p for p in tmp_path.iterdir() if p.name.startswith(".ck.old-")]
    assert load_bundle(old)[1] == {"v": 1}  # the previous complete bundle survives


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        ({"loss": float("nan")}, r"meta\.loss: nan is not valid JSON; encode it with"),
        ({"h": [1.0, float("inf")]}, r"meta\.h\[1\]: inf"),
        ({"betas": (0.9, 0.999)}, r"meta\.betas: a tuple .*would come back as a list"),
        ({"s": {1: 2}}, r"meta\.s: key 1 is a int"),
        ({"t": torch.zeros(1)}, r"meta\.t: a Tensor"),
        ({"n": np.int64(3)}, r"meta\.n: a int64"),
    ],
)
def test_meta_must_be_strict_json(tmp_path: Path, meta: dict, match: str) -> None:
    with pytest.raises(CheckpointError, match=match):
        save_bundle(tmp_path / "ck", {}, meta, kind="model")
    assert not (tmp_path / "ck").exists()


def test_load_names_missing_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_bundle(tmp_path / "nope")
    save_bundle(tmp_path / "ck", {"a": torch.zeros(1)}, {}, kind="model")
    (tmp_path / "ck" / TENSORS_FILE).unlink()
    with pytest.raises(CheckpointError, match=r"missing tensors\.safetensors"):
        load_bundle(tmp_path / "ck")
    (tmp_path / "ck" / META_FILE).unlink()
    with pytest.raises(CheckpointError, match=r"missing meta\.json"):
        load_bundle(tmp_path / "ck")


def _edit_record(path: Path, **changes: object) -> None:
    record = json.loads((path / META_FILE).read_text())
    record.update(changes)
    (path / META_FILE).write_text(json.dumps(record))


def test_load_checks_format_version_and_kind(tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    save_bundle(ck, {"a": torch.zeros(1)}, {}, kind="train-state")
    with pytest.raises(CheckpointError, match="kind is 'train-state', expected 'model'"):
        load_bundle(ck, kind="model")
    _edit_record(ck, format_version=2)
    with pytest.raises(CheckpointError, match=r"unsupported format_version 2 .*newer"):
        load_bundle(ck)
    _edit_record(ck, format_version=1, format="something-else")
    with pytest.raises(CheckpointError, match="not a deepsad checkpoint"):
        load_bundle(ck)
    (ck / META_FILE).write_text('{"format": NaN}')
    with pytest.raises(CheckpointError, match="not valid strict JSON"):
        load_bundle(ck)


def test_load_detects_corruption(tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    save_bundle(ck, {"a": torch.arange(100.0)}, {}, kind="model")
    data = bytearray((ck / TENSORS_FILE).read_bytes())
    data[-1] ^= 0xFF  # same size, one bit pattern changed
    (ck / TENSORS_FILE).write_bytes(bytes(data))
    with pytest.raises(
        IntegrityError, match=r"tensors\.safetensors: sha256 mismatch: expected [0-9a-f]{64}, actual"
    ):
        load_bundle(ck)
    (ck / TENSORS_FILE).write_bytes(bytes(data[:-4]))
    with pytest.raises(IntegrityError, match=r"size mismatch: expected \d+ bytes .*actual \d+"):
        load_bundle(ck)


class _WritesMarker:
    """Unpickling this calls Path.write_text(marker): proof that something unpickled the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (Path.write_text, (self.marker, "unpickled!"))


def _plant(ck: Path, payload: bytes, *, fix_checksums: bool) -> None:
    (ck / TENSORS_FILE).write_bytes(payload)
    if fix_checksums:  # an attacker who also rewrites meta.json
        _edit_record(ck, tensors_sha256=sha256_file(ck / TENSORS_FILE), tensors_bytes=len(payload))


@pytest.mark.parametrize("fix_checksums", [False, True])
@pytest.mark.parametrize("payload_kind", ["raw-pickle", "torch-save"])
def test_load_never_unpickles(tmp_path: Path, payload_kind: str, fix_checksums: bool) -> None:
    marker = tmp_path / "marker.txt"
    ck = tmp_path / "ck"
    save_bundle(ck, {"a": torch.zeros(1)}, {}, kind="model")
    evil = _WritesMarker(marker)
    if payload_kind == "raw-pickle":
        payload = pickle.dumps(evil)
    else:
        torch.save({"weights": torch.zeros(2), "evil": evil}, tmp_path / "evil.pt")
        payload = (tmp_path / "evil.pt").read_bytes()
    _plant(ck, payload, fix_checksums=fix_checksums)
    with pytest.raises(CheckpointError) as info:
        load_bundle(ck)
    if fix_checksums:  # checksums match, so the safetensors parser itself must refuse the bytes
        assert type(info.value) is CheckpointError and "not a valid safetensors file" in str(info.value)
    else:
        assert isinstance(info.value, IntegrityError)
    assert not marker.exists()


def test_pickle_files_in_bundle_are_ignored(tmp_path: Path) -> None:
    marker = tmp_path / "marker.txt"
    ck = tmp_path / "ck"
    save_bundle(ck, {"a": torch.ones(2)}, {"k": 1}, kind="model")
    (ck / "model.pkl").write_bytes(pickle.dumps(_WritesMarker(marker)))
    torch.save({"a": torch.zeros(2)}, ck / "model.pt")
    tensors, meta = load_bundle(ck)
    assert set(tensors) == {"a"} and torch.equal(tensors["a"], torch.ones(2)) and meta == {"k": 1}
    assert not marker.exists()


def test_load_to_device_string_and_device_object(tmp_path: Path) -> None:
    save_bundle(tmp_path / "ck", {"a": torch.ones(2)}, {}, kind="model")
    assert load_bundle(tmp_path / "ck", device=torch.device("cpu"))[0]["a"].device.type == "cpu"


# ------------------------------------------------------------------------------------------ JSON codec


def test_json_value_round_trip_is_exact() -> None:
    arr = np.arange(6, dtype=np.uint64).reshape(2, 3) * np.uint64(2**62)
    value: dict[str, object] = {
        "t": (1, (2.5, "x"), []),
        "nan": float("nan"),
        "inf": [float("inf"), float("-inf"), -0.0],
        "big": 2**127 + 1,
        "neg_big": -(2**70),
        "counter": Counter({2: 1, 5: 3}),
        "int_keys": {0: "a", 1: {"b": None}},
        "dollar": {"$tuple": "not a tag"},
        "np_scalar": np.float32(0.1),
        "arr": arr,
    }
    encoded = to_json_value(value)
    text = json.dumps(encoded, allow_nan=False)  # strict
    decoded = from_json_value(json.loads(text))
    assert decoded["t"] == (1, (2.5, "x"), []) and isinstance(decoded["t"][1], tuple)
    assert math.isnan(decoded["nan"])
    assert decoded["inf"][:2] == [math.inf, -math.inf] and math.copysign(1, decoded["inf"][2]) == -1
    assert decoded["big"] == 2**127 + 1 and decoded["neg_big"] == -(2**70)
    assert isinstance(decoded["counter"], Counter) and decoded["counter"] == Counter({2: 1, 5: 3})
    assert decoded["int_keys"] == {0: "a", 1: {"b": None}}
    assert decoded["dollar"] == {"$tuple": "not a tag"}
    assert decoded["np_scalar"] == float(np.float32(0.1))
    assert decoded["arr"].dtype == np.uint64 and np.array_equal(decoded["arr"], arr)


def test_json_value_rejects_unsupported_types() -> None:
    with pytest.raises(CheckpointError, match=r"value\.f: cannot store a function"):
        to_json_value({"f": lambda: 1})
    with pytest.raises(CheckpointError, match="tensor cannot be a JSON value"):
        to_json_value({"t": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="unknown tag"):
        from_json_value({"$bogus": 1})


# ------------------------------------------------------------------------------------ training state


def _train(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 5, generator=g)
        opt.zero_grad()
        ((model(x) - 1.0) ** 2).mean().backward()
        opt.step()


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))


OPTIMIZERS = {
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2, betas=(0.8, 0.95), weight_decay=1e-4, amsgrad=True),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2),
    "adam-tensor-lr": lambda p: torch.optim.Adam(p, lr=torch.tensor(1e-2), foreach=False),
    "sgd": lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, nesterov=True),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_resume_is_bit_identical(tmp_path: Path, name: str) -> None:
    make = OPTIMIZERS[name]
    ref_model = _model()
    ref_opt = make(ref_model.parameters())
    _train(ref_model, ref_opt, 3, seed=1)
    _train(ref_model, ref_opt, 3, seed=2)

    model = _model()
    opt = make(model.parameters())
    _train(model, opt, 3, seed=1)
    opt_tensors, opt_meta = optimizer_state_to_bundle(opt.state_dict())
    model_tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    save_bundle(tmp_path / "state", {**model_tensors, **opt_tensors}, {"optim": opt_meta}, kind="train-state")
    original_sd = opt.state_dict()
    del model, opt

    tensors, meta = load_bundle(tmp_path / "state", kind="train-state")
    resumed = _model()
    resumed.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
    resumed_opt = make(resumed.parameters())
    restored_sd = optimizer_state_from_bundle(tensors, meta["optim"])
    # Tuples stay tuples, ints stay ints, None stays None; a tensor lr comes back as an equal tensor.
    assert restored_sd["param_groups"] == original_sd["param_groups"]
    for restored_group, group in zip(restored_sd["param_groups"], original_sd["param_groups"], strict=True):
        assert {k: type(v) for k, v in restored_group.items()} == {k: type(v) for k, v in group.items()}
    if name == "adam":
        assert restored_sd["param_groups"][0]["betas"] == (0.8, 0.95)
        assert isinstance(restored_sd["param_groups"][0]["betas"], tuple)
    resumed_opt.load_state_dict(restored_sd)
    _train(resumed, resumed_opt, 3, seed=2)

    for p_ref, p in zip(ref_model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p_ref, p)
    ref_state, state = ref_opt.state_dict()["state"], resumed_opt.state_dict()["state"]
    assert ref_state.keys() == state.keys()
    for k in ref_state:
        for field_name, v in ref_state[k].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(state[k][field_name])), field_name


def test_optimizer_state_keys_and_snapshot() -> None:
    model = _model()
    opt = torch.optim.Adam(model.parameters())
    _train(model, opt, 1, seed=0)
    tensors, meta = optimizer_state_to_bundle(opt.state_dict(), prefix="o.")
    assert "o.state.0.exp_avg" in tensors and "o.state.0.step" in tensors
    assert all(k.startswith("o.") for k in tensors)
    before = tensors["o.state.0.exp_avg"].clone()
    _train(model, opt, 1, seed=1)  # mutates the live buffers
    assert torch.equal(tensors["o.state.0.exp_avg"], before)
    json.dumps(meta, allow_nan=False)
    with pytest.raises(
        CheckpointError, match=r"optimizer state\.state\.0\.step: refers to tensor .*not in the bundle"
    ):
        optimizer_state_from_bundle({}, meta, prefix="o.")
    with pytest.raises(CheckpointError, match="missing 'param_groups'"):
        optimizer_state_from_bundle(tensors, {"state": meta["state"]}, prefix="o.")
    # The optimizer's meta may be merged into a larger meta dict: other keys are left alone.
    merged = {"epoch": 3, "history": [{"loss": 0.5}], **meta}
    restored = optimizer_state_from_bundle(tensors, merged, prefix="o.")
    assert set(restored) == {"state", "param_groups"}
    torch.optim.Adam(model.parameters()).load_state_dict(restored)


def _lrs_after(
    sched: torch.optim.lr_scheduler.LRScheduler, opt: torch.optim.Optimizer, n: int
) -> list[float]:
    out = []
    for _ in range(n):
        opt.step()
        sched.step()
        out.append(float(sched.get_last_lr()[0]))
    return out


def test_multistep_scheduler_resume_gives_identical_lrs() -> None:
    def make() -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.MultiStepLR]:
        opt = torch.optim.Adam(torch.nn.Linear(2, 1).parameters(), lr=0.1)
        return opt, torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[2, 4, 4, 7], gamma=0.3)

    opt, sched = make()
    uninterrupted = _lrs_after(sched, opt, 10)

    opt, sched = make()
    first = _lrs_after(sched, opt, 3)
    encoded = json.loads(json.dumps(scheduler_state_to_json(sched.state_dict()), allow_nan=False))
    opt_tensors, opt_meta = optimizer_state_to_bundle(opt.state_dict())
    opt2, sched2 = make()
    opt2.load_state_dict(optimizer_state_from_bundle(opt_tensors, opt_meta))
    restored = scheduler_state_from_json(encoded)
    assert isinstance(restored["milestones"], Counter) and restored["milestones"] == Counter(
        {2: 1, 4: 2, 7: 1}
    )
    sched2.load_state_dict(restored)
    assert first + _lrs_after(sched2, opt2, 7) == uninterrupted


def test_plateau_scheduler_state_with_inf_round_trips() -> None:
    opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
    sd = sched.state_dict()
    encoded = json.loads(json.dumps(scheduler_state_to_json(sd), allow_nan=False))
    assert scheduler_state_from_json(encoded) == sd


def test_torch_generator_state_round_trip(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(123)
    torch.randn(7, generator=g)
    save_bundle(tmp_path / "rng", {"rng": generator_state_to_tensor(g)}, {}, kind="rng")
    expected = torch.randn(5, generator=g)
    restored = generator_state_from_tensor(load_bundle(tmp_path / "rng")[0]["rng"])
    assert torch.equal(torch.randn(5, generator=restored), expected)
    with pytest.raises(CheckpointError, match="1-D uint8"):
        generator_state_from_tensor(torch.zeros(3))
    with pytest.raises(CheckpointError, match="not a valid state"):
        generator_state_from_tensor(torch.zeros(3, dtype=torch.uint8))


@pytest.mark.parametrize(
    "bit_generator", [np.random.PCG64, np.random.MT19937, np.random.Philox, np.random.SFC64]
)
def test_numpy_generator_state_round_trip(bit_generator: type[np.random.BitGenerator]) -> None:
    rng = np.random.Generator(bit_generator(2024))
    rng.random(3)
    rng.integers(0, 10, size=1, dtype=np.uint32)  # leaves a buffered uint32 in PCG64's state
    text = json.dumps(numpy_generator_state_to_json(rng), allow_nan=False)
    expected = rng.random(4)
    restored = numpy_generator_from_json(json.loads(text))
    assert np.array_equal(restored.random(4), expected)
    other = np.random.Generator(bit_generator())
    other.bit_generator.state = numpy_generator_state_from_json(json.loads(text))
    other.random(4)
    assert other.bit_generator.state["bit_generator"] == bit_generator.__name__


def test_pcg64_big_ints_are_strings_in_json() -> None:
    encoded = numpy_generator_state_to_json(np.random.default_rng(0))
    assert isinstance(encoded["state"]["state"], dict) and isinstance(encoded["state"]["state"]["$int"], str)
    encoded["bit_generator"] = "os.system"
    with pytest.raises(CheckpointError, match=r"unknown bit generator 'os\.system'"):
        numpy_generator_from_json(encoded)


def test_hostile_meta_json_is_one_checkpoint_error(tmp_path: Path) -> None:
    """Issue 12, item 4: a deeply nested meta.json was a RecursionError traceback (in export and score)."""
    ck = tmp_path / "ck"
    save_bundle(ck, {"a": torch.zeros(1)}, {"note": "x"}, kind="model")
    record = json.loads((ck / META_FILE).read_text())
    deep = json.dumps(record)[:-1] + ', "extra": ' + "[" * 50_000 + "]" * 50_000 + "}"
    for text, match in (
        (deep, "nested deeper than 64 levels"),
        (json.dumps(record)[:-1] + ', "format": "x"}', "duplicate key 'format'"),
        (json.dumps({**record, "tensors_bytes": 0})[:-1] + ', "n": 1e999}', "out of range"),
    ):
        (ck / META_FILE).write_text(text)
        with pytest.raises(CheckpointError, match=match) as e:
            load_bundle(ck)
        assert "\n" not in str(e.value) and str(ck / META_FILE) in str(e.value)
