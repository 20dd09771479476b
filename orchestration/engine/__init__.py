"""Running a sweep: submit and resume (`runner.py`), the local or remote Ray session
(`ray_session.py`, `loopback.py`), the Ray Tune function (`tune_trial.py`), the Optuna search adapter
(`search.py`), submission to a cluster through Ray Jobs (`remote.py`) and progress display
(`progress.py`).
"""
