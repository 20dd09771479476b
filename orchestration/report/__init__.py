"""The paper-style report of an ablation: tables of cells (`tables.py`), the statistics and figures
(`build.py`) and the HTML/Markdown rendering (`render.py`).
"""
