"""File checksums, read in 1 MiB chunks: the sha256 that verifies model files and outputs, and
the git blob SHA-1 that names a published model file (see :mod:`archive`)."""
from __future__ import annotations

import hashlib
from pathlib import Path


def _digest(path: Path | str, digest):
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file."""
    return _digest(path, hashlib.sha256())


def git_blob_sha1(path: Path | str) -> str:
    """The git blob SHA-1 of a file (what ``git hash-object`` prints)."""
    return _digest(path, hashlib.sha1(b"blob %d\0" % Path(path).stat().st_size))
