"""cxr core: chest X-ray datasets, models, training, evaluation and inference.

This package never imports a UI library (textual, rich); ``tests/unit/test_import_hygiene.py`` enforces it.
"""

__version__ = "0.1.0"
