"""After a sweep: pulling the best checkpoint from the result store (`registry.py`) and exporting a
model for serving (`export.py`).
"""
