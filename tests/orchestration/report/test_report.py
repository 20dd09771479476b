"""``deepsad report``: aggregation math against numpy/scipy, row selection, provenance, and the command end
to end on a hand-made Parquet store (no Ray, no training)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from scipy import stats

from deepsad.errors import ConfigError, StorageError
from orchestration.cli.app import main
from orchestration.report.build import (
    SweepRecord,
    aggregate,
    build_report,
    choose_axis,
    load_sweep,
    per_class,
    provenance,
    summarize,
    used_rows,
)
from orchestration.report.render import table_markdown
from orchestration.store.results import TRIAL_SCHEMA, ResultStore
from orchestration.store.storage import Storage

NAME = "abl"
SPEC = "name: abl\n# the sweep file, verbatim\nablation:\n  axes: {ratio_known_outlier: [0.01, 0.05]}\n"
SEEDS, CLASSES, GAMMAS, METHODS = (0, 1, 2), (0, 3), (0.01, 0.05), ("deepsad", "ocsvm")
NEW_COLUMNS = ("method", "policy", "cell", "axes_json", "selected", "inner_trial")


def auroc(seed: int, cls: int, gamma: float, method: str) -> float:
    """Chosen values with a different spread in every group (so std and CI are non-trivial), inside (0, 1)
    as an AUROC is."""
    return 0.6 + gamma + 0.1 * (method == "deepsad") + 0.01 * seed**2 + 0.02 * cls * (1 + seed)


def ap(seed: int, cls: int, gamma: float, method: str) -> float:
    return auroc(seed, cls, gamma, method) - 0.2 - 0.007 * seed


def expected(values: list[float]) -> tuple[float, float, float, float]:
    """Mean, std and the 95% interval computed here, by hand: a t interval of the logits, mapped back."""
    x = np.array(values)
    mean, std = x.mean(), x.std(ddof=1)
    z = np.log(x / (1 - x))
    half = stats.t.ppf(0.975, len(x) - 1) * z.std(ddof=1) / math.sqrt(len(x))
    return mean, std, 1 / (1 + np.exp(-(z.mean() - half))), 1 / (1 + np.exp(-(z.mean() + half)))


def cell_row(key: str, seed: int, cls: int, gamma: float, method: str | None, **over: Any) -> dict[str, Any]:
    m = method or "deepsad"
    axes = {"ratio_known_outlier": gamma, "normal_classes": [cls]}
    row = {
        "trial_key": key, "status": "finished", "sweep": NAME, "dataset": "mnist", "normal_classes": [cls],
        "ratio_known_outlier": gamma, "seed": seed, "method": method, "policy": "fixed", "selected": True,
        "axes_json": json.dumps(axes, sort_keys=True), "code_version": "v1-abc", "fingerprint": f"fp-{cls}-{gamma}-{seed}",
        "test_auroc": auroc(seed, cls, gamma, m), "test_ap": ap(seed, cls, gamma, m),
    }  # fmt: skip
    row.update(over)
    return row


def grid_rows() -> list[dict[str, Any]]:
    """3 seeds × 2 normal classes × 2 γ_l × 2 methods; seed-0 Deep SAD rows have a null method (old rows)."""
    rows = []
    for seed in SEEDS:
        for cls in CLASSES:
            for gamma in GAMMAS:
                for m in METHODS:
                    method = None if (m == "deepsad" and seed == 0) else m
                    rows.append(cell_row(f"k-{m}-{seed}-{cls}-{gamma}", seed, cls, gamma, method))
    return rows


def noise_rows() -> list[dict[str, Any]]:
    """Rows a report must not aggregate, each with a value that would change the numbers if it were used."""
    return [
        cell_row("x-notsel", 0, 0, 0.01, "deepsad", policy="tuned", selected=False, inner_trial=3, test_auroc=0.0),
        cell_row("x-failed", 1, 3, 0.05, "ocsvm", status="failed", test_auroc=None, test_ap=None,
                 error="RuntimeError: boom in fit\nsecond line"),
        cell_row("x-running", 2, 0, 0.05, "deepsad", status="running", test_auroc=0.0),
        cell_row("x-stopped", 2, 3, 0.01, "ocsvm", status="stopped", test_auroc=0.0),
    ]  # fmt: skip


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    """A sweep storage holding sweep NAME: its spec.yaml and the grid + noise rows."""
    root = tmp_path / "sweeps"
    sweep = Storage.from_uri(str(root)).child(NAME)
    sweep.write_bytes(SPEC.encode(), "spec.yaml")
    store = ResultStore(sweep)
    for row in grid_rows() + noise_rows():
        store.write_trial(row)
    return root


def group(metric: Any, gamma: float, method: str) -> list[float]:
    return [metric(s, c, gamma, method) for s in SEEDS for c in CLASSES]


# ----------------------------------------------------------------------------------------- statistics


def test_intervals_of_a_bounded_metric_stay_inside_it() -> None:
    """The smoke ablation's runs once gave the raw t interval [81.0, 105.6] for a test AUROC."""
    values = [0.99, 1.0, 0.62, 0.995, 0.98]
    x = np.array(values)
    raw_high = x.mean() + stats.t.ppf(0.975, 4) * x.std(ddof=1) / math.sqrt(5)
    assert raw_high > 1.0  # what a t interval of the raw values says
    s = summarize(values)
    assert s.ci_low is not None and s.ci_high is not None
    assert 0.0 < s.ci_low < s.mean < s.ci_high < 1.0
    top = summarize([1.0, 1.0, 1.0])  # every run perfect: the interval is the point, not past it
    assert top.ci_high is not None and top.ci_low is not None and 0.999 < top.ci_low <= top.ci_high <= 1.0
    near = summarize([0.5, 0.52, 0.48, 0.51])  # away from the bounds it is close to the raw t interval
    xs = np.array([0.5, 0.52, 0.48, 0.51])
    raw = stats.t.ppf(0.975, 3) * xs.std(ddof=1) / 2
    assert near.ci_low == pytest.approx(xs.mean() - raw, abs=2e-3) and near.ci_high == pytest.approx(xs.mean() + raw, abs=2e-3)


