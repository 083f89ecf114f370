"""Scanning slides, in data-flow order: tissue mask (``tissue``), patch grid (``tiling``), tile
dataset (``slide_tiles``), the scanner that runs the model and writes the heatmap (``scanner``),
the per-slide lesion call (``slide_call``), the out-of-distribution check (``distribution_check``),
the overlay picture (``overlay``), and directory and Dask runs over many slides (``batch``,
``cluster``).

May import ``slidescan.engine``, ``slidescan.io``, ``slidescan.models`` and ``slidescan.errors``;
never ``slidescan.train`` or the CLI.
"""
