"""On-disk names of the heatmap zarr group, kept apart from the writer so readers share them.

Layout (zarr v3 group):

- ``probability``: float32 (rows, cols), tumour probability per grid cell, NaN where not scored.
- ``tissue``: bool (rows, cols), True where the cell holds enough tissue to be scored.
- group attributes: ``format`` == :data:`FORMAT_NAME`, ``format_version`` ==
  :data:`FORMAT_VERSION`, plus whatever the scan records (slide id, model, µm/px, ...).

Bump :data:`FORMAT_VERSION` whenever a reader of the old layout would misread the new one.
"""

from __future__ import annotations

FORMAT_NAME = "slidescan-heatmap"
FORMAT_VERSION = "1"

PROBABILITY_KEY = "probability"
TISSUE_KEY = "tissue"

ATTR_FORMAT = "format"
ATTR_FORMAT_VERSION = "format_version"

RESERVED_ATTRS = frozenset({ATTR_FORMAT, ATTR_FORMAT_VERSION})
