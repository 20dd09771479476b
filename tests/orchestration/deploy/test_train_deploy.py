"""Issue 12, item 10: a model from `deepsad train` goes through `deepsad export` and `deepsad score`
(train records its split; export and score calibrate on its validation part, parity-checked), through
the installed command in a subprocess."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deepsad.model import DeepSADModel
from tests.orchestration.cli.test_score_cli_hardening import deepsad, scores_of

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*torch.jit.*:DeprecationWarning"),
    pytest.mark.timeout(600),
]


def test_a_train_model_exports_and_scores(tmp_path: Path) -> None:
    """Was: `deepsad export` on a `deepsad train --out` directory: 'no selection.json … pull the model'.
    Now train records its split; export and score calibrate on its validation part, parity-checked."""
    from sklearn.datasets import load_digits

    done = deepsad(
        "train", "--dataset", "digits", "--out", "run", "--n-labeled-anomalies", "5", "--seed", "3",
        "--ae-epochs", "1", "--epochs", "2", "--milestone", "1", "--batch-size", "64", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    meta = json.loads((tmp_path / "run" / "model" / "meta.json").read_text())["meta"]
    assert meta["split"]["dataset"] == "digits" and meta["split"]["protocol"]["seed"] == 3
    done = deepsad("export", "run", "--format", "onnx", "--fpr", "0.1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("exported onnx to run-onnx") and "≤ 0.1" in done.stdout
    exported = json.loads((tmp_path / "run-onnx" / "export.json").read_text())
    assert exported["source"] == "deepsad train" and exported["fingerprint"] == meta["fingerprint"]
    x = load_digits().data[:30]
    np.savez(tmp_path / "x.npz", X=x)
    want = DeepSADModel.load(tmp_path / "run" / "model").score_raw(x)
    by_export = deepsad("score", "x.npz", "--model", "run-onnx", cwd=tmp_path)
    by_model = deepsad("score", "x.npz", "--model", "run", "--fpr", "0.1", "--device", "cpu", cwd=tmp_path)
    for done in (by_export, by_model):
        assert done.returncode == 0, done.stderr[-2000:]
        scores, flags = scores_of(done.stdout)
        np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(flags, scores > exported["threshold"])
    assert f"threshold {exported['threshold']:.6g}" in by_model.stderr


def test_a_train_model_on_a_relative_csv_exports_from_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`deepsad train --dataset mine.csv` (relative) records the file's absolute path, so an export
    run from another directory rebuilds the same split (in-process: the CLI part is tested above)."""
    from orchestration.cli.app import main
    from orchestration.deploy.export import export_model

    work = tmp_path / "work"
    work.mkdir()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4))
    y = (np.arange(300) % 6 == 0).astype(int)
    x[y == 1] += 3.0
    np.savetxt(work / "mine.csv", np.column_stack([x, y]), delimiter=",", header="a,b,c,d,y", comments="")
    monkeypatch.chdir(work)
    with pytest.raises(SystemExit) as e:
        main(["train", "--dataset", "mine.csv", "--out", "run", "--ae-epochs", "1", "--epochs", "1",
              "--milestone", "1", "--batch-size", "64"])  # fmt: skip
    assert e.value.code in (0, None), capsys.readouterr().err
    meta = json.loads((work / "run" / "model" / "meta.json").read_text())["meta"]
    assert meta["split"]["dataset"] == str((work / "mine.csv").resolve())
    monkeypatch.chdir(tmp_path)
    result = export_model(work / "run", tmp_path / "e", fmt="torchscript")
    assert result.metadata["fingerprint"] == meta["fingerprint"]
