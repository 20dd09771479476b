"""The unit of work: a job is one Ray Tune trial's work (`base.py`: the `Job` protocol, `Member`,
`Reporter`, `RunContext`). Its kinds: a single trial (`trial.py`, whose `train_member` every Deep SAD
training runs), a bundle of trials trained at once (`bundle.py`) and the ablation's units
(`ablation.py`); `kinds.py` names them and plans them from a sweep's cells. `autoencoder.py` takes
pretrained autoencoders from the AE cache or trains them under its lock (`cache_lock.py`), one
routine for 1…K trainings; `faults.py` injects the failures the crash tests need. Jobs write
result rows only through `orchestration.store.results.RowWriter`.
"""
