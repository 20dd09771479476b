"""Where everything is kept, local or `s3://`: the storage abstraction (`storage.py`, `s3.py`), the
layout of a sweep directory (`layout.py`), the Parquet result store with the one writer of result
rows (`results.py`: `RowWriter`, `Ledger`), the pretrained-autoencoder cache (`cache.py`) and the
output rule of every command that writes files (`outputs.py`).
"""
