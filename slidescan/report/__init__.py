"""What people and other programs open: the typed slide report and its JSON Schema
(``slide_report``), a run's per-slide outcome and summary row (``outcome``), the lesions as
QuPath GeoJSON (``lesion_geojson``), the overlay picture (``overlay``) and the review page
(``review_page``, its HTML, CSS and script in ``templates/``).

Pure views of results: may import ``slidescan.io`` and the vocabulary; never scans.
"""
