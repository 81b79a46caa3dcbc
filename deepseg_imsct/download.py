"""Model weights: find, verify, download and import them (the model cache).

A model file is usable only when its size and sha256 match the registry, and it is hashed each time
it is about to be used (~35 ms per model): a file altered in place is never trusted. ``ensure_model``
looks in the per-user cache, then at a file bundled next to the registry (used in place), then
downloads from the registry's mirrors (fetch.py). Writes into the cache happen under an
inter-process lock (filelock), through a temp file that pooch moves into place once its hash
matches, so the cache never holds a bad file under the final name; a bad one found there is
replaced. The layout ``<cache>/models/<name>/<version>/<file>`` is the one of earlier versions,
whose ``.verified.json`` stamps are ignored and swept at the next install. No telemetry: the only
network traffic is the GET of the registry's URLs.

pooch, filelock and requests are imported only to install: a run that finds its models imports none.

API: ``cache_dir``, ``ensure_model``, ``is_installed``, ``import_model``, ``sha256sum``, ``clear_cache``.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import platformdirs

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


def sha256sum(path: Path | str) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_model(spec: ModelSpec, *, offline: bool = False, progress: bool = True) -> Path:
    """A local file whose size and sha256 match ``spec``: cached, bundled, else downloaded.

    An entry known by its git blob SHA-1 only (a published model folder, see :mod:`archive`) is
    checked by the sha256 and size recorded at its first verified install, else by that hash."""
    target = _cached_path(spec)
    spec = verified_spec(spec)
    problems: list[str] = []
    local = _find_local(spec, target, problems)
    if local is not None:
        if local != target and _exists(target):  # a bad cache entry behind a good bundled copy: repair it
            with contextlib.suppress(DeepsegError):
                import_model(spec, local)
        return local
    if offline:
        seen = f" (checked: {'; '.join(problems)})" if problems else ""
        raise DeepsegError(f"model {spec.key} is not installed in {target} and offline mode forbids downloading "
                           f"it{seen}: {_import_hint(spec, target)}")
    if not spec.remote_sources():
        raise DeepsegError(_failure_message(spec, target, problems, "no download URL in the registry"))

    def get() -> None:
        from . import archive, fetch

        errors = archive.download(spec, target, progress) if spec.blob_sha1 else fetch.download(spec, target, progress)
        if errors:
            raise DeepsegError(_failure_message(spec, target, problems + errors, "every download failed"))
    return _install(spec, target, get)


def is_installed(spec: ModelSpec) -> bool:
    """Whether a verified copy is cached or bundled (no network; hashes the file)."""
    return _find_local(verified_spec(spec), _cached_path(spec), []) is not None


def verified_spec(spec: ModelSpec) -> ModelSpec:
    """``spec`` with the sha256 and size recorded when its blob-verified file was installed."""
    from .archive import with_record

    return with_record(spec, _cached_path(spec))


def import_model(spec: ModelSpec, source: Path | str) -> Path:
    """Install ``spec`` offline from a file, or a folder holding it; verified, copied atomically."""
    from . import fetch

    src = _import_source(spec, Path(source).expanduser())
    target = _cached_path(spec)
    if spec.blob_sha1:
        return _import_blob(spec, src, target)
    try:
        problem = _problem(src, spec)
        if problem is not None:
            raise fetch.FetchError(problem)
        _install(spec, target, lambda: fetch.retrieve(src.as_uri(), spec, target, lambda _u, out, _p: shutil.copyfile(src, out)))
    except fetch.FetchError as exc:
        where = " or ".join(spec.remote_sources()) or "the model release"
        raise DeepsegError(f"{src} is not {spec.key}: {exc}: get the right file from {where}") from None
    log.info("installed %s from %s into %s", spec.key, src, target)
    return target


def _import_blob(spec: ModelSpec, src: Path, target: Path) -> Path:
    """Install a blob-verified model from its file or a zip archive of its folder."""
    from . import archive

    def get() -> None:
        try:
            if src.name.lower().endswith(".zip"):
                archive.extract_verified(src, spec, target)
            else:
                with open(src, "rb") as fh:
                    archive.place_verified(fh, spec, target)
        except ValueError as exc:
            where = " or ".join(spec.remote_sources()) or "the model release"
            raise DeepsegError(f"{src} is not {spec.key}: {exc}: get the right file from {where}") from None
    _install(spec, target, get)
    log.info("installed %s from %s into %s", spec.key, src, target)
    return target


def clear_cache(spec: ModelSpec | None = None) -> None:
    """Delete the cached copy of ``spec`` (all versions of all models when ``None``)."""
    root = cache_dir()
    folders = [_cached_path(spec).parent] if spec else [root / "models", root / "stamps"]
    for folder in folders:
        try:
            shutil.rmtree(folder)
            log.info("removed %s", folder)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise DeepsegError(f"cannot delete {folder} ({exc.strerror or exc}): delete it by hand") from None


# ----------------------------------------------------------------------------- the cache


def _usable(folder: Path) -> bool:
    """Whether ``folder`` exists (maybe read-only, with models) or could be created."""
    probe = folder
    try:
        while not probe.exists() and probe.parent != probe:
            probe = probe.parent
        return folder.is_dir() or (probe.is_dir() and os.access(probe, os.W_OK | os.X_OK))
    except OSError:  # a folder on the way that this user may not even look into (another user's home)
        return False


def _exists(path: Path) -> bool:
    """``path.exists()``, False where this user may not look (a cache folder of another user)."""
    try:
        return path.exists()
    except OSError:
        return False


def _cached_path(spec: ModelSpec) -> Path:
    for part in (spec.name, spec.version, spec.file):
        if not part or part in (".", "..") or "\0" in part or Path(part).name != part or "\\" in part:
            shown = {k: v.encode("unicode_escape").decode("ascii") for k, v in (("name", spec.name), ("part", part))}
            raise DeepsegError(f"model '{shown['name']}' version '{spec.version}' has an unsafe name or file '{shown['part']}' in "
                               f"{spec.registry_dir}: fix the registry")
    return cache_dir() / "models" / spec.name / spec.version / spec.file


def _problem(path: Path, spec: ModelSpec) -> str | None:
    """What keeps ``path`` from being the model (size first, then sha256; the git blob SHA-1 for an
    entry known by that only), or None when it is it."""
    try:
        size = path.stat().st_size
        if not path.is_file():
            return "not a file"
        if not spec.sha256:
            from .archive import git_blob_sha1

            blob = git_blob_sha1(path)
            return None if blob == spec.blob_sha1 else f"git blob SHA-1 {blob}, expected {spec.blob_sha1}"
        if size != spec.size:
            with open(path, "rb") as fh:
                lfs = fh.read(64).startswith(b"version https://git-lfs")
            return f"{size} bytes, expected {spec.size}" + (" (a Git LFS pointer: run `git lfs pull`)" if lfs else "")
        digest = sha256sum(path)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    return None if digest == spec.sha256 else f"sha256 {digest}, expected {spec.sha256}"


def _find_local(spec: ModelSpec, target: Path, problems: list[str]) -> Path | None:
    """The verified cached copy, else a verified bundled source, else None (``problems`` says why)."""
    for path in (target, *spec.local_sources()):
        problem = _problem(path, spec)
        if problem is None:
            return path
        if path != target or problem != "missing":
            problems.append(f"{path}: {problem}")
    return None


def _install(spec: ModelSpec, target: Path, get: Callable[[], None]) -> Path:
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
        if _problem(target, spec) is None:
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


def _import_source(spec: ModelSpec, source: Path) -> Path:
    """The file to import: ``source`` itself, or ``spec.file`` inside it (flat or cache layout)."""
    if source.is_file():
        return source
    if not source.is_dir():
        raise DeepsegError(f"{source} does not exist: pass the downloaded {spec.file} or the folder that contains it")
    for candidate in (source / spec.file, source / spec.name / spec.file, source / spec.name / spec.version / spec.file,
                      source / "models" / spec.name / spec.version / spec.file):
        if candidate.is_file():
            return candidate
    raise DeepsegError(f"{source} holds no {spec.file} (nor {spec.name}/{spec.version}/{spec.file}): pass the model "
                       "file itself or the folder that contains it")


# ----------------------------------------------------------------------------- messages


def _import_hint(spec: ModelSpec, target: Path) -> str:
    from .registry import load_registry

    task = "<task>"  # the task (and model set) that uses this model, for the -install command
    path = spec.registry_dir / "model_registry.json"
    with contextlib.suppress(DeepsegError):
        registry = load_registry(path if path.is_file() else None)
        for t in registry.tasks.values():
            found = [s for s in ("phantom", *t.model_sets) if spec.name in t.models(s)]
            if found:
                task = t.name + ("" if found[0] == "phantom" else f" -model-set {found[0]}")
                break
    checksum = (f"sha256 {spec.sha256}, {spec.size} bytes" if spec.sha256 else
                f"git blob SHA-1 {spec.blob_sha1}, in {' or '.join(spec.remote_sources()) or 'its release'}")
    return (f"download {spec.file} ({checksum}) on a machine with internet and run "
            f"`imsct_deepseg -install {task} --from <file-or-folder>`, or copy it to {target}")


def _failure_message(spec: ModelSpec, target: Path, problems: list[str], what: str) -> str:
    tried = f": {'; '.join(problems)}" if problems else ""
    return (f"cannot get model {spec.key} ({what}){tried}. Fix: check the network or proxy (HTTPS_PROXY), or "
            f"{_import_hint(spec, target)}")
