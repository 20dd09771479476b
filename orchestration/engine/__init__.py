"""Running a sweep on Ray: validation before any Ray (`prepare.py`), submit and resume with Ray Tune and
the driver's store callback (`runner.py`), what runs inside a Tune trial (`tune_trial.py`), the
Optuna searcher (`search.py`), the local or cluster Ray session (`ray_session.py`, `loopback.py`),
submission to a cluster through Ray Jobs (`remote.py`) and the progress display (`progress.py`).
"""
