"""``deepsad checkpoint pull``, ``deepsad export`` and ``deepsad score`` through the command line."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from deepsad.data.idx import read_idx
from deepsad.model import DeepSADModel
from orchestration.cli.app import main
from tests.orchestration.deploy.test_export import (
    DIGITS_PROTOCOL,
    MNIST_PROTOCOL,
    mnist_slice,
    train_pulled_dir,
)
from tests.orchestration.deploy.test_registry import LUCKY, STEADY, make_store

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*:DeprecationWarning")


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(argv)
    out, err = capsys.readouterr()
    return int(e.value.code or 0), out, err


def scores_of(csv_text: str) -> tuple[np.ndarray, np.ndarray]:
    table = pcsv.read_csv(io.BytesIO(csv_text.encode()))
    assert table.column_names == ["index", "score", "anomaly"]
    assert table.column("index").to_pylist() == list(range(table.num_rows))
    return table.column("score").to_numpy(), table.column("anomaly").to_numpy(zero_copy_only=False)


def write_idx(path: Path, x: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, x.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in x.shape)
    data = header + np.ascontiguousarray(x, dtype=np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> dict[str, Path]:
    """Pulled dirs ("digits": an MLP, "mnist": a LeNet) and their exports ("digits-onnx", ...)."""
    from orchestration.deploy.export import export_model

    root = tmp_path_factory.mktemp("exports")
    out = {"digits": root / "digits", "mnist": root / "mnist"}
    train_pulled_dir(out["digits"], "digits", DIGITS_PROTOCOL)
    train_pulled_dir(out["mnist"], str(mnist_slice(shared_data, root)), MNIST_PROTOCOL)
    for which in ("digits", "mnist"):
        for fmt in ("torchscript", "onnx"):
            out[f"{which}-{fmt}"] = export_model(out[which], root / f"{which}-{fmt}", fmt=fmt).out
    return out


def _threshold(model: Path) -> float:
    return float(json.loads((model / "export.json").read_text())["threshold"])


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_score_tabular_inputs(
    fmt: str, exports: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sklearn.datasets import load_digits

    x = load_digits().data[:50]
    want = DeepSADModel.load(exports["digits"]).score_raw(x)
    names = [f"px{i}" for i in range(64)]
    csv_path = tmp_path / "rows.csv"
    pcsv.write_csv(
        pa.table({**{n: x[:, i] for i, n in enumerate(names)}, "Label": np.arange(50) % 10}), csv_path
    )
    plain = tmp_path / "plain.csv"
    np.savetxt(plain, x, delimiter=",", fmt="%g")  # no header, no label
    parquet = tmp_path / "rows.parquet"
    pq.write_table(
        pa.table({"class": np.zeros(50, np.int64), **{n: x[:, i] for i, n in enumerate(names)}}), parquet
    )
    npz = tmp_path / "rows.npz"
    np.savez(npz, X=x.astype(np.float32))
    model = exports[f"digits-{fmt}"]
    cut = _threshold(model)
    for path in (csv_path, plain, parquet, npz):
        rc, out, err = run(["score", "--model", str(model), str(path)], capsys)
        assert rc == 0, err
        got, flags = scores_of(out)
        tol = 1e-5 if path != npz else 1e-4  # float32 features in the npz
        np.testing.assert_allclose(got, want, rtol=tol, atol=1e-7)
        np.testing.assert_array_equal(flags, got > cut)
        assert "scored 50 inputs" in err and f"{cut:.6g}" in err


def test_score_image_inputs_and_outputs(
    exports: dict[str, Path], shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = read_idx(shared_data / "mnist" / "t10k-images-idx3-ubyte.gz")[-64:]
    want = DeepSADModel.load(exports["mnist"]).score_raw(images[:, None])
    raw_idx, gz_idx, npz = (
        tmp_path / "images-idx3-ubyte",
        tmp_path / "images-idx3-ubyte.gz",
        tmp_path / "x.npz",
    )
    write_idx(raw_idx, images)
    write_idx(gz_idx, images)
    np.savez(npz, X=images[:, None])
    for fmt in ("torchscript", "onnx"):
        model = exports[f"mnist-{fmt}"]
        for path in (raw_idx, gz_idx, npz):
            rc, out, err = run(["score", "--model", str(model), str(path), "--batch-size", "10"], capsys)
            assert rc == 0, err
            got, flags = scores_of(out)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
            np.testing.assert_array_equal(flags, got > _threshold(model))
        for name in ("scores.parquet", "scores.csv"):
            rc, _, err = run(
                # the second format's pass replaces the first one's table: --force (issue 12, item 3)
                ["score", "--model", str(model), str(gz_idx), "--out", str(tmp_path / name), "--force"], capsys
            )
            assert rc == 0, err
            table = (
                pq.read_table(tmp_path / name) if name.endswith("parquet") else pcsv.read_csv(tmp_path / name)
            )
            np.testing.assert_allclose(table.column("score").to_numpy(), want, rtol=1e-5, atol=1e-7)


def test_score_with_a_pulled_dir_calibrates_like_the_export(
    exports: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    npz = tmp_path / "x.npz"
    from sklearn.datasets import load_digits

    np.savez(npz, X=load_digits().data[:40])
    rc, out, err = run(["score", "--model", str(exports["digits"]), str(npz), "--device", "cpu"], capsys)
    assert rc == 0, err
    got, flags = scores_of(out)
    cut = _threshold(exports["digits-torchscript"])
    assert f"threshold {cut:.6g} (validation FPR 0.05)" in err
    np.testing.assert_array_equal(flags, got > cut)
    rc, out, err = run(["score", "--model", str(exports["digits"]), str(npz), "--threshold", "0"], capsys)
    assert rc == 0 and scores_of(out)[1].all()


def test_bad_inputs_are_one_line_and_exit_2(
    exports: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    few = tmp_path / "few.csv"
    few.write_text("a,b,label\n1,2,0\n")
    text = tmp_path / "text.csv"
    text.write_text("a,b\nx,y\n")
    small = tmp_path / "small-idx3-ubyte"
    write_idx(small, np.zeros((3, 8, 8), np.uint8))
    floats = tmp_path / "floats.npz"
    np.savez(floats, X=np.zeros((3, 1, 28, 28), np.float32))
    pickled = tmp_path / "obj.npz"
    np.savez(pickled, X=np.array([object()], dtype=object))
    cases = [
        ("digits-onnx", few, "expected rows of 64 numeric features, got 2 features"),
        ("digits-onnx", text, "column 'a' is not numeric"),
        ("digits-torchscript", tmp_path / "missing.csv", "no such file"),
        ("mnist-onnx", small, "expected uint8 images of shape 1×28×28, got an array of shape (3, 1, 8, 8)"),
        ("mnist-torchscript", floats, "expected raw uint8 pixels 0..255"),
        ("mnist-torchscript", pickled, "object arrays are not accepted"),
        ("mnist-onnx", few, "expected uint8 images"),
    ]
    for model, path, message in cases:
        rc, out, err = run(["score", "--model", str(exports[model]), str(path)], capsys)
        assert rc == 2 and out == ""
        assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    rc, _, err = run(["score", "--model", str(exports["digits-onnx"]), str(few), "--out", "x.txt"], capsys)
    assert rc == 2 and "use .csv or .parquet" in err
    rc, _, err = run(["score", "--model", str(tmp_path), str(few)], capsys)
    assert rc == 2 and "not a model directory" in err


def test_pull_and_export_commands(
    tmp_path: Path, exports: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    digits_dir = exports["digits"]
    make_store(tmp_path / "store", LUCKY + STEADY)
    dest = tmp_path / "pulled"
    base = ["checkpoint", "pull", "unit", "--storage", str(tmp_path / "store"), "--to", str(dest)]
    rc, out, err = run(base, capsys)
    assert rc == 0, err
    lines = out.splitlines()
    assert "mean ± std" in lines[0] and lines[1].startswith("→") and "0.8100 ± 0.0100" in lines[1]
    assert "pulled trial a2 (seed 2, val_auroc 0.8100; policy median)" in out and "over 3 seeds" in out
    rc, _, err = run(base, capsys)
    assert rc == 2 and "--force" in err and err.count("\n") == 1
    rc, out, _ = run([*base, "--force", "--policy", "best", "--metric", "val_ap"], capsys)
    assert rc == 0 and "pulled trial a1" in out
    rc, _, err = run([*base, "--force", "--metric", "test_auroc"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "test metrics never select" in err
    rc, out, err = run(
        ["export", str(digits_dir), "--format", "onnx", "--out", str(tmp_path / "e"), "--fpr", "0.1"], capsys
    )
    assert rc == 0, err
    assert out.startswith(f"exported onnx to {tmp_path / 'e'}") and "≤ 0.1" in out
    rc, _, err = run(["export", str(digits_dir), "--format", "tflite"], capsys)
    assert rc == 2 and "--format" in err


@pytest.mark.integration
def test_sweep_pull_export_score_end_to_end(tmp_path: Path) -> None:
    """A real (small) multi-seed sweep on Ray, then the whole deployment path through the CLI."""
    repo = Path(__file__).resolve().parents[3]
    text = (repo / "sweeps" / "quickstart.yaml").read_text()
    text = text.replace("seeds: [0]", "seeds: [0, 1]").replace("num_trials: 6", "num_trials: 2")
    text = text.replace("epochs: 30", "epochs: 3").replace("milestones: [20]", "milestones: [2]")
    spec = tmp_path / "quick.yaml"
    spec.write_text(text)
    exe = [sys.executable, "-m", "orchestration.cli.app"]
    store = tmp_path / "store"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*exe, *args], cwd=tmp_path, capture_output=True, text=True, timeout=900, check=False
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done

    cli("sweep", "submit", str(spec), "--storage", str(store))
    pulled = tmp_path / "pulled"
    out = cli("checkpoint", "pull", "quickstart", "--storage", str(store), "--to", str(pulled)).stdout
    assert "over 2 seeds" in out
    selection = json.loads((pulled / "selection.json").read_text())
    assert selection["split"]["from"] == "spec" and selection["n"] == 2
    cli("export", str(pulled), "--format", "onnx")
    from sklearn.datasets import load_digits

    np.savez(tmp_path / "x.npz", X=load_digits().data[:100])
    scored = cli("score", "--model", str(tmp_path / "pulled-onnx"), str(tmp_path / "x.npz")).stdout
    got, _ = scores_of(scored)
    np.testing.assert_allclose(got, DeepSADModel.load(pulled).score_raw(load_digits().data[:100]), rtol=1e-5)
    shutil.rmtree(store, ignore_errors=True)


def test_pull_says_when_incomplete_configurations_were_left_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.orchestration.deploy.test_registry import row

    make_store(tmp_path / "store", [*STEADY, row("c0", 0, 0.99, eta=3.0)])
    argv = ["checkpoint", "pull", "unit", "--storage", str(tmp_path / "store"), "--to", str(tmp_path / "p")]
    rc, out, err = run(argv, capsys)
    assert rc == 0, err
    assert "pulled trial a2" in out and "1 configurations with fewer finished seeds were not ranked" in out
    rc, out, _ = run([*argv, "--force", "--min-seeds", "1"], capsys)
    assert rc == 0 and "pulled trial c0" in out


@pytest.mark.gpu
def test_score_on_cuda_matches_cpu(
    exports: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sklearn.datasets import load_digits

    npz = tmp_path / "x.npz"
    np.savez(npz, X=load_digits().data[:500])
    for model in ("digits", "digits-torchscript"):
        got = {}
        for device in ("cpu", "cuda"):
            rc, out, err = run(
                ["score", "--model", str(exports[model]), str(npz), "--device", device], capsys
            )
            assert rc == 0, err
            got[device] = scores_of(out)[0]
        np.testing.assert_allclose(got["cuda"], got["cpu"], rtol=1e-4, atol=1e-6)
    rc, out, err = run(
        ["score", "--model", str(exports["digits-onnx"]), str(npz), "--device", "cuda"], capsys
    )
    assert rc == 0 or (rc == 2 and "no CUDA provider" in err)
