"""The unit of work: what runs inside one Ray Tune trial (a single trial, a bundle, a fixed or tuned
ablation unit), how it reports epochs and writes its result rows through the store, the AE cache's
lock (`cache_lock.py`) and the fault injection used by the crash tests (`faults.py`).
"""
