"""Per-stage wall-clock accounting (seconds), read by :mod:`bench`; negligible overhead."""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator

STAGES: defaultdict[str, float] = defaultdict(float)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Add the wall time (s) of the ``with`` block to ``STAGES[name]``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        STAGES[name] += time.perf_counter() - t0


def reset() -> dict[str, float]:
    """Return the accumulated stage times (s) and clear them."""
    out = dict(STAGES)
    STAGES.clear()
    return out
