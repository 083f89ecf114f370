"""Running a patch classifier: device choice, weights files with their model cards, input
normalisation and augmentation, the torch and ONNX (float and int8) back ends, whole-map scoring.

May import ``slidescan.io``, ``slidescan.models`` and ``slidescan.errors``; never the scan or
training layers above it.
"""
