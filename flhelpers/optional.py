"""Optional dependencies (Ray, Flower, ...): import them or fail with the command that installs them."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType


def import_optional(modules: Sequence[str], message: str, error: type[Exception] = ImportError) -> ModuleType:
    """Import every module of ``modules`` and return the first.

    Raises:
        error: with ``message`` (which should name the install command) when any of them is
            missing; the original ImportError is chained as its cause.
    """
    try:
        loaded = [importlib.import_module(name) for name in modules]
    except ImportError as exc:
        raise error(message) from exc
    return loaded[0]


__all__ = ["import_optional"]
