"""What people open after ``slidescan validate``: ROC, FROC and confusion figures (PNG) and a
self-contained ``validation.html`` with them and the tables."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from slidescan.about import RESEARCH_USE_NOTICE  # noqa: E402
from slidescan.validate.operating_point import operating_point_text  # noqa: E402


def write_figures_and_page(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write the figures and the page; return their paths."""
    made = [_roc(result, out_dir / "validation-roc.png"),
            _confusion(result, out_dir / "validation-confusion.png")]  # fmt: skip
    if "froc" in result and result["froc"]["lesions"]:
        made.append(_froc(result, out_dir / "validation-froc.png"))
    figures = [f for f in made if f is not None]
    page = out_dir / "validation.html"
    page.write_text(_page(result, figures), encoding="utf-8")
    return [*figures, page]


def _roc(result: dict[str, Any], path: Path) -> Path | None:
    y, score = np.array(result["roc_points"]["truth"]), np.array(result["roc_points"]["score"])
    if len(set(y.tolist())) < 2:
        return None
    fpr, tpr, _ = roc_curve(y, score)
    fig, ax = plt.subplots(figsize=(4, 4), dpi=120)
    ax.plot(fpr, tpr, lw=2, label=f"AUC {result['slide_auc']['value']:.3f}")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="1 − specificity", ylabel="sensitivity", title="Slide-level ROC")
    ax.legend(loc="lower right")
    return _save(fig, path)


def _froc(result: dict[str, Any], path: Path) -> Path:
    curve = result["froc"]["curve"]
    fig, ax = plt.subplots(figsize=(4.5, 4), dpi=120)
    ax.step(curve["fp_per_slide"], curve["sensitivity"], where="post", lw=2)
    for rate in (0.25, 0.5, 1, 2, 4, 8):
        ax.axvline(rate, color="grey", lw=0.5, ls=":")
    ax.set_xscale("symlog", linthresh=0.25)
    ax.set(xlabel="false positives per slide", ylabel="lesion sensitivity", ylim=(0, 1.02),
           title=f"FROC (score {result['froc']['score']:.3f})")  # fmt: skip
    return _save(fig, path)


def _confusion(result: dict[str, Any], path: Path) -> Path | None:
    conf = result["confusion"]
    matrix = np.array(conf["matrix"])
    if matrix.sum() == 0:
        return None
    short = ["neg", "ITC", "micro", "macro"]
    fig, ax = plt.subplots(figsize=(4, 4), dpi=120)
    ax.imshow(matrix, cmap="Blues")
    for (r, c), n in np.ndenumerate(matrix):
        ax.text(c, r, str(n), ha="center", va="center",
                color="white" if n > matrix.max() / 2 else "black")  # fmt: skip
    ax.set_xticks(range(4), short)
    ax.set_yticks(range(4), short)
    ax.set(xlabel="slidescan call", ylabel="truth", title="Slide categories")
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape("" if value is None else str(value))


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>none</p>"
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in r.values()) + "</tr>"
                   for r in rows)  # fmt: skip
    return f"<table><tr>{head}</tr>{body}</table>"


def _page(result: dict[str, Any], figures: list[Path]) -> str:
    images = "".join(
        f'<img alt="{html.escape(p.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}">'
        for p in figures
    )
    summary = [
        {"measure": key, "value": result[key]["value"], "95% CI": _ci(result[key]["ci"]),
         "count": result[key].get("count", "")}
        for key in ("slide_auc", "sensitivity", "specificity", "accuracy")
    ]  # fmt: skip
    summary.append({"measure": "kappa (quadratic, categories)", "value": result["kappa"],
                    "95% CI": "", "count": result["confusion"]["slides"]})  # fmt: skip
    if "froc" in result:
        summary.append({"measure": "FROC score", "value": result["froc"]["score"], "95% CI": "",
                        "count": f"{result['froc']['lesions']} lesions"})  # fmt: skip
    point = operating_point_text(result["operating_point"])
    sections = [
        "<h2>Slides</h2>",
        f"<p>Operating point of the lesion call: {html.escape(point)}.</p>",
        _table(summary),
        f"<p>Slide score: {html.escape(result['slide_score'])}. Failed slides (not counted): "
        f"{html.escape(', '.join(result['failed']) or 'none')}.</p>",
        images, "<h2>Discordant slides</h2>", _table(result["discordant"]),
    ]  # fmt: skip
    if "detection_by_size" in result:
        sections += ["<h2>Detection by lesion size</h2>", _table(result["detection_by_size"])]
    if "patients" in result:
        sections += [
            f"<h2>Patients (pN stage kappa {_cell(result['patients']['kappa'])})</h2>",
            _table(result["patients"]["rows"]),
        ]
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em}"
        "img{margin:.5em;border:1px solid #eee}.notice{background:#fff3cd;padding:.6em}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>slidescan validation</title>"
        f"<style>{style}</style></head><body><h1>slidescan validation</h1>"
        f"<p class='notice'>{html.escape(RESEARCH_USE_NOTICE)}</p>{''.join(sections)}</body></html>"
    )


def _ci(ci: list[Any]) -> str:
    return "" if ci[0] is None else f"{ci[0]:.3f} – {ci[1]:.3f}"