def test_summarize_matches_numpy_and_scipy() -> None:
    values = [0.91, 0.87, 0.95, 0.9]
    s = summarize(values)
    mean, std, lo, hi = expected(values)
    assert (s.n, s.mean, s.std) == (4, pytest.approx(mean, abs=1e-15), pytest.approx(std, abs=1e-15))
    assert s.ci_low == pytest.approx(lo, abs=1e-15) and s.ci_high == pytest.approx(hi, abs=1e-15)
    one = summarize([0.7])
    assert (one.n, one.mean, one.std, one.ci_low, one.ci_high) == (1, 0.7, 0.0, None, None)
    with pytest.raises(ValueError):
        summarize([])


@pytest.mark.parametrize("metric, fn, column", [("auroc", auroc, "test_auroc"), ("ap", ap, "test_ap")])
def test_aggregate_over_seeds_and_classes_matches_numpy(
    storage: Path, metric: str, fn: Any, column: str
) -> None:
    record = load_sweep(NAME, str(storage))
    ab = aggregate(record.rows, metric=metric)
    assert ab.axis == "ratio_known_outlier" and ab.extra_axes == ()
    assert ab.methods == ("ocsvm", "deepsad")  # the paper's order: baselines first, Deep SAD last
    assert len(ab.cells) == len(GAMMAS) * len(METHODS)
    for gamma in GAMMAS:
        for m in METHODS:
            cell = ab.cell("mnist", (), gamma, m)
            assert cell is not None, (gamma, m)
            mean, std, lo, hi = expected(group(fn, gamma, m))
            s = cell.summary
            assert s.n == len(SEEDS) * len(CLASSES)
            assert s.mean == pytest.approx(mean, abs=1e-12) and s.std == pytest.approx(std, abs=1e-12)
            assert s.ci_low == pytest.approx(lo, abs=1e-12) and s.ci_high == pytest.approx(hi, abs=1e-12)


