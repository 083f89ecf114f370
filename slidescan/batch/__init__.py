"""Many slides: a folder of slides (``directory``) with its summary.csv and failure log
(``summary``), the same on a Dask cluster (``cluster``), patients and their pN stages
(``patients``, ``pn_stage``), and ``slidescan demo`` (``demo``).

May import ``slidescan.scan`` (one slide) and everything below it; never ``train``, ``validate``
or the CLI.
"""
