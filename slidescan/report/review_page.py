"""The review page of a directory run: ``OUT/index.html``, one self-contained table of every slide.

The page needs no network and no server: inline CSS and JavaScript, relative links to each slide's
report, GeoJSON and overlay, so it works from a file share (``file://``) and when the folder moves.
While a batch runs it is rewritten after every slide and reloads itself; the final version does not.
Everything from files (slide names are user input) is escaped, and a Content-Security-Policy
allows only this page's own script and style, so an escaping slip still cannot run code.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import logging
import os
import string
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

from slidescan.about import RESEARCH_USE_NOTICE, __version__
from slidescan.io.atomic import atomic_write
from slidescan.io.outputs import SlideOutputs, geojson_path, read_report, report_path
from slidescan.io.pacing import Pacer
from slidescan.report.heatmap_thumbnail import write_heatmap_thumbnail
from slidescan.report.outcome import SlideOutcome, outcome_from_previous, under_key
from slidescan.vocabulary import CATEGORY_NAMES, CATEGORY_RANK, SlideStatus

PAGE_NAME = "index.html"
REFRESH_SECONDS = 10
_TEMPLATES = resources.files("slidescan.report") / "templates"
# Inlined after a line break, exactly as hashed for the page's Content-Security-Policy.
_STYLE = "\n" + (_TEMPLATES / "review_page.css").read_text(encoding="utf-8")
_SCRIPT = "\n" + (_TEMPLATES / "review_page.js").read_text(encoding="utf-8")
_TEMPLATE = string.Template((_TEMPLATES / "review_page.html").read_text(encoding="utf-8"))
FINISHED = frozenset(
    {SlideStatus.done, SlideStatus.redone, SlideStatus.skipped, SlideStatus.recalled}
)  # statuses that leave a result on disk
THUMBNAILS = "thumbnails"  # OUT/thumbnails/<slide>.png: the picture of a slide without an overlay

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReviewEntry:
    """One slide's row: its outcome, numbers from its report, and relative links to its files."""

    slide: str
    status: SlideStatus  # pending while the batch has not reached it
    positive: bool | None = None
    category: str = ""
    max_probability: float | None = None
    largest_lesion_mm: float | None = None
    lesions: int | None = None
    tissue_mm2: float | None = None
    reliable: bool | None = None
    flags: str = ""
    error: str = ""
    operating_point: str = ""  # the lesion call's (see report.outcome.SlideOutcome)
    seed_threshold: float | None = None
    report: str = ""  # href relative to the page; "" when there is no such file
    geojson: str = ""
    overlay: str = ""


