"""After a sweep: choosing and pulling the best checkpoint (`registry.py`), exporting a model for
serving and scoring new data with it (`export.py`).
"""
