"""The headline figures of one ``gpu_check.sh`` run, from the JSON its steps left: ``summary.json``.

Reads whatever exists of core.json, step.json, bundle.json, fidelity.json and classes.json in the
output folder (a step that was cut leaves partial figures, a step that never ran none: its section
says so) and writes summary.json beside them; prints it too.

    python benchmarks/gpu_summary.py OUT_DIR [--status STATUS_FILE]

Targets (issue 13), each next to its figure: single run ≥ 5× the reference in both phases; AE epoch
≤ 2.5× a Deep SAD epoch at K = 64 and 512; Deep SAD ≥ 1.0M samples/s (100× the reference) in a
bundle; the paper's MNIST grid < 15 GPU-minutes; the ten classes' mean AUROC difference within
0.5 points; no fidelity stage departing.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

REFERENCE = {"ae": 9_000.0, "sad": 10_000.0}  # Deep-SAD-PyTorch on one H200, samples/s (issue 13)


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def core(d: Any) -> dict[str, Any]:
    if not d:
        return {"missing": True}
    out: dict[str, Any] = {}
    for precision in ("fp32", "bf16"):
        if precision in d:
            f = d[precision]
            out[precision] = {"ae_samples_per_s": round(f["ae"]), "sad_samples_per_s": round(f["sad"]),
                              "ae_x_reference": round(f["ae"] / REFERENCE["ae"], 2),
                              "sad_x_reference": round(f["sad"] / REFERENCE["sad"], 2)}
    if "fp32" in out:
        out["target_5x_met"] = out["fp32"]["ae_x_reference"] >= 5 and out["fp32"]["sad_x_reference"] >= 5
    if "fp32" in d and "bf16" in d:
        out["bf16_over_fp32"] = {p: round(d["bf16"][p] / d["fp32"][p], 2) for p in ("ae", "sad")}
    return out


def steps(d: Any) -> dict[str, Any]:
    if not d:
        return {"missing": True}
    out: dict[str, Any] = {}
    for r in d.get("results", []):
        name = f"K={r['k']} {r['phase']}" + (f" {r['deconv']}" if r.get("deconv") else "") + (
            " bf16" if r.get("precision") == "bf16" else "")
        out[name] = {"probe_ms": round(r["probe_ms"], 3), "grad_ms": round(r["grad_ms"], 3),
                     "step_ms": round(r["step_ms"], 3), "samples_per_s": round(r["samples_per_s"]),
                     "step_over_probe": round(r["step_ms"] / r["probe_ms"], 2) if r["probe_ms"] else None,
                     "syncs_per_step": r["syncs_per_step"], "ops_per_step": r["ops_per_step"],
                     "top_kernels": [[t["name"], t["calls"], round(t["ms"], 3)] for t in r["top"]]}
    return out


def bundles(d: Any) -> dict[str, Any]:
    if not d:
        return {"missing": True}
    runs = d.get("runs", {})
    out: dict[str, Any] = {"partial": bool(d.get("partial"))}
    for name, figs in runs.items():
        if not figs:
            continue
        med = {m: statistics.median(f[m] for f in figs) for m in figs[0]}
        row = {"samples_per_s": round(med["samples_per_s"]), "sad_samples_per_s": round(med["sad_samples_per_s"]),
               "sad_x_reference": round(med["sad_samples_per_s"] / REFERENCE["sad"], 1)}
        if "ae_epoch_s" in med:
            k = int(name[2:])
            row.update({"ae_samples_per_s": round(k * med["member_samples"] / med["ae_epoch_s"]),
                        "ae_epoch_s": round(med["ae_epoch_s"], 3), "sad_epoch_s": round(med["sad_epoch_s"], 3),
                        "ae_over_sad_epoch": round(med["ae_epoch_s"] / med["sad_epoch_s"], 2),
                        "fixed_s": round(med["fixed_s"], 2)})
        out[name] = row
    for key, label in (("grid_seconds", "grid_minutes_planner_order"), ("grid_seconds_by_size", "grid_minutes_by_size")):
        if key in d:
            out[label] = {k: round(v / 60, 1) for k, v in d[key].items()}
    ratios = [out[k]["ae_over_sad_epoch"] for k in ("K=64", "K=512") if k in out and "ae_over_sad_epoch" in out[k]]
    out["target_ae_over_sad_le_2_5_met"] = bool(ratios) and max(ratios) <= 2.5
    sad = [v["sad_samples_per_s"] for k, v in out.items() if k.startswith("K=") and isinstance(v, dict)]
    out["target_sad_1M_met"] = bool(sad) and max(sad) >= 1_000_000
    grid = [v for g in ("grid_minutes_planner_order", "grid_minutes_by_size") for v in out.get(g, {}).values()]
    out["target_grid_lt_15_min_met"] = bool(grid) and min(grid) < 15
    return out


def fidelity(d: Any) -> dict[str, Any]:
    if not d:
        return {"missing": True}
    return {"first_departure": d["first_departure"], "device": d["device"], "deterministic": d["deterministic"],
            "stages": {r["stage"]: {"bundle": float(f"{r['bundle']:.3g}"), "kernel_choice": float(f"{r['alt']:.3g}"),
                                    "ok": r["ok"]} for r in d["stages"]},
            "auroc": d["auroc"]}


def classes(d: Any) -> dict[str, Any]:
    if not d:
        return {"missing": True}
    out = {"per_class": {c: [row.get("bundle"), row.get("separate")] for c, row in d["classes"].items()},
           "mean_difference_points": None if d.get("mean_difference") is None else round(100 * d["mean_difference"], 3),
           "mean_abs_difference_points": None if d.get("mean_abs_difference") is None
           else round(100 * d["mean_abs_difference"], 3),
           "bundle_seconds": round(d.get("bundle_seconds", 0.0), 1), "epochs": d["settings"]["epochs"]}
    out["target_within_0_5_points_met"] = (out["mean_difference_points"] is not None
                                           and abs(out["mean_difference_points"]) <= 0.5)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--status", type=Path, help="lines 'STEP ok|cut|failed SECONDS' from gpu_check.sh")
    ns = ap.parse_args()
    status = {}
    if ns.status and ns.status.exists():
        for line in ns.status.read_text().splitlines():
            name, state, seconds = line.split()
            status[name] = {"state": state, "seconds": int(seconds)}
    core_d = _read(ns.out / "core.json")
    summary = {"machine": (core_d or {}).get("machine"), "steps": status,
               "single_run": core(core_d), "bundle_step": steps(_read(ns.out / "step.json")),
               "bundles": bundles(_read(ns.out / "bundle.json")), "fidelity": fidelity(_read(ns.out / "fidelity.json")),
               "ten_classes": classes(_read(ns.out / "classes.json"))}
    text = json.dumps(summary, indent=1)
    (ns.out / "summary.json").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
