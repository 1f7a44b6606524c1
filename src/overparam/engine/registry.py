"""The one registry of experiments; every module of :mod:`overparam.experiments` is discovered."""

from __future__ import annotations

import importlib
import pkgutil

from overparam.engine.experiment import Experiment

_REGISTRY: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    """Add ``experiment`` to the registry (at import of its module) and return it."""
    known = _REGISTRY.get(experiment.name)
    if known is not None and known is not experiment:
        raise ValueError(f"experiment name {experiment.name!r} is registered twice")
    _REGISTRY[experiment.name] = experiment
    return experiment


def _discover() -> None:
    import overparam.experiments as package

    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{info.name}")


def experiments() -> dict[str, Experiment]:
    """All registered experiments by name, in registration order."""
    _discover()
    return dict(_REGISTRY)


def get(name: str) -> Experiment:
    """The experiment called ``name``; ``ValueError`` listing the known names otherwise."""
    known = experiments()
    if name not in known:
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(sorted(known))}")
    return known[name]
