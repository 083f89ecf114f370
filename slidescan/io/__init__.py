"""Reading and writing files: whole-slide images and their scale, labelled patch sets, the zarr
heatmap store and atomic file commits.

Owns every byte that crosses the disk. May import only ``slidescan.errors`` and third-party readers;
it knows nothing of models or of how a scan is run.
"""
