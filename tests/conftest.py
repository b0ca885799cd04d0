"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real data root: ``$FLHELPERS_DATA``, else ``../shared/data`` beside the repository.

    Tests that need the real data sets are skipped when the folder does not exist.
    """
    env = os.environ.get("FLHELPERS_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not root.is_dir():
        pytest.skip(f"real data root {root} not found (set $FLHELPERS_DATA)")
    return root


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One torch thread for the whole suite: the tests' tensors are small, and on a 2-core
    machine shared with other work extra threads cost far more than they give."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="session")
def _session_cache(tmp_path_factory):
    """Derived-data caches (tokenised IMDB) in a folder of this session unless $FLHELPERS_CACHE
    says otherwise, so the suite never writes into the user's cache folder."""
    if os.environ.get("FLHELPERS_CACHE"):
        yield
        return
    os.environ["FLHELPERS_CACHE"] = str(tmp_path_factory.mktemp("flhelpers-cache"))
    try:
        yield
    finally:
        os.environ.pop("FLHELPERS_CACHE", None)
