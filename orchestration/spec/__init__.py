"""The sweep file: the pydantic model of a sweep and its problems (`model.py`), the checks across fields
(`checks.py`), the bounded YAML loader (`safe_yaml.py`), pydantic's errors as problems by file and field
(`problems.py`), and reading a file with all of them (`load.py`: `load_spec`, `parse_spec`). Imports run
one way: `model` ← `safe_yaml`, `problems`, `checks` ← `load`. Nothing here runs a trial or touches storage.
"""
