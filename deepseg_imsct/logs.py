"""The package's warnings kept as text while a run logs them (``Result.warnings``, the QC report's flags)."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

PACKAGE_LOGGER = "deepseg_imsct"


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
