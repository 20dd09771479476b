"""The paper-style report of an ablation: the statistics and what a report holds (`build.py`), the rank
tests of the methods (`stats.py`) and their tables and critical-difference diagram (`stats_render.py`), its
HTML/Markdown/PNG/CSV rendering and writing (`render.py`, which imports `build`), and the terminal views of
a sweep's store, ``sweep status`` and ``results show`` (`tables.py`).
"""
