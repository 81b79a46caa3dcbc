"""Published model folders: zip archives of a git tag, verified by the model file's git blob SHA-1.

The reference toolbox downloads each published model as the zip archive of a tag of its
repository (``<repo>-<tag>/<model>.onnx`` + ``<model>.json``). The archive's bytes are made on
the fly by the host and are not stable, so the model file inside is verified by its **git blob
SHA-1** (``sha1(b"blob <size>\\0" + bytes)``, the hash git itself names it by, listed in the
registry as ``blob_sha1``). On the first verified install its sha256 and size are recorded next
to it in the cache (``<file>.hashes.json``), never in the shipped registry; later runs check the
file by those, as for any other model.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import zipfile
from dataclasses import replace
from pathlib import Path

from .checksums import git_blob_sha1, sha256_file
from .registry import ModelSpec
from .transaction import write_atomic

log = logging.getLogger(__name__)

MAX_ARCHIVE_BYTES = 2 << 30  # a model folder is tens of MB; refuse anything near a disk filler
RECORD_SUFFIX = ".hashes.json"


def is_archive(url: str) -> bool:
    return url.lower().split("?")[0].endswith(".zip")


def record_path(target: Path) -> Path:
    return target.with_name(target.name + RECORD_SUFFIX)


def with_record(spec: ModelSpec, target: Path) -> ModelSpec:
    """``spec`` with the sha256 and size recorded at its first verified install (if any, and if
    recorded for this blob); unchanged for entries that list their sha256."""
    if spec.sha256 or not spec.blob_sha1:
        return spec
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        data = json.loads(record_path(target).read_text(encoding="utf-8"))
        if data["blob_sha1"] == spec.blob_sha1 and len(data["sha256"]) == 64:
            return replace(spec, sha256=str(data["sha256"]), size=int(data["size"]))
    return spec


def write_record(spec: ModelSpec, target: Path, sha256: str) -> None:
    """Record the verified file's sha256 and size beside it (atomically)."""
    record = {"blob_sha1": spec.blob_sha1, "sha256": sha256, "size": target.stat().st_size, "file": spec.file}
    write_atomic(record_path(target), json.dumps(record, indent=1).encode(), prefix="tmp")


def member_name(names: list[str], file: str) -> str | None:
    """The archive member holding ``file``: ``<top folder>/<file>`` (the layout of a tag archive),
    or ``file`` at the root; None if absent. Names are only compared, never used as paths."""
    for name in names:
        parts = name.split("/")
        if parts[-1] == file and (len(parts) == 1 or (len(parts) == 2 and parts[0] not in ("", ".", ".."))):
            return name
    return None


def archive_members(path: Path) -> list[str]:
    """The member names of a zip archive ([] when it is not one)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return []


def extract_verified(archive: Path, spec: ModelSpec, target: Path) -> str:
    """Copy ``spec.file`` out of the zip ``archive`` to ``target`` if its blob SHA-1 matches (and
    its ivadomed config ``<stem>.json``, if any, beside it); returns its sha256. Raises ValueError
    saying what is wrong (nothing is left at ``target``)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            name = member_name(zf.namelist(), spec.file)
            if name is None:
                top = sorted({n.split("/")[0] for n in zf.namelist()})[:3]
                raise ValueError(f"the archive holds no {spec.file} in its top folder (it holds {', '.join(top) or 'nothing'})")
            info = zf.getinfo(name)
            if info.file_size > MAX_ARCHIVE_BYTES:
                raise ValueError(f"{name} would be {info.file_size} bytes once extracted")
            with zf.open(info) as src:
                sha256 = place_verified(src, spec, target)
            config = member_name(zf.namelist(), Path(spec.file).stem + ".json")
            if config is not None and zf.getinfo(config).file_size < 1 << 20:  # the folder's ivadomed config, kept beside it
                write_atomic(target.with_suffix(".json"), zf.read(config), prefix="tmp")
            return sha256
    except zipfile.BadZipFile as exc:
        raise ValueError(f"not a zip archive ({exc})") from None


def place_verified(src, spec: ModelSpec, target: Path) -> str:
    """Stream ``src`` (a binary file object) into ``target`` through a temp file, moved into place
    only if its git blob SHA-1 is ``spec.blob_sha1``; records and returns its sha256."""
    fd, tmp = tempfile.mkstemp(prefix="tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            for block in iter(lambda: src.read(1 << 20), b""):
                out.write(block)
        blob = git_blob_sha1(tmp)
        if blob != spec.blob_sha1:
            raise ValueError(f"git blob SHA-1 {blob}, expected {spec.blob_sha1}")
        sha256 = sha256_file(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    write_record(spec, target, sha256)
    return sha256


def download_archive(url: str, folder: Path, progress: bool) -> Path:
    """GET ``url`` into a temp file in ``folder`` (timeouts and limits of :mod:`fetch`); the
    caller deletes it. Raises fetch.FetchError."""
    import requests

    from . import fetch

    fd, tmp = tempfile.mkstemp(prefix="tmp", suffix=".zip", dir=folder)
    size = 0
    try:
        with os.fdopen(fd, "wb") as out, requests.get(url, stream=True, headers={"User-Agent": fetch._HEADERS["User-Agent"]},
                                                      timeout=(fetch.CONNECT_TIMEOUT_S, fetch.READ_TIMEOUT_S)) as resp:
            resp.raise_for_status()
            if resp.headers.get("Content-Type", "").split(";")[0].strip().lower() in ("text/html", "application/xhtml+xml"):
                raise fetch.FetchError(fetch._HTML)
            for block in resp.iter_content(fetch.CHUNK_BYTES):
                size += len(block)
                if size > MAX_ARCHIVE_BYTES:
                    raise fetch.FetchError(f"the archive is larger than {MAX_ARCHIVE_BYTES} bytes: not a model folder")
                out.write(block)
    except requests.RequestException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise fetch._classify(exc) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    log.info("downloaded %s (%.1f MiB)", url, size / 2**20)
    return Path(tmp)


def download(spec: ModelSpec, target: Path, progress: bool) -> list[str]:
    """Fetch a blob-verified model from each source in turn (a tag's zip archive, or the file),
    transient failures retried within the download deadline: [] once ``target`` holds it, else
    one line per URL."""
    import math
    import time

    from . import fetch

    deadline_s = fetch.setting(fetch.ENV_DEADLINE, fetch.DEADLINE_S)
    deadline = time.monotonic() + deadline_s if deadline_s else math.inf
    errors = []
    for url in spec.remote_sources():
        try:  # transient failures retried with back-off, as for model files
            tmp = fetch._with_retries(url, lambda: download_archive(url, target.parent, progress), deadline, deadline_s)
        except fetch.FetchError as exc:
            errors.append(f"{url}: {exc}")
            continue
        try:
            if is_archive(url):
                extract_verified(tmp, spec, target)
            else:
                with open(tmp, "rb") as src:
                    place_verified(src, spec, target)
            log.info("installed %s from %s into %s", spec.key, url, target)
            return []
        except ValueError as exc:
            errors.append(f"{url}: {exc}")
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
    return errors