def test_used_rows_selection() -> None:
    rows = grid_rows() + noise_rows() + [cell_row("legacy", 0, 0, 0.01, None, selected=None, policy=None)]
    used = used_rows(rows)
    keys = {r["trial_key"] for r in used}
    assert keys == {r["trial_key"] for r in grid_rows()} | {"legacy"}  # selected None counts, False does not
    assert all(r["method"] in METHODS for r in used)  # null method → deepsad
    ab = aggregate(rows)
    cell = ab.cell("mnist", (), 0.01, "deepsad")
    assert cell is not None and cell.summary.n == 7
    assert cell.summary.mean == pytest.approx(
        np.mean([*group(auroc, 0.01, "deepsad"), auroc(0, 0, 0.01, "deepsad")])
    )


def test_provenance_counts_and_failed_cells() -> None:
    rows = grid_rows() + noise_rows()
    p = provenance(rows, sweep=NAME, location="/x/abl", spec_text=SPEC, metric="auroc")
    assert p.counts == {"failed": 1, "finished": 25, "running": 1, "stopped": 1}
    assert (p.used, p.not_selected, p.missing_metric) == (24, 1, 0)
    assert p.code_versions == {"v1-abc": 24} and p.policies == {"fixed": 24}
    assert len(p.fingerprints["mnist"]) == len(SEEDS) * len(CLASSES) * len(GAMMAS)
    [failed] = p.failed
    assert failed["trial_key"] == "x-failed" and failed["method"] == "ocsvm"
    assert failed["error"].startswith("RuntimeError: boom") and failed["axes"] == "ratio_known_outlier=0.05"


def test_per_class_heat_map_means_over_seeds() -> None:
    rows = grid_rows()
    ab = aggregate(rows)
    [hm] = per_class(rows, ab, "deepsad")
    assert hm.classes == ((0,), (3,)) and hm.values == GAMMAS
    for i, cls in enumerate(CLASSES):
        for j, gamma in enumerate(GAMMAS):
            assert hm.mean[i][j] == pytest.approx(np.mean([auroc(s, cls, gamma, "deepsad") for s in SEEDS]))
            assert hm.n[i][j] == len(SEEDS)


# ----------------------------------------------------------------------------------------- axes


def test_axis_is_n_labeled_when_that_is_the_ablation_axis() -> None:
    rows = [
        {**cell_row(f"k{n}{s}", s, 0, 0.0, "deepsad"), "n_labeled_anomalies": n,
         "axes_json": json.dumps({"n_labeled_anomalies": n}), "ratio_known_outlier": n / 1000}
        for n in (0, 10, 50) for s in SEEDS
    ]  # fmt: skip
    assert choose_axis(rows) == "n_labeled_anomalies"  # declared, although the derived γ_l varies too
    undeclared = [{**r, "axes_json": None, "ratio_known_outlier": None} for r in rows]
    assert choose_axis(undeclared) == "n_labeled_anomalies"  # the one that varies
    ab = aggregate(rows)
    assert [k[2] for k in ab.row_keys()] == [0, 10, 50] and ab.extra_axes == ()


def test_other_varying_axis_splits_cells_instead_of_pooling() -> None:
    rows = []
    for p in (0.0, 0.1):
        for r in grid_rows():
            axes = {**json.loads(r["axes_json"]), "ratio_pollution": p}
            rows.append({**r, "trial_key": f"{r['trial_key']}-{p}", "ratio_pollution": p, "axes_json": json.dumps(axes),
                         "test_auroc": r["test_auroc"] - p})  # fmt: skip
    ab = aggregate(rows)
    assert ab.extra_axes == ("ratio_pollution",)
    cell = ab.cell("mnist", (0.1,), 0.05, "ocsvm")
    assert cell is not None and cell.summary.n == 6
    assert cell.summary.mean == pytest.approx(np.mean(group(auroc, 0.05, "ocsvm")) - 0.1)


