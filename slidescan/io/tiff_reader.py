"""Direct region reads for tiled TIFF slides (Aperio SVS, generic tiled TIFF).

OpenSlide decodes these files at about 40 megapixels/s on one core; locating the compressed
tiles with ``tifffile`` and decoding them with ``imagecodecs`` (libjpeg-turbo, OpenJPEG) gives the
same pixels several times faster (``benchmarks/RESULTS.md`` §3). OpenSlide stays in charge of
what it does best — recognising the format, levels, metadata — and this reader only takes over
decoding for levels whose check tile matches OpenSlide's (:func:`open_tiff_reader`).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

# OpenSlide vendors whose levels are plain tiled TIFF pages; others (Philips sparse tiles,
# NDPI, MIRAX, ...) keep OpenSlide's decoder.
TIFF_VENDORS = frozenset({"aperio", "generic-tiff"})
# A decoded level-0 check tile may differ from OpenSlide's by IDCT rounding, never by more.
MAX_CHECK_DIFF = 4
# Other levels: OpenSlide interpolates the sub-pixel offset of a fractional downsample
# (e.g. 2.0005), so only the mean difference is bounded. Measured on a real SVS check tile: 4.4
# for that blur, 40 for the same tile flipped, 100 for another place.
MAX_CHECK_MEAN_DIFF = 10.0
_WHITE = 255
_CONTIG = 1  # TIFF PlanarConfiguration: samples interleaved
# Hostile-file bounds: real slides use 240-1024 px tiles whose JPEG/JPEG 2000 data is far
# smaller than the raw pixels. A page outside them stays with OpenSlide; a tile outside them is
# an error before a byte of it is decoded.
MAX_TILE_SIDE = 4096
_MAX_TILE_BYTES_PER_PIXEL = 4  # stored bytes per pixel a compressed (or raw RGB) tile may use
_JPEG = 7  # TIFF Compression: JPEG
_log = logging.getLogger(__name__)


class RegionReader(Protocol):
    """What the check compares against: OpenSlide-style level-0 location reads as RGB."""

    def __call__(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray: ...


@dataclass(frozen=True)
class _TiledPage:
    page: Any  # tifffile.TiffPage
    width: int
    height: int
    tile_w: int
    tile_h: int
    tiles_across: int


class TiffTileReader:
    """Reads RGB regions of some pyramid levels of one tiled TIFF straight from its tiles."""

    def __init__(self, tif: Any, pages: dict[int, Any]) -> None:
        self._tif = tif
        self._lock = threading.Lock()  # one file handle: seeks must not interleave
        self._levels = {
            level: _TiledPage(
                page=page,
                width=int(page.imagewidth),
                height=int(page.imagelength),
                tile_w=int(page.tilewidth),
                tile_h=int(page.tilelength),
                tiles_across=-(-int(page.imagewidth) // int(page.tilewidth)),
            )
            for level, page in pages.items()
        }

    @property
    def levels(self) -> frozenset[int]:
        """Pyramid levels this reader decodes."""
        return frozenset(self._levels)

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Level pixels [y, y+height) × [x, x+width) as uint8 RGB; outside the image is white."""
        lv = self._levels[level]
        out = np.full((height, width, 3), _WHITE, np.uint8)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + width, lv.width), min(y + height, lv.height)
        if x1 <= x0 or y1 <= y0:
            return out
        indices = [
            ty * lv.tiles_across + tx
            for ty in range(y0 // lv.tile_h, (y1 - 1) // lv.tile_h + 1)
            for tx in range(x0 // lv.tile_w, (x1 - 1) // lv.tile_w + 1)
        ]
        page = lv.page
        offsets = [page.dataoffsets[i] for i in indices]
        counts = [page.databytecounts[i] for i in indices]
        limit = lv.tile_w * lv.tile_h * _MAX_TILE_BYTES_PER_PIXEL + 65_536
        if max(counts) > limit:
            raise ValueError(f"a tile claims {max(counts)} bytes, more than {limit}: corrupt file")
        with self._lock:
            segments = list(self._tif.filehandle.read_segments(offsets, counts, indices))
        for data, index in segments:
            if not data:
                continue  # sparse tile: nothing scanned there, stays white
            if page.compression == _JPEG:
                _check_jpeg_size(data, lv.tile_w, lv.tile_h)
            tile = page.decode(data, index, jpegtables=page.jpegtables)[0]
            if tile is None or tile.shape[1:3] != (lv.tile_h, lv.tile_w):
                raise ValueError(f"tile {index} decodes to {getattr(tile, 'shape', None)}")
            ty, tx = divmod(index, lv.tiles_across)
            top, left = ty * lv.tile_h, tx * lv.tile_w
            # Intersection of this tile with the wanted box, in level coordinates.
            ya, yb = max(top, y0), min(top + lv.tile_h, y1)
            xa, xb = max(left, x0), min(left + lv.tile_w, x1)
            pixels = tile[0, ya - top : yb - top, xa - left : xb - left]
            out[ya - y : yb - y, xa - x : xb - x] = pixels
        return out

    def drop_level(self, level: int) -> None:
        """Stop decoding ``level`` (its reads go back to OpenSlide)."""
        self._levels.pop(level, None)

    def close(self) -> None:
        """Close the TIFF file."""
        self._tif.close()


def open_tiff_reader(
    path: Path,
    vendor: str | None,
    level_dimensions: tuple[tuple[int, int], ...],
    level_downsamples: tuple[float, ...],
    reference: RegionReader,
) -> TiffTileReader | None:
    """A direct reader for the levels of ``path`` that are plain tiled RGB pages, or None.

    Levels are matched to TIFF pages by size and must share level 0's compression and colour
    layout. Each matched level's densest tile is then decoded both ways and compared with
    ``reference`` (OpenSlide): level 0 must match to :data:`MAX_CHECK_DIFF` or there is no
    reader; another level that is off by more than :data:`MAX_CHECK_MEAN_DIFF` on average stays
    with OpenSlide. Any doubt — an unknown vendor, an unusual page, a codec ``imagecodecs``
    lacks — means None, and the caller keeps OpenSlide.
    """
    if vendor not in TIFF_VENDORS:
        return None
    try:
        import tifffile

        tif = tifffile.TiffFile(path)
    except Exception as exc:  # tifffile raises many types; OpenSlide remains the reader
        _log.info("%s: direct TIFF reader unavailable (%s); using OpenSlide", path.name, exc)
        return None
    try:
        pages = _match_levels(tif, level_dimensions)
        if 0 not in pages:
            tif.close()
            return None
        reader = TiffTileReader(tif, pages)
        if not _matches_reference(reader, reference, 0, 1.0):
            _log.info("%s: direct TIFF reader differs from OpenSlide; using OpenSlide", path.name)
            reader.close()
            return None
        for level in sorted(reader.levels - {0}):
            if not _matches_reference(reader, reference, level, level_downsamples[level]):
                _log.info("%s: level %d stays with OpenSlide (pixels differ)", path.name, level)
                reader.drop_level(level)
        return reader
    except Exception:
        _log.info("%s: direct TIFF reader failed; using OpenSlide", path.name, exc_info=True)
        tif.close()
        return None


def _check_jpeg_size(data: bytes, width: int, height: int) -> None:
    """Refuse a JPEG tile whose frame header claims another size than the page's tiles: a
    crafted header must not make the decoder allocate gigabytes."""
    i = 2  # after SOI
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            break
        marker = data[i + 1]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame
            h = int.from_bytes(data[i + 5 : i + 7], "big")
            w = int.from_bytes(data[i + 7 : i + 9], "big")
            if (w, h) != (width, height):
                raise ValueError(
                    f"JPEG tile header says {w}×{h}, the page's tiles are {width}×{height}"
                )
            return
        if marker == 0xD8 or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    raise ValueError("JPEG tile without a frame header")


def _layout(page: Any) -> tuple[Any, ...]:
    return (
        page.compression,
        page.photometric,
        getattr(page, "subsampling", None),
        page.jpegtables is not None,
    )


def _usable(page: Any) -> bool:
    return bool(
        page.is_tiled
        and 0 < page.tilewidth <= MAX_TILE_SIDE
        and 0 < page.tilelength <= MAX_TILE_SIDE
        and page.samplesperpixel == 3
        and page.bitspersample == 8
        and page.planarconfig == _CONTIG
        and page.imagedepth == 1
        and np.dtype(page.dtype) == np.uint8
    )


def _match_levels(tif: Any, level_dimensions: tuple[tuple[int, int], ...]) -> dict[int, Any]:
    by_size: dict[tuple[int, int], Any] = {}
    for page in tif.pages:
        size = (int(page.imagewidth), int(page.imagelength))
        if size not in by_size and _usable(page):
            by_size[size] = page
    sizes = [(int(w), int(h)) for w, h in level_dimensions]
    base = by_size.get(sizes[0])
    if base is None:
        return {}
    return {
        level: by_size[size]
        for level, size in enumerate(sizes)
        if size in by_size and _layout(by_size[size]) == _layout(base)
    }


def _matches_reference(
    reader: TiffTileReader, reference: RegionReader, level: int, downsample: float
) -> bool:
    lv = reader._levels[level]
    index = int(np.argmax(lv.page.databytecounts))
    ty, tx = divmod(index, lv.tiles_across)
    x, y = tx * lv.tile_w, ty * lv.tile_h
    w, h = min(lv.tile_w, lv.width - x), min(lv.tile_h, lv.height - y)
    try:
        ours = reader.read(level, x, y, w, h).astype(np.int16)
        location = (round(x * downsample), round(y * downsample))
        theirs = reference(location, level, (w, h)).astype(np.int16)
    except Exception:  # a tile either side cannot decode: not ours to read
        return False
    if ours.shape != theirs.shape:
        return False
    diff = np.abs(ours - theirs)
    if level == 0:
        return int(diff.max()) <= MAX_CHECK_DIFF
    return float(diff.mean()) <= MAX_CHECK_MEAN_DIFF
