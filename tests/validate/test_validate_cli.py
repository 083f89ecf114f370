"""`slidescan validate` on results folders built from reports, and `run --patients` for real."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from report_fixtures import make_report
from scan_helpers import CELL_UM, FAST, SLIDE_MPP, invoke
from sklearn.metrics import roc_auc_score
from slide_fixtures import square_image, write_pyramid

from slidescan.io.annotations import read_annotations
from slidescan.report.slide_report import CallReport, LesionReport, SlideReport, read_slide_report
from slidescan.validate.slide_metrics import slide_score

SUMMARY = ["slide", "status", "heatmap"]


def _call(category: str, diameter: float, at: tuple[float, float] = (500.0, 500.0)) -> CallReport:
    lesions = (
        ()
        if category == "negative"
        else (LesionReport(1, 1, diameter, 0.1, 5, 0.9, 0.97, category, at),)
    )
    return CallReport(
        positive=category in ("micrometastasis", "macrometastasis"), category=category,
        largest_diameter_mm=diameter, seed_threshold=0.98, extent_threshold=0.7, seed_tiles=3,
        positive_tiles=len(lesions), tissue_tiles=100, max_probability=0.4 + diameter / 10,
        lesions=lesions,
    )  # fmt: skip


def _results(folder: Path, calls: dict[str, CallReport], failed: tuple[str, ...] = ()) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for slide, call in calls.items():
        stem = Path(slide).stem
        report = make_report(slide=slide, heatmap=f"{stem}.zarr", call=call)
        report.write(folder / f"{stem}.json")
        rows.append({"slide": slide, "status": "done", "heatmap": f"{stem}.zarr"})
    rows += [{"slide": s, "status": "failed", "heatmap": ""} for s in failed]
    with open(folder / "summary.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=SUMMARY)
        writer.writeheader()
        writer.writerows(rows)
    return folder


def _truth(path: Path, rows: list[tuple[str, ...]], header: str = "slide,label") -> Path:
    path.write_text(header + "\n" + "".join(",".join(r) + "\n" for r in rows))
    return path


CALLS = {
    "n1.svs": _call("negative", 0.0), "n2.svs": _call("itc", 0.1),
    "n3.svs": _call("micrometastasis", 0.5),  # a false positive
    "m1.svs": _call("micrometastasis", 0.8), "m2.svs": _call("macrometastasis", 3.0),
    "m3.svs": _call("negative", 0.0),  # a missed metastasis
}  # fmt: skip
TRUTH = [("n1.svs", "negative"), ("n2.svs", "itc"), ("n3.svs", "negative"),
         ("m1.svs", "micro"), ("m2.svs", "macro"), ("m3.svs", "micro")]  # fmt: skip


def test_slide_level_figures_equal_scikit_learn(tmp_path: Path) -> None:
    results = _results(tmp_path / "res", CALLS, failed=("broken.svs",))
    truth = _truth(tmp_path / "t.csv", [*TRUTH, ("broken.svs", "macro")])
    out = invoke("validate", results, "--truth", truth, "--out", tmp_path / "v")
    assert out.exit_code == 0, out.output
    assert "1 failed (not counted)" in out.output and "discordant: m3.svs" in out.output
    data = json.loads((tmp_path / "v" / "validation.json").read_text())
    assert data["slides"] == 6 and data["failed"] == ["broken.svs"]
    assert data["sensitivity"]["count"] == "2/3" and data["specificity"]["count"] == "2/3"
    assert data["accuracy"]["value"] == pytest.approx(4 / 6)
    y = [1 if label in ("micro", "macro") else 0 for _, label in TRUTH]
    scores = [slide_score(make_report(call=CALLS[s])) for s, _ in TRUTH]
    assert data["slide_auc"]["value"] == pytest.approx(roc_auc_score(y, scores))
    assert data["confusion"]["matrix"][2][0] == 1  # micro called negative
    assert {d["slide"] for d in data["discordant"]} == {"n3.svs", "m3.svs"}
    for name in ("validation.html", "validation-roc.png", "validation-confusion.png"):
        assert (tmp_path / "v" / name).stat().st_size > 0
    assert "research use" in (tmp_path / "v" / "validation.html").read_text().lower()
    # The figures hold for the operating point the run used: said on every output.
    assert data["operating_point"] == {"name": ["standard"], "seed_threshold": [0.98]}
    assert "operating point: standard (seed threshold 0.98)" in out.output
    assert (
        "Operating point of the lesion call: standard (seed threshold 0.98)"
        in (tmp_path / "v" / "validation.html").read_text()
    )


def test_a_run_mixing_operating_points_says_so(tmp_path: Path) -> None:
    """Issue 22: figures hold for the points the run used; a mixed folder names them all."""
    results = _results(tmp_path / "res", CALLS)
    report = read_slide_report(results / "m1.json")
    settings = {**report.settings, "operating_point": "high"}
    call = dataclasses.replace(report.call, seed_threshold=0.95)
    dataclasses.replace(report, settings=settings, call=call).write(results / "m1.json")
    out = invoke("validate", results, "--truth", _truth(tmp_path / "t.csv", TRUTH), "--json")
    assert out.exit_code == 0, out.output
    point = json.loads(out.stdout)["operating_point"]
    assert point == {"name": ["high", "standard"], "seed_threshold": [0.95, 0.98]}


def test_froc_from_qupath_and_asap_annotations(tmp_path: Path) -> None:
    mpp = 0.5  # the reports' slide_mpp
    calls = {
        "a.svs": _call("macrometastasis", 3.0, at=(1000.0, 1000.0)),  # inside its tumour
        "b.svs": _call("micrometastasis", 0.5, at=(9000.0, 9000.0)),  # outside: a false positive
    }
    results = _results(tmp_path / "res", calls)
    notes = tmp_path / "notes"
    notes.mkdir()
    square = [[0, 0], [2000, 0], [2000, 2000], [0, 2000], [0, 0]]
    (notes / "a.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square]},
         "properties": {"classification": {"name": "Tumor"}}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square]},
         "properties": {"classification": {"name": "Stroma"}}},
    ]}))  # fmt: skip
    # ASAP: a tumour square with its centre excluded (_2) where nothing else lies.
    (notes / "b.xml").write_text(
        "<ASAP_Annotations><Annotations>"
        + _asap("_0", [(0, 0), (1000, 0), (1000, 1000), (0, 1000)])
        + _asap("_2", [(400, 400), (600, 400), (600, 600), (400, 600)])
        + "</Annotations></ASAP_Annotations>"
    )
    truth = _truth(tmp_path / "t.csv", [("a.svs", "macro"), ("b.svs", "micro")])
    out = invoke("validate", results, "--truth", truth, "--annotations", notes, "--json")
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    froc = data["froc"]
    assert froc["lesions"] == 2 and froc["slides"] == 2
    # Both detections score 0.97: one hit (a), one false positive (b) on two slides, so
    # sensitivity 1/2 arrives only at 0.5 FP per slide.
    assert froc["sensitivity_at_fp_per_slide"]["0.25"] == 0.0
    assert froc["sensitivity_at_fp_per_slide"]["0.5"] == 0.5
    assert froc["sensitivity_at_fp_per_slide"]["8.0"] == 0.5
    assert read_annotations(notes / "b.xml").tumour.area == 1000**2 - 200**2  # _2 cut out
    assert read_annotations(notes / "a.geojson").tumour.area == 2000**2  # stroma left out
    true_sizes = sorted(lesion["true_diameter_mm"] for lesion in data["lesions"])
    expected = [1000 * 2**0.5 * mpp / 1000, 2000 * 2**0.5 * mpp / 1000]
    assert true_sizes == pytest.approx(expected, abs=1e-3)  # rounded to µm
    measured = {lesion["slide"]: lesion["measured_diameter_mm"] for lesion in data["lesions"]}
    assert measured == {"a.svs": 3.0, "b.svs": None}


def _asap(group: str, points: list[tuple[int, int]]) -> str:
    coords = "".join(
        f'<Coordinate Order="{i}" X="{x}" Y="{y}"/>' for i, (x, y) in enumerate(points)
    )
    return (
        f'<Annotation PartOfGroup="{group}" Type="Polygon">'
        f"<Coordinates>{coords}</Coordinates></Annotation>"
    )


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([*TRUTH, ("x.svs", "macro")], "1 slides in the truth but not in the results: x.svs"),
        (TRUTH[1:], "1 slides in the results but not in the truth: n1.svs"),
        ([*TRUTH[:-1], ("m3.svs", "metastatic")], "unknown label 'metastatic'"),
        ([*TRUTH, ("m3.svs", "micro")], "slide m3.svs is listed twice"),
    ],
)
def test_bad_truth_is_one_line_and_nothing_is_written(
    tmp_path: Path, rows: list[tuple[str, ...]], message: str
) -> None:
    results = _results(tmp_path / "res", CALLS)
    out = invoke("validate", results, "--truth", _truth(tmp_path / "t.csv", rows))
    assert out.exit_code != 0
    assert message in out.output and "Traceback" not in out.output
    assert not (results / "validation").exists()


def test_patient_stages_and_their_kappa(tmp_path: Path) -> None:
    results = _results(tmp_path / "res", CALLS)
    patients = {"n1.svs": "P1", "n2.svs": "P1", "n3.svs": "P2", "m1.svs": "P2",
                "m2.svs": "P3", "m3.svs": "P3"}  # fmt: skip
    rows = [(s, label, patients[s]) for s, label in TRUTH]
    truth = _truth(tmp_path / "t.csv", rows, header="slide,label,patient")
    out = invoke("validate", results, "--truth", truth, "--json")
    data = json.loads(out.output)["patients"]
    stages = {r["patient"]: (r["truth"], r["called"]) for r in data["rows"]}
    assert stages == {"P1": ("pN0(i+)", "pN0(i+)"), "P2": ("pN1mi", "pN1mi"),
                      "P3": ("pN1", "pN1")}  # fmt: skip
    assert data["kappa"] == 1.0


def _slide(path: Path, at_cells: tuple[int, int]) -> Path:
    at_um = (at_cells[0] * CELL_UM, at_cells[1] * CELL_UM)
    image = square_image(SLIDE_MPP, 4 * CELL_UM, 2 * CELL_UM, at_um)
    return write_pyramid(path, image, mpp=SLIDE_MPP)


def test_run_patients_writes_patients_csv(tmp_path: Path, weights: Path) -> None:
    slides = tmp_path / "slides"
    slides.mkdir()
    _slide(slides / "p1_node1.tif", (0, 0))
    _slide(slides / "p1_node2.tif", (1, 1))
    (slides / "p2_node1.tif").write_bytes(b"not a slide")  # fails: the patient is marked
    mapping = tmp_path / "map.csv"
    mapping.write_text("slide,patient\np1_node1.tif,P1\np1_node2.tif,P1\np2_node1.tif,P2\n")
    out = invoke("run", slides, "--out", tmp_path / "out", "--weights", weights,
                 "--patients", mapping, *FAST)  # fmt: skip
    assert out.exit_code == 1, out.output  # one slide failed
    with open(tmp_path / "out" / "patients.csv", newline="") as fh:
        rows = {r["patient"]: r for r in csv.DictReader(fh)}
    assert rows["P1"]["slides"] == "2" and rows["P1"]["note"] == ""
    assert rows["P1"]["stage"].startswith("pN")
    assert rows["P2"]["failed"] == "p2_node1.tif" and "INCOMPLETE" in rows["P2"]["note"]
    page = (tmp_path / "out" / "index.html").read_text()
    assert '<section id="patients">' in page and "INCOMPLETE: 1 of 1 slides not scanned" in page
    # A slide without a patient is refused before anything is scanned.
    shutil.copy(slides / "p1_node1.tif", slides / "stray.tif")
    out = invoke("run", slides, "--out", tmp_path / "out2", "--weights", weights,
                 "--patients", mapping, *FAST)  # fmt: skip
    assert out.exit_code != 0 and "no patient for stray.tif" in out.output
    assert not (tmp_path / "out2").exists()


def test_reports_of_results_are_typed(tmp_path: Path) -> None:
    """validate reads what SlideReport writes: a report edited by hand into nonsense is refused."""
    results = _results(tmp_path / "res", CALLS)
    bad = json.loads((results / "n1.json").read_text())
    bad["call"] = "negative"
    (results / "n1.json").write_text(json.dumps(bad))
    truth = _truth(tmp_path / "t.csv", TRUTH)
    out = invoke("validate", results, "--truth", truth)
    assert out.exit_code != 0 and "unreadable slide report" in out.output
    assert dataclasses.is_dataclass(SlideReport)
