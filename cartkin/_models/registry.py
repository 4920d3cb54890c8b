"""Look up models by name (for configuration files and the command line)."""

from __future__ import annotations

import inspect

from .base import ClosedFormModel, Model, ODEModel


def available_models() -> dict[str, type[Model]]:
    """``{lower-case class name: class}`` of every concrete model in the library."""
    from .. import _models

    out = {}
    for obj in vars(_models).values():
        if (
            inspect.isclass(obj)
            and issubclass(obj, Model)
            and obj not in (Model, ODEModel, ClosedFormModel)
            and not inspect.isabstract(obj)
        ):
            out[obj.__name__.lower()] = obj
    return dict(sorted(out.items()))


def get_model(name: str, **options) -> Model:
    """An instance of the model called ``name`` (case-insensitive), e.g. ``"stein2019ode"``."""
    models = available_models()
    cls = models.get(name.lower().replace("-", "").replace("_", ""))
    if cls is None:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(models)}")
    return cls(**options)