def _number(value: Any) -> float | None:
    """A finite float, or None for anything else (missing keys, null, text)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number and abs(number) != float("inf") else None


def tissue_area_mm2(report: dict[str, Any]) -> float | None:
    """Scanned tissue in mm²: tissue cells × the area of one cell (level-0 px × slide µm/px)."""
    attrs = report.get("attributes")
    attrs = attrs if isinstance(attrs, dict) else {}
    cells = _number(report.get("tiles_scanned"))
    side_px, mpp = _number(attrs.get("cell_level0_px")), _number(attrs.get("slide_mpp"))
    if cells is None or side_px is None or mpp is None:
        return None
    return cells * (side_px * mpp / 1000.0) ** 2


def href(target: Path, page_dir: Path) -> str:
    """A URL for ``target`` relative to the page (absolute ``file:`` URL if none exists)."""
    try:
        relative = os.path.relpath(target.absolute(), page_dir.absolute())
    except ValueError:  # another drive on Windows: no relative path
        return target.absolute().as_uri()
    # "./" keeps a name such as "javascript:x.json" a path, never a URL scheme.
    return "./" + quote(Path(relative).as_posix(), safe="/")


def entry_for(outcome: SlideOutcome, out_dir: Path, overlay_dir: Path | None) -> ReviewEntry:
    """The row of a slide the batch has finished with: the outcome, plus its report's numbers and
    links to the files on disk (none for failed or busy slides: what is there is not this run's)."""
    base = ReviewEntry(
        slide=outcome.slide, status=outcome.status, positive=outcome.positive,
        category=outcome.category, largest_lesion_mm=outcome.largest_lesion_mm,
        lesions=outcome.lesions, reliable=outcome.reliable, flags=outcome.flags,
        error=outcome.error, operating_point=outcome.operating_point,
        seed_threshold=outcome.seed_threshold,
    )  # fmt: skip
    if outcome.status not in FINISHED or not outcome.heatmap:
        return base
    heatmap = out_dir / outcome.heatmap
    report_file, geojson = report_path(heatmap), geojson_path(heatmap)
    overlay = SlideOutputs.in_folder(
        Path(outcome.slide), out_dir, overlay_dir, key=outcome.slide
    ).overlay
    if overlay is None or not overlay.is_file():
        overlay = _thumbnail(heatmap, out_dir, outcome.slide)
    try:
        report = json.loads(report_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        logger.warning("review page: %s: unreadable report (%s)", report_file, exc)
        report = {}
    report = report if isinstance(report, dict) else {}
    call = report.get("call")
    call = call if isinstance(call, dict) else {}
    return replace(
        base,
        max_probability=_number(call.get("max_probability")),
        tissue_mm2=tissue_area_mm2(report),
        report=href(report_file, out_dir) if report_file.is_file() else "",
        geojson=href(geojson, out_dir) if geojson.is_file() else "",
        overlay=href(overlay, out_dir) if overlay and overlay.is_file() else "",
    )


def _thumbnail(heatmap: Path, out_dir: Path, key: str) -> Path | None:
    """The slide's heatmap thumbnail, made when missing or older than its report."""
    thumb = SlideOutputs.in_folder(Path(key), out_dir, out_dir / THUMBNAILS, key=key).overlay
    assert thumb is not None
    try:
        stale = not thumb.is_file() or thumb.stat().st_mtime < report_path(heatmap).stat().st_mtime
        if stale:
            write_heatmap_thumbnail(heatmap, thumb)
    except Exception as exc:  # a picture is never worth failing the page for
        logger.warning("review page: %s: no thumbnail (%s)", heatmap, exc)
        return None
    return thumb


def script_json(value: Any) -> str:
    """JSON that is safe inside a ``<script>`` element: no ``</script>``, ``<!--`` or line
    separators that end it or the statement early."""
    text = json.dumps(value, ensure_ascii=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):  # fmt: skip
        text = text.replace(char, escape)
    return text


def _csp_hash(source: str) -> str:
    """The CSP source that allows exactly this inline script or style."""
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


def _esc(text: object) -> str:
    """Text made safe for HTML content and quoted attributes."""
    return html.escape(str(text), quote=True)


def _fixed(value: float | int | None, digits: int) -> tuple[str, str]:
    """(sort key, shown text) of a number; unknown sorts last and shows a dash."""
    if value is None:
        return "", "—"
    return repr(float(value)), f"{value:,.{digits}f}"


# Cells: (sort key, inner HTML); an empty key is an unknown, which always sorts last.


def _probability(value: float | None) -> tuple[str, str]:
    """A probability to three places that never rounds onto 0 or 1 (0.99999 is not 1.000)."""
    key, shown = _fixed(value, 3)
    if value is not None and 0.9995 <= value < 1:
        shown = "> 0.999"
    elif value is not None and 0 < value < 0.0005:
        shown = "< 0.001"
    return key, shown


def _call_cell(entry: ReviewEntry) -> tuple[str, str]:
    if entry.positive is None:
        return "", "—"
    word, key = ("POSITIVE", "1") if entry.positive else ("negative", "0")
    if entry.reliable is False:  # not a call to trust: never the green or red badge
        return key, f'<span class="badge warn">{word}?</span> <span class="why">unreliable</span>'
    return key, f'<span class="badge {"pos" if entry.positive else "neg"}">{word}</span>'


def _slide_cell(entry: ReviewEntry) -> tuple[str, str]:
    links = [
        f'<a href="{_esc(url)}">{label}</a>'
        for url, label in ((entry.report, "report"), (entry.geojson, "GeoJSON"))
        if url
    ]
    files = f'<div class="files">{" · ".join(links)}</div>' if links else ""
    return entry.slide.lower(), f'<span class="name">{_esc(entry.slide)}</span>{files}'


def _reliability_cell(entry: ReviewEntry) -> tuple[str, str]:
    if entry.reliable is None:
        return "", "—"
    if entry.reliable:
        return "1", "reliable"
    why = f'<div class="why">{_esc(entry.flags)}</div>' if entry.flags else ""
    return "0", f'<span class="badge warn">unreliable</span>{why}'


def _category_cell(entry: ReviewEntry) -> tuple[str, str]:
    if not entry.category:
        return "", "—"
    words = CATEGORY_NAMES.get(entry.category, entry.category)
    return str(CATEGORY_RANK.get(entry.category, "")), _esc(words)


def _overlay_cell(entry: ReviewEntry) -> tuple[str, str]:
    if not entry.overlay:
        return "", "—"
    url = _esc(entry.overlay)
    alt = _esc(f"heatmap of {entry.slide}")
    return "", f'<a href="{url}"><img src="{url}" alt="{alt}" loading="lazy"></a>'


# key, heading, sort type, cell: (sort key, inner HTML)
Column = tuple[str, str, str, Callable[[ReviewEntry], tuple[str, str]]]
COLUMNS: list[Column] = [
    ("overlay", "Heatmap", "", _overlay_cell),
    ("slide", "Slide", "text", _slide_cell),
    ("call", "Call", "num", _call_cell),
    ("category", "Category", "num", _category_cell),
    ("max_p", "Max p", "num", lambda e: _probability(e.max_probability)),
    ("largest_mm", "Largest lesion mm", "num", lambda e: _fixed(e.largest_lesion_mm, 2)),
    ("lesions", "Lesions", "num", lambda e: _fixed(e.lesions, 0)),
    ("tissue_mm2", "Tissue mm²", "num", lambda e: _fixed(e.tissue_mm2, 2)),
    ("reliability", "Reliability", "num", _reliability_cell),
    ("status", "Status", "text", lambda e: (
        e.status, f'<span class="status {_esc(e.status)}">{_esc(e.status)}</span>')),
    ("error", "Error", "text", lambda e: (e.error.lower(), _esc(e.error))),
]  # fmt: skip


def _row(entry: ReviewEntry, index: int, columns: Sequence[Column]) -> str:
    """One ``<tr>``; its classes drive the colours and the "show" filter."""
    kinds = [
        {True: "positive", False: "negative", None: "nocall"}[entry.positive],
        "unreliable" if entry.reliable is False else "",
        entry.status,
    ]
    cells = []
    for key, _, _, cell in columns:
        sort_key, inner = cell(entry)
        cells.append(f'<td class="c-{key}" data-v="{_esc(sort_key)}">{inner}</td>')
    return (
        f'<tr class="{_esc(" ".join(k for k in kinds if k))}" data-i="{index}">'
        + "".join(cells)
        + "</tr>"
    )


def render_page(
    entries: Sequence[ReviewEntry],
    *,
    finished: bool,
    title: str = "slidescan review",
    updated: str | None = None,
    refresh_seconds: int = REFRESH_SECONDS,
    patients: Sequence[dict[str, Any]] = (),
) -> str:
    """The whole page, one row per entry (``pending`` entries count as not yet done), and the
    patients' pN stages (rows of ``scan.patients.stage_patients``) when there are any."""
    columns = COLUMNS
    total = len(entries)
    done = sum(e.status != SlideStatus.pending for e in entries)
    counts = {
        "positive": sum(e.positive is True for e in entries),
        "negative": sum(e.positive is False for e in entries),
        "unreliable": sum(e.reliable is False for e in entries),
        "failed": sum(e.status == SlideStatus.failed for e in entries),
    }
    updated = updated or time.strftime("%Y-%m-%d %H:%M:%S")
    if finished:
        state_text = "finished" if done == total else "stopped before the end"
    else:
        state_text = f"running: this page reloads every {refresh_seconds} s"
    state = {"done": done, "total": total, "finished": finished, "refresh_seconds": refresh_seconds}
    heads = "".join(
        f'<th data-key="{key}" data-type="{kind}" aria-sort="none"><button type="button">'
        f"{_esc(label)}</button></th>"
        if kind
        else f'<th data-key="{key}">{_esc(label)}</th>'
        for key, label, kind, _ in columns
    )
    body = "\n".join(_row(e, i, columns) for i, e in enumerate(entries))
    files = ['<a href="./summary.csv">summary.csv</a>']
    if counts["failed"]:
        files.append('<a href="./slidescan.log">slidescan.log</a> (failures)')
    options = "".join(
        f'<option value="{value}">{label}</option>'
        for value, label in (("all", "all slides"), ("positive", "positive"),
                             ("negative", "negative"), ("unreliable", "unreliable"),
                             ("failed", "failed"), ("pending", "not yet done"))
    )  # fmt: skip
    refresh = (
        ""
        if finished
        else f'<noscript><meta http-equiv="refresh" content="{refresh_seconds}"></noscript>'
    )
    csp = (
        f"default-src 'none'; img-src 'self' file: data:; style-src {_csp_hash(_STYLE)}; "
        f"script-src {_csp_hash(_SCRIPT)}; base-uri 'none'; form-action 'none'"
    )
    summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n) or "no results yet"
    points = sorted(
        {(e.operating_point, e.seed_threshold) for e in entries if e.operating_point},
        key=lambda p: (p[0], -1.0 if p[1] is None else p[1]),
    )
    call = "; ".join(f"{name} (seed threshold {seed:.4g})" if seed is not None else name
                     for name, seed in points)  # fmt: skip
    if call:
        summary += f"; lesion call: {call}"
    return _TEMPLATE.substitute(
        csp=_esc(csp),
        refresh=refresh,
        title=_esc(title),
        done=done,
        total=total,
        style=_STYLE,
        notice=_esc(RESEARCH_USE_NOTICE),
        progress_max=max(total, 1),
        summary=_esc(summary),
        state=_esc(state_text),
        updated=_esc(updated),
        options=options,
        heads=heads,
        body=body,
        patients=_patients_section(patients),
        version=_esc(__version__),
        files=" · ".join(files),
        state_json=script_json(state),
        script=_SCRIPT,
    )


def _patients_section(rows: Sequence[dict[str, Any]]) -> str:
    """The patients table: stage, nodes with metastases, and what makes a stage incomplete."""
    if not rows:
        return ""
    body = "\n".join(
        f"<tr><td>{_esc(r['patient'])}</td><td><strong>{_esc(r['stage'])}</strong></td>"
        f"<td>{_esc(r['nodes_with_metastases'])} of {_esc(r['slides'])}</td>"
        f"<td>{_esc(r['note'] or 'all nodes scanned and reliable')}</td></tr>"
        for r in rows
    )
    return (
        '<section id="patients"><h2>Patients (pN stage, Camelyon17 rules; one node per slide)'
        "</h2><table><thead><tr><th>patient</th><th>stage</th><th>nodes with metastases</th>"
        f"<th>note</th></tr></thead><tbody>\n{body}\n</tbody></table></section>"
    )


def finished_elsewhere(slide: str, out_dir: Path) -> SlideOutcome | None:
    """The outcome of ``slide`` from a complete result that another run left in ``out_dir``."""
    outputs = SlideOutputs.in_folder(Path(slide), out_dir, key=slide)
    if not outputs.is_complete():
        return None
    try:
        outcome = outcome_from_previous(Path(slide), outputs.heatmap, read_report(outputs.heatmap))
    except Exception:  # unreadable: the row stays "busy"
        return None
    if outcome is None:
        return None
    outcome.status = SlideStatus.done
    return under_key(outcome, slide)


class ReviewPage:
    """``OUT/index.html`` of one directory run, rewritten as slides finish. Never raises: the page
    is a view of the results, and failing to write it must not fail the batch."""

    def __init__(
        self,
        out_dir: Path,
        slides: Iterable[Path | str],
        overlay_dir: Path | None,
        pacer: Pacer | None = None,
    ) -> None:
        """Every slide (a path, known by its name, or a batch key) starts as ``pending``, in batch
        order. Rewrites after :meth:`add` are paced (see :class:`Pacer`);
        ``write(finished=True)`` always writes."""
        self.pacer = pacer or Pacer()
        self.out_dir = out_dir
        self.overlay_dir = overlay_dir
        self.path = out_dir / PAGE_NAME
        keys = [s if isinstance(s, str) else s.name for s in slides]
        self.entries = {k: ReviewEntry(slide=k, status=SlideStatus.pending) for k in keys}
        self.patients: list[dict[str, Any]] = []  # set by a run with --patients, at its end

    def _pick_up_busy_slides(self) -> None:
        for name, entry in list(self.entries.items()):
            if entry.status == SlideStatus.busy:
                outcome = finished_elsewhere(name, self.out_dir)
                if outcome is not None:
                    self.entries[name] = entry_for(outcome, self.out_dir, self.overlay_dir)

    def add(self, outcome: SlideOutcome) -> None:
        """Record a finished slide; rewrite the page when the pacer says so."""
        try:
            self.entries[outcome.slide] = entry_for(outcome, self.out_dir, self.overlay_dir)
        except Exception as exc:  # the row from the outcome alone beats no page
            logger.warning("review page: %s: %s", outcome.slide, exc)
            self.entries[outcome.slide] = ReviewEntry(
                slide=outcome.slide, status=outcome.status, error=outcome.error
            )
        if self.pacer.due():
            self.write()

    def write(self, *, finished: bool = False) -> bool:
        """Write the page atomically; False (and a logged warning) when that failed.

        The final version also shows slides that another run sharing the folder was writing
        ("busy" here) and has finished since.
        """
        try:
            if finished:
                self._pick_up_busy_slides()
            with self.pacer.timed():
                page = render_page(
                    list(self.entries.values()), finished=finished,
                    patients=self.patients,
                )  # fmt: skip
                with atomic_write(self.path) as tmp:
                    tmp.write_text(page, encoding="utf-8")
        except Exception as exc:
            logger.warning("could not write the review page %s: %s", self.path, exc)
            return False
        return True
