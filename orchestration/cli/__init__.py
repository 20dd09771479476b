"""The command line: the typer app (`app.py`, entry point `deepsad`) and one module per command group
(`sweep`, `train`, `data`, `deploy`, `report`). It parses flags, turns bad input into one-line
errors with exit 2, and calls the layers below; it holds no training or storage logic of its own.
"""