def test_bad_axis_and_metric_are_config_errors() -> None:
    rows = grid_rows()
    with pytest.raises(ConfigError, match="--axis: unknown column 'gamma'"):
        aggregate(rows, axis="gamma")
    with pytest.raises(ConfigError, match="--axis: 'n_labeled_anomalies' has no value"):
        aggregate(rows, axis="n_labeled_anomalies")
    with pytest.raises(ConfigError, match="--metric"):
        aggregate(rows, metric="f1")
    assert aggregate(rows, axis="seed").axis == "seed"  # any column that has values


def test_markdown_table_layout_and_n1_interval() -> None:
    rows = [*grid_rows(), cell_row("lone", 0, 0, 0.2, "ocsvm", test_auroc=0.8)]
    text = table_markdown(aggregate(rows))
    lines = text.splitlines()
    assert lines[0] == "| Data set | γₗ | OC-SVM | Deep SAD |"
    assert lines[2].startswith("| mnist | 0.01 | ") and lines[3].startswith("|  | 0.05 | ")
    assert "**80.0 ± 0.0** · n=1 · –" in lines[4] and lines[4].endswith("| — |")  # n = 1; Deep SAD not run
    mean, std, lo, hi = expected(group(auroc, 0.01, "deepsad"))
    assert f"**{100 * mean:.1f} ± {100 * std:.1f}** · n=6 · [{100 * lo:.1f}, {100 * hi:.1f}]" in lines[2]


# ----------------------------------------------------------------------------------------- the store


def test_rows_written_before_the_ablation_columns_read_as_deepsad(tmp_path: Path) -> None:
    sweep = Storage.from_uri(str(tmp_path)).child(NAME)
    old = pa.schema([f for f in TRIAL_SCHEMA if f.name not in NEW_COLUMNS])
    (tmp_path / NAME / "results" / "trials").mkdir(parents=True)
    for r in grid_rows()[:4]:
        clean = {k: v for k, v in r.items() if k not in NEW_COLUMNS}
        pq.write_table(
            pa.Table.from_pylist([clean], schema=old),
            tmp_path / NAME / "results/trials" / f"{r['trial_key']}.parquet",
        )
    record = load_sweep(NAME, str(tmp_path))
    assert record.spec_text is None and len(record.rows) == 4
    assert all(r["method"] is None and r["selected"] is None for r in record.rows)
    ab = aggregate(record.rows)
    assert ab.methods == ("deepsad",) and sum(c.summary.n for c in ab.cells) == 4
    assert ResultStore(sweep).row(grid_rows()[0]["trial_key"])["selected"] is None  # type: ignore[index]


def test_no_finished_trials_is_a_storage_error() -> None:
    record = SweepRecord(NAME, "/x/abl", SPEC, noise_rows()[1:])
    with pytest.raises(
        StorageError, match="no finished trials to report \\(1 failed, 1 running, 1 stopped\\)"
    ):
        build_report(record)


