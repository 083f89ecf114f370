"""Making and measuring models: the trainer and its multi-process (DDP) helpers, threshold and
distribution calibration, patch-level evaluation and its report, metrics, and synthetic mosaic
slides for slide-level benchmarks.

May import every layer below it (``scan``, ``engine``, ``models``, ``io``); only the CLI imports it.
"""
