"""One slide, from pixels to its call, in data-flow order: tissue mask (``tissue``), patch grid
(``tiling``), tile dataset (``slide_tiles``), the model over the tiles (``runner``), the scanner
that writes the heatmap and the outputs (``scanner``), the lesion call (``slide_call``) and the
out-of-distribution check (``distribution_check``).

May import ``slidescan.report``, ``engine``, ``models``, ``io`` and the base modules; never
``batch``, ``train``, ``validate`` or the CLI.
"""
