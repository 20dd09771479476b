"""What choosing on the labels a user has costs (or saves) against choosing on the true labels.

Every trial row holds two validation metrics: ``val_auroc`` (the validation part's *labelled*
anomalies against everything else, what a user can compute) and ``val_auroc_oracle`` (its true
labels, which no user has once the unlabelled data is polluted). This script reads finished sweeps
and reports, from the same rows, which configuration each metric selects and that configuration's
test AUROC — the product's own ranking (:func:`orchestration.deploy.registry.rank_configurations`,
what ``deepsad checkpoint pull`` uses: best mean over seeds), once over all seeds and once per seed
(each seed's trials alone, as a one-seed search would choose).

For an ablation, whose Deep SAD units are not chosen at all (policy ``fixed``) but whose baselines
choose their hyperparameters on validation, give two runs of the same file, one with
``search.objective.metric: val_auroc`` and one with ``val_auroc_oracle``: ``--ablation KNOWN ORACLE``
pairs their baseline rows by cell and reports the test AUROC of each choice.

    python benchmarks/selection_labels.py --storage runs/sweeps SWEEP [SWEEP ...]
    python benchmarks/selection_labels.py --storage runs/sweeps --ablation SMOKE SMOKE_ORACLE
    python benchmarks/selection_labels.py --dry-run      # on a synthetic store (CI)

Prints a table and, with ``--json FILE``, writes the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from orchestration.deploy.registry import ConfigResult, rank_configurations
from orchestration.store.results import ResultStore
from orchestration.store.storage import Storage

KNOWN, ORACLE = "val_auroc", "val_auroc_oracle"


def _test_auroc(config: ConfigResult, by_key: Mapping[str, Mapping[str, Any]]) -> float:
    return statistics.fmean(float(by_key[s.trial_key]["test_auroc"]) for s in config.seeds)


def choose(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The configuration each metric selects from ``rows`` and its mean test AUROC over its seeds."""
    by_key = {str(r["trial_key"]): r for r in rows}
    out: dict[str, Any] = {"trials": sum(1 for r in rows if r.get("status") == "finished")}
    ranked = {m: rank_configurations(rows, m) for m in (KNOWN, ORACLE)}
    out["configurations"] = len(ranked[KNOWN])
    for m, configs in ranked.items():
        best = configs[0]
        out[m] = {"params": best.params, "seeds": best.n, "val": round(best.mean, 4),
                  "test_auroc": round(_test_auroc(best, by_key), 4)}  # fmt: skip
    tests = sorted(_test_auroc(c, by_key) for c in ranked[KNOWN])
    out["test_auroc_range"] = [round(tests[0], 4), round(tests[-1], 4)]  # the best and worst choice possible
    out["same_choice"] = ranked[KNOWN][0].params == ranked[ORACLE][0].params
    out["difference"] = round(out[KNOWN]["test_auroc"] - out[ORACLE]["test_auroc"], 4)
    return out


