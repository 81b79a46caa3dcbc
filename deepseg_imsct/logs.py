"""The package's warnings kept as text while a run logs them (``Result.warnings``, the QC report's
flags), and the seconds each stage of a run takes (``Result.timings``)."""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Iterator

PACKAGE_LOGGER = "deepseg_imsct"

log = logging.getLogger(__name__)


class _Collect(logging.Handler):
    def __init__(self, into: list[str]):
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record.getMessage())


@contextmanager
def collect_warnings(into: list[str]) -> Iterator[None]:
    """While inside, append the message of every warning (or worse) the package logs to ``into``."""
    handler, logger = _Collect(into), logging.getLogger(PACKAGE_LOGGER)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


@contextmanager
def timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    """Add the seconds spent inside to ``timings[stage]`` (logged at debug level)."""
    t0 = time.perf_counter()
    yield
    timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - t0
    log.debug("%s: %.3f s", stage, timings[stage])
