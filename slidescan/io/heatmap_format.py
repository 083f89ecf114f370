"""On-disk names of the heatmap zarr group, kept apart from the writer so readers share them.

Layout (zarr v3 group, also an OME-Zarr image, NGFF 0.5):

- ``probability``: float32 (rows, cols), tumour probability per grid cell, NaN where not scored.
  The OME-Zarr image's single resolution level.
- ``tissue``: bool (rows, cols), True where the cell holds enough tissue to be scored.
- ``labels/tissue/0``: uint8 (rows, cols), the same mask as an NGFF label image (1 = tissue,
  0 = background), because NGFF labels must be integers and viewers show them as a label layer.
- group attributes: ``format`` == :data:`FORMAT_NAME`, ``format_version`` ==
  :data:`FORMAT_VERSION`, ``ome`` (the NGFF metadata below), plus whatever the scan records
  (slide id, model, µm/px, ...).

Arrays carry ``dimension_names`` ``("y", "x")``, as NGFF 0.5 requires. Heatmaps written before
the OME metadata existed lack ``ome``, ``labels`` and ``dimension_names``; they have the same
``format_version`` because nothing slidescan reads changed, and :func:`read_heatmap` reads both.

Where a heatmap lies on the slide (``multiscales`` coordinate transformations)
-------------------------------------------------------------------------------
NGFF, napari and other OME-Zarr viewers place array element ``i`` at physical coordinate
``i * scale + translation``, and that coordinate is the element's *centre*. A slide shown in
micrometres therefore has level-0 pixel ``j``'s centre at ``j * slide_mpp``, and pixel ``j``
spans ``[j - 0.5, j + 0.5] * slide_mpp``. slidescan's level-0 geometry, by contrast, is in
pixel-*edge* coordinates: ``cell_origin_level0`` is the top-left corner of the area cell (0, 0)
stands for, and a cell covering edge coordinates ``[a, a + n)`` holds pixels ``a .. a + n - 1``.
Its centre, in pixel-centre coordinates, is ``a + (n - 1) / 2``. So with ``n =
cell_level0_px``, ``m = slide_mpp`` and ``(x0, y0) = cell_origin_level0``, per axis (y, x)::

    scale       = n * m                                   µm per cell
    translation = (y0 + (n - 1) / 2) * m,  (x0 + (n - 1) / 2) * m    µm, centre of cell (0, 0)

and cell ``(r, c)`` is drawn exactly over level-0 pixels ``x0 + c*n .. x0 + (c+1)*n - 1``
(likewise in y). ``n`` need not be a whole number of pixels. A viewer that shows the slide in
level-0 pixels rather than micrometres needs these numbers divided by ``m``. A heatmap written
without geometry gets scale 1, no translation and unitless axes (one unit per cell).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FORMAT_NAME = "slidescan-heatmap"
FORMAT_VERSION = "1"

PROBABILITY_KEY = "probability"
TISSUE_KEY = "tissue"

ATTR_FORMAT = "format"
ATTR_FORMAT_VERSION = "format_version"
ATTR_OME = "ome"

RESERVED_ATTRS = frozenset({ATTR_FORMAT, ATTR_FORMAT_VERSION, ATTR_OME})

NGFF_VERSION = "0.5"
AXES = ("y", "x")
LABELS_GROUP = "labels"
TISSUE_LABEL_ARRAY = "0"  # the label image's single resolution level, inside labels/tissue
TISSUE_LABEL_RGBA = (0, 170, 0, 255)


@dataclass(frozen=True)
class HeatmapGeometry:
    """Where the heatmap grid lies on the slide, as recorded in the scan attributes.

    ``cell_origin_level0`` is the level-0 ``(x, y)`` pixel-edge coordinate of the top-left of
    the area cell (0, 0) stands for; cells are ``cell_level0_px`` level-0 pixels square.
    """

    slide_mpp: float
    cell_origin_level0: tuple[float, float]
    cell_level0_px: float

    def __post_init__(self) -> None:
        if not self.slide_mpp > 0 or not self.cell_level0_px > 0:
            raise ValueError(
                f"slide_mpp and cell_level0_px must be positive, got {self.slide_mpp} "
                f"and {self.cell_level0_px}"
            )

    def scale_um(self) -> tuple[float, float]:
        """(y, x) size of one cell in micrometres."""
        side = float(self.cell_level0_px) * float(self.slide_mpp)
        return side, side

    def translation_um(self) -> tuple[float, float]:
        """(y, x) centre of cell (0, 0) in micrometres, pixel-centre convention (see module)."""
        half = (float(self.cell_level0_px) - 1.0) / 2.0
        x0, y0 = (float(v) for v in self.cell_origin_level0)
        return (y0 + half) * self.slide_mpp, (x0 + half) * self.slide_mpp


def ome_multiscales(name: str, path: str, geometry: HeatmapGeometry | None) -> list[dict[str, Any]]:
    """NGFF 0.5 ``multiscales`` for one (y, x) array at ``path`` (one resolution level)."""
    unit = {} if geometry is None else {"unit": "micrometer"}
    axes = [{"name": axis, "type": "space", **unit} for axis in AXES]
    transforms: list[dict[str, Any]] = [
        {"type": "scale", "scale": [1.0, 1.0] if geometry is None else list(geometry.scale_um())}
    ]
    if geometry is not None:
        transforms.append({"type": "translation", "translation": list(geometry.translation_um())})
    return [
        {
            "name": name,
            "axes": axes,
            "datasets": [{"path": path, "coordinateTransformations": transforms}],
        }
    ]


def ome_image_attrs(geometry: HeatmapGeometry | None) -> dict[str, Any]:
    """The root group's ``ome`` attribute: an image whose one level is ``probability``."""
    return {
        "version": NGFF_VERSION,
        "multiscales": ome_multiscales(PROBABILITY_KEY, PROBABILITY_KEY, geometry),
    }


def ome_labels_attrs() -> dict[str, Any]:
    """The ``labels`` group's ``ome`` attribute."""
    return {"version": NGFF_VERSION, "labels": [TISSUE_KEY]}


def ome_tissue_label_attrs(geometry: HeatmapGeometry | None) -> dict[str, Any]:
    """The ``labels/tissue`` group's ``ome`` attribute: same grid and placement as the image."""
    return {
        "version": NGFF_VERSION,
        "multiscales": ome_multiscales(TISSUE_KEY, TISSUE_LABEL_ARRAY, geometry),
        "image-label": {
            "colors": [{"label-value": 1, "rgba": list(TISSUE_LABEL_RGBA)}],
            "properties": [{"label-value": 1, "name": TISSUE_KEY}],
            "source": {"image": "../../"},
        },
    }
