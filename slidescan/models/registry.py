"""Model registry: architectures register under a name; ``create_model(name)`` builds one.

Registering is a decorator on a factory, so the CLI can list names without building anything heavy
and tests can be generated from the registry (every registered model is tested for free).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from slidescan.errors import SlidescanError


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about a model family before building it."""

    name: str
    factory: Callable[..., nn.Module]
    input_size: int
    description: str


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str, *, input_size: int = 96, description: str = ""
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register ``factory`` under ``name``."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelSpec(name, factory, input_size, description)
        return factory

    return wrap


def _ensure_loaded() -> None:
    # Importing the families registers them; done lazily so `import slidescan` stays light.
    from slidescan.models import pcamnet, pcamnet_v2, seed_cnn  # noqa: F401


def list_models() -> list[ModelSpec]:
    """All registered model specs, sorted by name."""
    _ensure_loaded()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def get_spec(name: str) -> ModelSpec:
    """The spec registered under ``name``; SlidescanError listing the known names otherwise."""
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise SlidescanError(f"unknown model {name!r}; known models: {known}") from None


def create_model(name: str, **config: object) -> nn.Module:
    """Build the model registered under ``name`` with ``config`` keyword overrides."""
    return get_spec(name).factory(**config)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
