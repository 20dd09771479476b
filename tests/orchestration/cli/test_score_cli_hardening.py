"""Issue 12 through the installed `deepsad` command, in a subprocess: extreme inputs never score as
normal, the threshold must be finite, CSV headers are not scored, a directory is not an input,
hostile JSON is one line, and a `deepsad train` model goes through export and score."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.csv as pcsv
import pytest

from deepsad.model import DeepSADModel
from tests.orchestration.deploy.test_export import DIGITS_PROTOCOL, train_pulled_dir

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*torch.jit.*:DeprecationWarning"),
    pytest.mark.timeout(600),
]

DEEPSAD = Path(sys.executable).parent / "deepsad"  # the installed entry point


def deepsad(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(DEEPSAD), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600, check=False
    )


def one_line_error(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert done.returncode == 2 and done.stdout == "", (done.returncode, done.stdout, done.stderr[-2000:])
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    for needle in needles:
        assert needle in done.stderr, done.stderr


def scores_of(text: str) -> tuple[np.ndarray, np.ndarray]:
    table = pcsv.read_csv(io.BytesIO(text.encode()))
    assert table.column_names == ["index", "score", "anomaly"]
    return table.column("score").to_numpy(), table.column("anomaly").to_numpy(zero_copy_only=False)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A pulled digits model ("pulled") and its TorchScript export ("export")."""
    from orchestration.deploy.export import export_model

    root = tmp_path_factory.mktemp("models")
    train_pulled_dir(root / "pulled", "digits", DIGITS_PROTOCOL)
    export_model(root / "pulled", root / "export", fmt="torchscript")
    return {"pulled": root / "pulled", "export": root / "export", "root": root}


def test_overflowing_inputs_are_flagged_never_normal(models: dict[str, Path], tmp_path: Path) -> None:
    """Was: X = 1e308 scored nan, flagged false, exit 0."""
    from sklearn.datasets import load_digits

    x = load_digits().data[:5].copy()
    x[[1, 3]] = 1e308  # overflows float32 in the preprocessing: the distance is NaN
    np.savez(tmp_path / "h.npz", X=x)
    done = deepsad("score", "h.npz", "--model", models["export"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    scores, flags = scores_of(done.stdout)
    assert (~np.isfinite(scores)).tolist() == [False, True, False, True, False]
    assert flags[1] and flags[3]
    cut = json.loads((models["export"] / "export.json").read_text())["threshold"]
    np.testing.assert_array_equal(flags[[0, 2, 4]], scores[[0, 2, 4]] > cut)
    assert "2 with a non-finite score" in done.stderr


def test_threshold_must_be_finite(models: dict[str, Path], tmp_path: Path) -> None:
    """Was: --threshold nan accepted, nothing flagged."""
    np.savez(tmp_path / "x.npz", X=np.zeros((2, 64)))
    one_line_error(
        deepsad("score", "x.npz", "--model", models["export"], "--threshold", "nan", cwd=tmp_path),
        "--threshold: must be a finite number",
    )
    one_line_error(
        deepsad("score", "x.npz", "--model", models["pulled"], "--fpr", "inf", cwd=tmp_path), "--fpr"
    )


def test_a_pandas_csv_header_is_not_scored(models: dict[str, Path], tmp_path: Path) -> None:
    """Was: `DataFrame(x).to_csv(index=False)` (header 0,1,...,63) gave 6 scores for 5 rows."""
    pd = pytest.importorskip("pandas")
    from sklearn.datasets import load_digits

    x = load_digits().data[:5]
    pd.DataFrame(x).to_csv(tmp_path / "rows.csv", index=False)
    assert (tmp_path / "rows.csv").read_text().startswith("0,1,2,3,")
    done = deepsad("score", "rows.csv", "--model", models["export"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    scores, _ = scores_of(done.stdout)
    want = DeepSADModel.load(models["pulled"]).score_raw(x)
    np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-7)
    assert "scored 5 inputs" in done.stderr


def test_a_directory_is_not_an_input(models: dict[str, Path], tmp_path: Path) -> None:
    """Was: 'no such file' for a directory that exists."""
    (tmp_path / "inputs").mkdir()
    one_line_error(
        deepsad("score", "inputs", "--model", models["export"], cwd=tmp_path),
        "inputs: is a directory; INPUT must be a file",
    )


def test_deeply_nested_json_is_one_line(models: dict[str, Path], tmp_path: Path) -> None:
    """Was: a RecursionError traceback from export and score on a deeply nested meta.json."""
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(models["pulled"], bad)
    record = json.dumps(json.loads((bad / "meta.json").read_text()))
    (bad / "meta.json").write_text(record[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    np.savez(tmp_path / "x.npz", X=np.zeros((2, 64)))
    one_line_error(deepsad("export", bad, "--out", tmp_path / "e", cwd=tmp_path), "nested deeper than")
    assert not (tmp_path / "e").exists()
    one_line_error(deepsad("score", "x.npz", "--model", bad, cwd=tmp_path), "nested deeper than")
