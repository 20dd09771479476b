"""From a validated spec to the work a sweep will do, without Ray: trial configs and their keys
(`trial.py`, `identity.py`), grid cells (`cells.py`), ablation cells (`ablation.py`), bundles of trials
that share one process (`bundles.py`), per-trial resources (`resources.py`) and the checks made
before any work starts (`preflight.py`).
"""