# ----------------------------------------------------------------------------------------- the command


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def test_report_command_end_to_end(storage: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    code, stdout, err = run(["report", NAME, "--storage", str(storage), "--out", str(out)], capsys)
    assert code == 0, err
    assert "report.md" in stdout and "2 figures" in stdout
    for rel in ("report.md", "report.html", "tables/test_auroc.csv", "tables/test_auroc.json", "tables/test_ap.csv",
                "tables/test_ap.json", "tables/provenance.json"):  # fmt: skip
        assert (out / rel).is_file(), rel
    pngs = sorted((out / "figures").glob("*.png"))
    assert [p.name for p in pngs] == ["auroc_per_class_deepsad.png", "auroc_vs_ratio_known_outlier.png"]
    for p in pngs:
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size[0] >= 900 and im.size[1] >= 500

    html = (out / "report.html").read_text()
    mean, std, lo, hi = expected(group(auroc, 0.05, "deepsad"))
    assert "<table>" in html and f"{100 * mean:.1f} ± {100 * std:.1f}" in html
    assert f"95% CI [{100 * lo:.1f}, {100 * hi:.1f}]" in html
    assert 'src="figures/auroc_vs_ratio_known_outlier.png"' in html
    assert "x-failed" in html and "RuntimeError: boom in fit second line" in html  # failed cell, one line
    assert "# the sweep file, verbatim" in html and "v1-abc" in html and "<code>fixed</code>" in html

    md = (out / "report.md").read_text()
    assert "## Test AUROC" in md and "## Test AP" in md and "```yaml\n" + SPEC.rstrip() + "\n```" in md
    assert "### Failed cells (1)" in md and "x-failed" in md
    # two methods, four blocks (2 normal classes × 2 γ_l): ranks, but no Friedman test and no Wilcoxon test
    assert "### Test AUROC: all blocks" in md and "No Friedman test or CD diagram: 2 methods (needs ≥ 3)." in md
    assert "- No Wilcoxon test of OC-SVM vs Deep SAD: 4 blocks with both (needs ≥ 6)." in md

    with open(out / "tables/test_auroc.csv", newline="") as fh:
        got = {(float(r["ratio_known_outlier"]), r["method"]): r for r in csv.DictReader(fh)}
    r = got[0.05, "deepsad"]
    assert (int(r["n"]), float(r["mean"]), float(r["ci_low"])) == (6, pytest.approx(mean), pytest.approx(lo))
    doc = json.loads((out / "tables/test_ap.json").read_text())
    assert doc["metric"] == "test_ap" and doc["axis"] == "ratio_known_outlier" and len(doc["cells"]) == 4
    c = next(c for c in doc["cells"] if c["ratio_known_outlier"] == 0.01 and c["method"] == "ocsvm")
    ap_mean, ap_std, ap_lo, ap_hi = expected(group(ap, 0.01, "ocsvm"))
    assert c["n"] == 6 and c["mean"] == pytest.approx(ap_mean) and c["std"] == pytest.approx(ap_std)
    assert (c["ci_low"], c["ci_high"]) == (pytest.approx(ap_lo), pytest.approx(ap_hi))


def test_report_metric_ap_leads(storage: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r"
    code, _, err = run(
        ["report", NAME, "--storage", str(storage), "--out", str(out), "--metric", "ap"], capsys
    )
    assert code == 0, err
    md = (out / "report.md").read_text()
    assert md.index("## Test AP") < md.index("## Test AUROC")
    assert (out / "figures/ap_vs_ratio_known_outlier.png").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["report", "nope"], "error: no sweep 'nope' under "),
        (["report", "empty"], "error: sweep 'empty': no finished trials to report (no trials)"),
        (["report", NAME, "--metric", "f1"], "error: --metric: must be one of auroc, ap (got 'f1')"),
        (["report", NAME, "--axis", "gamma"], "error: --axis: unknown column 'gamma'"),
    ],
)
def test_report_user_errors_exit_2(
    storage: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    Storage.from_uri(str(storage)).child("empty").write_bytes(b"name: empty\n", "spec.yaml")
    code, _, err = run([*args, "--storage", str(storage), "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith(message), err
    assert not (tmp_path / "o" / "report.md").exists()


def test_unwritable_out_is_one_line(
    storage: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, _, err = run(["report", NAME, "--storage", str(storage), "--out", str(blocker)], capsys)
    assert (
        code == 2
        and err.startswith(f"error: --out {blocker}: cannot write the report")
        and err.count("\n") == 1
    )
