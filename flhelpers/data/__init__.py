"""Data sets held whole in memory; loaders are looked up by name in ``DATASETS``."""

from __future__ import annotations

import importlib
import inspect
import os
from typing import Any, Callable

from flhelpers.data.base import DATA_ENV, DataMissingError, FLDataset, resolve_data_root
from flhelpers.registry import DATASETS, register_dataset


def _mnist(data_root=None, download: bool = True, **kw: Any) -> FLDataset:
    from flhelpers.data.mnist import load_mnist

    return load_mnist(data_root, download=download, **kw)


def _cifar10(data_root=None, download: bool = True, **kw: Any) -> FLDataset:
    from flhelpers.data.cifar10 import load_cifar10

    return load_cifar10(data_root, download=download, **kw)


def _imdb(data_root=None, download: bool = True, **kw: Any) -> FLDataset:
    from flhelpers.data.imdb import load_imdb

    return load_imdb(data_root, download=download, **kw)


register_dataset("mnist", _mnist)
register_dataset("cifar10", _cifar10)
register_dataset("imdb", _imdb)

#: the loader each built-in factory forwards its keyword arguments to (imported when needed)
_BUILTIN_LOADERS: dict[Callable, tuple[str, str]] = {
    _mnist: ("flhelpers.data.mnist", "load_mnist"), _cifar10: ("flhelpers.data.cifar10", "load_cifar10"),
    _imdb: ("flhelpers.data.imdb", "load_imdb")}


def dataset_options(name: str) -> list[str] | None:
    """The keyword arguments (``dataset_kwargs``) the data set ``name``'s loader takes besides
    ``data_root``; ``None`` when its factory takes any keyword (``**kwargs``), so none can be checked."""
    factory = DATASETS.get(name)
    target = factory
    if factory in _BUILTIN_LOADERS:
        module, attr = _BUILTIN_LOADERS[factory]
        target = getattr(importlib.import_module(module), attr)
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params[1:]  # the first is the data root
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]


def check_dataset_kwargs(name: str, kwargs: dict[str, Any]) -> None:
    """Refuse ``dataset_kwargs`` the loader of ``name`` does not take, naming those it does, with a
    :class:`~flhelpers.config.ConfigError` before anything is loaded (instead of the loader's TypeError)."""
    from flhelpers.config import ConfigError

    if not isinstance(kwargs, dict):
        raise ConfigError(f"dataset_kwargs must be a dict of keyword arguments, got {kwargs!r}.")
    if "data_root" in kwargs:
        raise ConfigError("dataset_kwargs cannot set data_root: pass the data root as data_root=... "
                          "(--data-root on the command line).")
    accepted = dataset_options(name)
    unknown = sorted(set(kwargs) - set(accepted)) if accepted is not None else []
    if unknown:
        raise ConfigError(f"dataset_kwargs {unknown} are not arguments of the data set {name!r}; it accepts: "
                          f"{', '.join(accepted) if accepted else 'no arguments'}.")

_CACHE: dict[tuple, FLDataset] = {}


def load_dataset(name: str, data_root: str | os.PathLike | None = None, cache: bool = True,
                 **kwargs: Any) -> FLDataset:
    """Load the registered data set ``name`` from the data root (argument, $FLHELPERS_DATA, ./data).

    Loaded sets are kept in a per-process cache keyed by name, root and options, so a grid of
    runs reads each data set once. ``download`` is left out of the key: it says only how
    missing files are obtained, not which data is loaded.
    """
    loader = DATASETS.get(name)
    check_dataset_kwargs(name, kwargs)
    root = resolve_data_root(data_root)
    key = (name.lower(), str(root.resolve()),
           tuple(sorted((k, repr(v)) for k, v in kwargs.items() if k != "download")))
    if cache and key in _CACHE:
        return _CACHE[key]
    ds = loader(root, **kwargs)
    if cache:
        _CACHE[key] = ds
    return ds


__all__ = ["DATA_ENV", "DataMissingError", "FLDataset", "check_dataset_kwargs", "dataset_options", "load_dataset",
           "resolve_data_root"]
