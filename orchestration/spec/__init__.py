"""The sweep file: the pydantic model of a sweep (`model.py`), the checks across fields (`checks.py`),
the bounded YAML loader (`safe_yaml.py`) and the reporting of problems by file and field
(`problems.py`). Nothing here runs a trial or touches storage.
"""
