"""Malformed slides for the hostile-file tests (helpers, not tests): one valid tiled pyramid TIFF,
then seeded mutations of its header, IFDs, tags and length, and a check that each one ends in a
one-line error or a complete scan, in bounded time.

Used by tests/io/test_malformed_slides.py (a sample) and benchmarks/malformed_slides.py (all).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from slide_fixtures import tissue_image, write_pyramid

from slidescan.errors import SlidescanError
from slidescan.io.outputs import is_complete
from slidescan.scan.scanner import Scanner

MUTATIONS = (
    "bitflip-header", "bitflip-ifd", "tile-offsets", "tile-bytecounts", "zero-tiles",
    "dimensions", "tile-size", "compression", "samples", "truncate",
)  # fmt: skip


@dataclass(frozen=True)
class Case:
    """One malformed slide: which mutation, which seed."""

    mutation: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.mutation}-{self.seed}"


def cases(n: int) -> list[Case]:
    """``n`` cases, the mutations taking turns."""
    return [Case(MUTATIONS[i % len(MUTATIONS)], i // len(MUTATIONS)) for i in range(n)]


def write_source(path: Path, mpp: float) -> Path:
    """The valid slide every case starts from: JPEG tiles (a real decoder to attack), 3 levels."""
    rgb = tissue_image(1024, 1280, seed=7)[0]
    return write_pyramid(path, rgb, mpp=mpp, tile=256, compression="jpeg")


def _tags(data: bytes) -> list[tuple[int, int, int, int, int]]:
    """(tag code, field type, count, value-or-offset position, value offset) of every IFD entry
    (classic little-endian TIFF, as tifffile writes it)."""
    out = []
    (ifd,) = struct.unpack_from("<I", data, 4)
    while 0 < ifd < len(data) - 2:
        (n,) = struct.unpack_from("<H", data, ifd)
        for k in range(n):
            pos = ifd + 2 + 12 * k
            code, ftype, count = struct.unpack_from("<HHI", data, pos)
            (value,) = struct.unpack_from("<I", data, pos + 8)
            out.append((code, ftype, count, pos + 8, value))
        (ifd,) = struct.unpack_from("<I", data, ifd + 2 + 12 * n)
    return out


def _set_values(data: bytearray, code: int, make: Callable[[int], int]) -> None:
    """Overwrite every value of tag ``code`` (SHORT or LONG, inline or not) with make(index)."""
    for tag, ftype, count, pos, value in _tags(bytes(data)):
        if tag != code:
            continue
        size = 2 if ftype == 3 else 4
        fmt = "<H" if size == 2 else "<I"
        where = pos if count * size <= 4 else value
        for i in range(count):
            struct.pack_into(fmt, data, where + i * size, make(i) % (1 << (8 * size)))


def mutate(source: bytes, case: Case) -> bytes:
    """The bytes of ``case``'s malformed slide."""
    rng = np.random.default_rng(case.seed)
    data = bytearray(source)
    ifd_positions = [pos for *_, pos, _ in _tags(source)]
    m = case.mutation
    if m == "bitflip-header":
        for _ in range(1 + case.seed % 4):
            i = int(rng.integers(0, 16))
            data[i] ^= 1 << int(rng.integers(0, 8))
    elif m == "bitflip-ifd":
        for _ in range(1 + case.seed % 8):
            i = int(rng.choice(ifd_positions)) - 8 + int(rng.integers(0, 12))
            data[i] ^= 1 << int(rng.integers(0, 8))
    elif m == "tile-offsets":
        huge = [len(data) + 10**6, 2**32 - 1, 0, len(data) - 3]
        _set_values(data, 324, lambda i: huge[(i + case.seed) % len(huge)])
    elif m == "tile-bytecounts":
        huge = [2**31, 2**32 - 1, len(data) * 4, 10**9]
        _set_values(data, 325, lambda i: huge[(i + case.seed) % len(huge)])
    elif m == "zero-tiles":
        _set_values(data, 325, lambda i: 0)
    elif m == "dimensions":
        absurd = [2**31 - 1, 10**6, 0, 1, 65535 * 65535]
        code = 256 if case.seed % 2 else 257  # ImageWidth / ImageLength
        _set_values(data, code, lambda i: absurd[case.seed % len(absurd)])
    elif m == "tile-size":
        absurd = [16, 65536 - 16, 0, 8192, 2**20]
        code = 322 if case.seed % 2 else 323  # TileWidth / TileLength
        _set_values(data, code, lambda i: absurd[case.seed % len(absurd)])
    elif m == "compression":
        codes = [50000, 34712, 5, 32773, 0, 2]
        _set_values(data, 259, lambda i: codes[case.seed % len(codes)])
    elif m == "samples":
        values = [1, 4, 0, 255]
        _set_values(data, 277, lambda i: values[case.seed % len(values)])
    elif m == "truncate":
        keep = 0.02 + 0.96 * ((case.seed * 0.618034) % 1.0)
        del data[int(len(data) * keep) :]
    return bytes(data)


@dataclass
class Outcome:
    case: Case
    kind: str  # "error" (one clean line), "scanned" (complete result) or "BAD: ..."
    seconds: float
    message: str = ""


def run_case(case: Case, source: bytes, folder: Path, scanner: Scanner) -> Outcome:
    """Write ``case``'s slide into ``folder`` and scan it; classify how it ended."""
    slide = folder / f"{case.name}.tif"
    slide.write_bytes(mutate(source, case))
    out = folder / f"{case.name}.zarr"
    start = time.perf_counter()
    try:
        result = scanner.scan(slide, out)
    except SlidescanError as exc:
        text = str(exc)
        kind = "error" if text.strip() and "\n" not in text else f"BAD: not one line: {text!r}"
        return Outcome(case, kind, time.perf_counter() - start, text)
    except Exception as exc:  # anything but a SlidescanError is a crash
        return Outcome(case, f"BAD: {type(exc).__name__}: {exc}", time.perf_counter() - start)
    seconds = time.perf_counter() - start
    if not is_complete(result.heatmap):
        return Outcome(case, "BAD: scan returned without a complete result", seconds)
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".")]
    if leftovers:
        return Outcome(case, f"BAD: left {leftovers}", seconds)
    return Outcome(case, "scanned", seconds)


def run_corpus(n: int, folder: Path, scanner: Scanner, mpp: float) -> Iterator[Outcome]:
    """Every outcome of the first ``n`` cases."""
    source = write_source(folder / "source.tif", mpp).read_bytes()
    for case in cases(n):
        yield run_case(case, source, folder, scanner)
