"""Where everything is kept, local or `s3://`: the storage abstraction (`storage.py`, `s3.py`), the
Parquet result store and its row writer (`results.py`), the pretrained-autoencoder cache
(`cache.py`) and the locations of a sweep's outputs (`outputs.py`).
"""
