"""The model cache on disk: where it is, which file is a model, and writing into it under a lock.

A model file is usable only when its size and sha256 match the registry (:func:`file_problem`;
the git blob SHA-1 for a published model known by that only, see :mod:`archive`). The layout
``<cache>/models/<name>/<version>/<file>`` is the one of earlier versions, whose
``.verified.json`` stamps are ignored and swept at the next install. Writes happen under an
inter-process lock (filelock, :func:`install`), through a temp file moved into place once its
hash matches, so the cache never holds a bad file under the final name; a bad one found there is
replaced. What gets a file into the cache (download, offline import): :mod:`download`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import platformdirs

from .checksums import git_blob_sha1, sha256_file
from .errors import DeepsegError
from .registry import ModelSpec

log = logging.getLogger(__name__)

ENV_HOME = "DEEPSEG_IMSCT_HOME"
APP_NAME = "deepseg_imsct"
LOCK_WAIT_S = 3600.0  # give up waiting for another installer after this
LOCK_POLL_S = 0.2


def cache_dir() -> Path:
    """The per-user cache folder (``$DEEPSEG_IMSCT_HOME`` overrides it); it may not exist yet."""
    env = os.environ.get(ENV_HOME, "").strip()
    if env:
        return Path(env).expanduser().absolute()
    base = Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False, opinion=False))
    if _usable(base):
        return base
    tag = str(os.getuid()) if hasattr(os, "getuid") else re.sub(r"[^\w.-]", "_", os.environ.get("USERNAME", "user"))
    fallback = Path(tempfile.gettempdir()) / f"{APP_NAME}-{tag}"
    log.warning("no writable per-user cache folder (%s cannot be created): using %s, which may be wiped; "
                "set %s to a persistent writable folder", base, fallback, ENV_HOME)
    return fallback


def clear_cache(spec: ModelSpec | None = None) -> None:
    """Delete the cached copy of ``spec`` (all versions of all models when ``None``)."""
    root = cache_dir()
    folders = [cached_path(spec).parent] if spec else [root / "models", root / "stamps"]
    for folder in folders:
        try:
            shutil.rmtree(folder)
            log.info("removed %s", folder)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise DeepsegError(f"cannot delete {folder} ({exc.strerror or exc}): delete it by hand") from None


def _usable(folder: Path) -> bool:
    """Whether ``folder`` exists (maybe read-only, with models) or could be created."""
    probe = folder
    try:
        while not probe.exists() and probe.parent != probe:
            probe = probe.parent
        return folder.is_dir() or (probe.is_dir() and os.access(probe, os.W_OK | os.X_OK))
    except OSError:  # a folder on the way that this user may not even look into (another user's home)
        return False


def path_exists(path: Path) -> bool:
    """``path.exists()``, False where this user may not look (a cache folder of another user)."""
    try:
        return path.exists()
    except OSError:
        return False


def cached_path(spec: ModelSpec) -> Path:
    for part in (spec.name, spec.version, spec.file):
        if not part or part in (".", "..") or "\0" in part or Path(part).name != part or "\\" in part:
            shown = {k: v.encode("unicode_escape").decode("ascii") for k, v in (("name", spec.name), ("part", part))}
            raise DeepsegError(f"model '{shown['name']}' version '{spec.version}' has an unsafe name or file '{shown['part']}' in "
                               f"{spec.registry_dir}: fix the registry")
    return cache_dir() / "models" / spec.name / spec.version / spec.file


def file_problem(path: Path, spec: ModelSpec) -> str | None:
    """What keeps ``path`` from being the model (size first, then sha256; the git blob SHA-1 for an
    entry known by that only), or None when it is it."""
    try:
        size = path.stat().st_size
        if not path.is_file():
            return "not a file"
        if not spec.sha256:
            blob = git_blob_sha1(path)
            return None if blob == spec.blob_sha1 else f"git blob SHA-1 {blob}, expected {spec.blob_sha1}"
        if size != spec.size:
            with open(path, "rb") as fh:
                lfs = fh.read(64).startswith(b"version https://git-lfs")
            return f"{size} bytes, expected {spec.size}" + (" (a Git LFS pointer: run `git lfs pull`)" if lfs else "")
        digest = sha256_file(path)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    return None if digest == spec.sha256 else f"sha256 {digest}, expected {spec.sha256}"


def find_local(spec: ModelSpec, target: Path, problems: list[str]) -> Path | None:
    """The verified cached copy, else a verified bundled source, else None (``problems`` says why)."""
    for path in (target, *spec.local_sources()):
        problem = file_problem(path, spec)
        if problem is None:
            return path
        if path != target or problem != "missing":
            problems.append(f"{path}: {problem}")
    return None


def install(spec: ModelSpec, target: Path, get: Callable[[], None]) -> Path:
    """Under the lock: keep a valid ``target`` (another process may just have installed it), else
    sweep the folder and ``get`` the file into place."""
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as exc:
        raise _readonly_error(folder, exc) from None
    with _locked(folder, target.with_name(f".{target.name}.flock")):
        if file_problem(target, spec) is None:
            log.info("%s is installed", target)
            return target
        if target.exists():
            log.warning("discarding invalid cached %s", target)
        # pooch's temp files (tmp*) and the .part files and stamps of earlier versions: under this
        # lock, no other process writes into this folder, so these are leftovers of killed runs
        for leftover in (target, *folder.glob("tmp*"), *folder.glob(f".{target.name}.*.part"),
                         target.with_name(target.name + ".verified.json")):
            with contextlib.suppress(OSError):
                leftover.unlink()
        try:
            get()
            os.chmod(target, 0o644)  # pooch's temp files are private: models are for every user
        except OSError as exc:  # the network's errors are FetchErrors by now: this is the disk
            raise DeepsegError(f"cannot write into the model cache folder {folder} ({exc.strerror or exc}): free some "
                               f"disk space or set {ENV_HOME} to another folder") from None
    return target


@contextlib.contextmanager
def _locked(folder: Path, path: Path) -> Iterator[None]:
    """The inter-process lock of one cached file (flock where available, as earlier versions used)."""
    import filelock

    lock = filelock.FileLock(str(path))
    try:
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            log.info("waiting for another process that is installing into %s", folder)
            lock.acquire(timeout=LOCK_WAIT_S, poll_interval=LOCK_POLL_S)
    except filelock.Timeout:
        raise DeepsegError(f"another process has been installing into {folder} for over {LOCK_WAIT_S:g} s "
                           f"(lock {path}): wait for it or stop it") from None
    except OSError as exc:
        raise _readonly_error(folder, exc) from None
    try:
        yield
    finally:
        lock.release()


def _readonly_error(folder: Path, exc: OSError) -> DeepsegError:
    return DeepsegError(f"the model cache folder {folder} is not writable ({exc.strerror or exc}): make it writable, "
                        f"or set {ENV_HOME} to a writable folder")
