"""From a validated spec to the work a sweep will do, without Ray: trial configs and their keys
(`trial.py`), grid/random cells (`cells.py`), ablation units (`ablation.py`), bundles of trials that
share one process (`bundles.py`), `auto` resources (`resources.py`), the Optuna search space
(`space.py`), the checks made before any work starts (`preflight.py`, `identity.py`) and the
``--dry-run`` summary (`summary.py`).
"""