def search_report(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """:func:`choose` over all seeds, and per seed."""
    seeds = sorted({int(r["seed"]) for r in rows if r.get("status") == "finished"})
    per_seed = {s: choose([r for r in rows if r.get("seed") == s]) for s in seeds}
    diffs = [p["difference"] for p in per_seed.values()]
    return {"all_seeds": choose(rows), "per_seed": per_seed,
            "per_seed_mean_difference": round(statistics.fmean(diffs), 4) if diffs else None}  # fmt: skip


def ablation_report(known: Sequence[Mapping[str, Any]], oracle: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Baseline rows of two runs of one ablation, paired by cell: the test AUROC of each choice."""

    def baselines(rows: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
        return {str(r["cell"]): r for r in rows
                if r.get("status") == "finished" and r.get("method") in ("isoforest", "ocsvm")}  # fmt: skip

    a, b = baselines(known), baselines(oracle)
    cells = []
    for cell in sorted(a.keys() & b.keys()):
        ka, kb = a[cell], b[cell]
        pa_, pb = (json.loads(r["params_json"]) for r in (ka, kb))
        pa_.pop("selection", None), pb.pop("selection", None)  # the note on how it chose is not the choice
        cells.append({"cell": cell, "method": ka["method"], "axes": json.loads(ka["axes_json"] or "{}"),
                      "seed": ka["seed"], "known_choice": pa_, "oracle_choice": pb,
                      "known_test_auroc": round(ka["test_auroc"], 4), "oracle_test_auroc": round(kb["test_auroc"], 4),
                      "difference": round(ka["test_auroc"] - kb["test_auroc"], 4)})  # fmt: skip
    diffs = [c["difference"] for c in cells]
    return {"cells": cells, "paired": len(cells), "changed": sum(c["known_choice"] != c["oracle_choice"] for c in cells),
            "mean_difference": round(statistics.fmean(diffs), 4) if diffs else None}  # fmt: skip


def _rows(storage: str, name: str) -> list[dict[str, Any]]:
    rows = ResultStore(Storage.from_uri(storage).child(name)).trials().to_pylist()
    if not rows:
        raise SystemExit(f"selection_labels.py: sweep {name} in {storage}: no trial rows")
    return rows


def _print_search(name: str, rep: Mapping[str, Any]) -> None:
    a = rep["all_seeds"]
    print(f"{name}: {a['trials']} finished trials, {a['configurations']} configurations; "
          f"test AUROC of any choice in [{a['test_auroc_range'][0]:.4f}, {a['test_auroc_range'][1]:.4f}]")  # fmt: skip
    for m in (KNOWN, ORACLE):
        print(f"  chosen on {m:<17} (mean over {a[m]['seeds']} seeds {a[m]['val']:.4f}): "
              f"test AUROC {a[m]['test_auroc']:.4f}  {a[m]['params']}")  # fmt: skip
    for s, p in rep["per_seed"].items():
        print(f"  seed {s}: on {KNOWN} {p[KNOWN]['test_auroc']:.4f}, on {ORACLE} {p[ORACLE]['test_auroc']:.4f}"
              f" ({'same' if p['same_choice'] else 'different'} choice)")  # fmt: skip
    print(f"  known - oracle test AUROC: all seeds {a['difference']:+.4f}, per seed mean "
          f"{rep['per_seed_mean_difference']:+.4f}")  # fmt: skip


def _print_ablation(rep: Mapping[str, Any]) -> None:
    for c in rep["cells"]:
        print(f"  {c['method']:<9} {json.dumps(c['axes'])} seed {c['seed']}: known {c['known_test_auroc']:.4f} "
              f"{c['known_choice']}, oracle {c['oracle_test_auroc']:.4f} {c['oracle_choice']}")  # fmt: skip
    if rep["paired"]:
        print(f"  {rep['paired']} baseline cells, {rep['changed']} chose differently; known - oracle test AUROC "
              f"mean {rep['mean_difference']:+.4f}")  # fmt: skip


def _synthetic(root: Path) -> None:
    """Two small sweeps whose metrics disagree: the oracle prefers eta 10, the known labels eta 1."""
    store = ResultStore(Storage.from_uri(root).child("search"))
    for i, (eta, seed) in enumerate((e, s) for e in (1.0, 10.0) for s in (0, 1)):
        store.write_trial({"trial_key": f"k{i}", "status": "finished", "seed": seed, "eta": eta,
                           "params_json": json.dumps({"eta": eta}), "val_auroc": 0.9 if eta == 1 else 0.8,
                           "val_auroc_oracle": 0.7 if eta == 1 else 0.75, "test_auroc": 0.8 if eta == 1 else 0.7})  # fmt: skip
    for name, chosen in (("abl", 100), ("abl_oracle", 50)):
        ResultStore(Storage.from_uri(root).child(name)).write_trial(
            {"trial_key": "b", "status": "finished", "method": "isoforest", "cell": "c1", "seed": 0,
             "axes_json": '{"ratio_known_outlier": 0.0}', "params_json": json.dumps({"n_estimators": chosen}),
             "test_auroc": 0.9 if chosen == 100 else 0.85})  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweeps", nargs="*", help="search sweeps to report on")
    ap.add_argument("--storage", default="runs/sweeps")
    ap.add_argument("--ablation", nargs=2, metavar=("KNOWN", "ORACLE"), help="two runs of one ablation")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--dry-run", action="store_true", help="report on a synthetic store (CI)")
    args = ap.parse_args(argv)
    tmp = None
    if args.dry_run:
        tmp = tempfile.TemporaryDirectory()
        _synthetic(Path(tmp.name))
        args.storage, args.sweeps, args.ablation = tmp.name, ["search"], ["abl", "abl_oracle"]
    if not args.sweeps and not args.ablation:
        ap.error("give a search sweep or --ablation KNOWN ORACLE")
    out: dict[str, Any] = {"storage": args.storage}
    for name in args.sweeps:
        out[name] = search_report(_rows(args.storage, name))
        _print_search(name, out[name])
    if args.ablation:
        known, oracle = args.ablation
        print(f"ablation {known} (chosen on {KNOWN}) vs {oracle} (chosen on {ORACLE}):")
        out["ablation"] = ablation_report(_rows(args.storage, known), _rows(args.storage, oracle))
        _print_ablation(out["ablation"])
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
