"""Shared fixtures: tests import helpers from this folder and never touch the user's cache."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import tqdm

sys.path.insert(0, str(Path(__file__).parent))

REPO = Path(__file__).resolve().parents[1]

# No tqdm monitor thread in the test process: tests fork children (unprivileged.as_nobody), and a
# lock held by another thread at a fork is never released in the child.
tqdm.tqdm.monitor_interval = 0


def shared_data() -> Path:
    """The shared real data folder ($IMSCT_SHARED_DATA, else ../shared/data beside the repo)."""
    return Path(os.environ.get("IMSCT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Every test gets an empty model cache of its own."""
    monkeypatch.setenv("DEEPSEG_IMSCT_HOME", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def registry(tmp_path, monkeypatch) -> Path:
    """A registry of analytic ONNX models (tests/onnx_models.py), made the active one."""
    from onnx_models import write_registry  # imports onnx: only for the tests that ask

    path = write_registry(tmp_path / "models")
    monkeypatch.setenv("DEEPSEG_IMSCT_REGISTRY", str(path))
    return path
