"""Patch classifiers: each maps a normalised N×3×H×W RGB batch to one tumour logit per patch.

The registry and one module per architecture, in plain torch. May import only torch and
``slidescan.errors``: a model knows nothing of files, slides or training.
"""

from slidescan.models.registry import (
    ModelSpec,
    count_parameters,
    create_model,
    get_spec,
    list_models,
    register_model,
)

DEFAULT_MODEL = "pcamnet-v2"

__all__ = [
    "DEFAULT_MODEL",
    "ModelSpec",
    "count_parameters",
    "create_model",
    "get_spec",
    "list_models",
    "register_model",
]
