"""Patient-level pN stage from the categories of a patient's lymph nodes (Camelyon17 rules).

One slide is one lymph node. Metastases are micrometastases and macrometastases; isolated tumour
cells (ITC) do not count as metastases. Pure logic: no files, no model.
"""

from __future__ import annotations

from collections.abc import Iterable

# The five stages of Camelyon17, least to most advanced (its kappa is over these, in this order).
PN_STAGES = ("pN0", "pN0(i+)", "pN1mi", "pN1", "pN2")


def pn_stage(categories: Iterable[str]) -> str:
    """The pN stage of a patient whose nodes have these slide categories.

    pN0: nothing found; pN0(i+): isolated tumour cells only; pN1mi: micrometastases, no
    macrometastasis; pN1: metastases in 1–3 nodes, at least one a macrometastasis; pN2: metastases
    in 4 or more nodes, at least one a macrometastasis (Camelyon17 stops at pN2: 4–9 nodes).
    """
    cats = list(categories)
    unknown = set(cats) - {"negative", "itc", "micrometastasis", "macrometastasis"}
    if unknown:
        raise ValueError(f"unknown node categories: {sorted(unknown)}")
    metastases = sum(c in ("micrometastasis", "macrometastasis") for c in cats)
    if "macrometastasis" in cats:
        return "pN1" if metastases <= 3 else "pN2"
    if metastases:
        return "pN1mi"
    if "itc" in cats:
        return "pN0(i+)"
    return "pN0"
