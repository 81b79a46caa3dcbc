"""Model weights: find, verify, download and import them.

A model file is usable only when its size and sha256 match the registry. ``ensure_model`` looks
in this order: the per-user cache, a file bundled next to the registry (used in place), then
the registry's mirrors. Downloads stream into a unique temp file in the destination folder and
are moved into place with ``os.replace`` only after verification, so the cache never holds a bad
file under the final name. An inter-process lock makes concurrent runs download once; the lock
only saves bandwidth, correctness comes from verify-then-replace. No telemetry: the only network
traffic is the GET of the registry's URLs.

API: ``cache_dir``, ``ensure_model``, ``is_installed``, ``import_model``, ``sha256sum``, ``clear_cache``.
Timeouts, retries and lock timings are module constants (read at call time) so tests can tune them.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from . import __version__
from .errors import DeepsegError
from .registry import ModelSpec

if TYPE_CHECKING:  # requests is imported lazily: a cached model needs no network stack
    import requests

try:  # POSIX advisory locks; Windows uses the O_EXCL lock file
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

ENV_HOME = "DEEPSEG_IMSCT_HOME"
APP_NAME = "deepseg_imsct"

CONNECT_TIMEOUT_S = 10.0  # TCP/TLS connect
READ_TIMEOUT_S = 60.0  # max silence between two received bytes
ATTEMPTS = 3  # per URL, for transient errors (connection, timeout, truncation, 5xx/429)
BACKOFF_S = 1.0  # first retry delay, doubled each retry
BACKOFF_MAX_S = 30.0
LOCK_WAIT_S = 3600.0  # give up waiting for another installer after this
LOCK_STALE_S = 600.0  # O_EXCL lock file untouched this long = holder is gone (holders heartbeat)
LOCK_POLL_S = 0.2
LOCK_METHOD = "auto"  # "auto" (fcntl.flock where it works, else "excl"), "flock" or "excl"
CHUNK_BYTES = 1 << 20
_HTML = "the server sent an HTML page instead of the model (an error or login page?)"
_RACY_NS = 2_000_000_000  # mtime granularity margin for trusting a stamp (FAT: 2 s)

_USER_AGENT = f"deepseg-imsct/{__version__}"


# ----------------------------------------------------------------------------- public API


def cache_dir() -> Path:
    """The per-user cache folder (``$DEEPSEG_IMSCT_HOME`` overrides it); it may not exist yet."""
    env = os.environ.get(ENV_HOME, "").strip()
    if env:
        return Path(env).expanduser().absolute()
    base = _platform_cache_base()
    if base is not None and _usable(base / APP_NAME):
        return base / APP_NAME
    fallback = Path(tempfile.gettempdir()) / f"{APP_NAME}-{_user_tag()}"
    log.warning(
        "no writable per-user cache folder (home is %s): using %s, which may be wiped; "
        "set %s to a persistent writable folder",
        base.parent if base else "unknown", fallback, ENV_HOME,
    )
    return fallback


def sha256sum(path: Path | str) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_model(spec: ModelSpec, *, offline: bool = False, progress: bool = True) -> Path:
    """A local file whose size and sha256 match ``spec``: cached, bundled, else downloaded."""
    target = _cached_path(spec, cache_dir())
    problems: list[str] = []
    local = _find_local(spec, target, problems)
    if local is not None:
        return local
    if offline:
        raise DeepsegError(_offline_message(spec, target, problems))
    if not spec.remote_sources():
        raise DeepsegError(_failure_message(spec, target, problems, "no download URL in the registry"))
    return _download_locked(spec, target, problems, progress)


def is_installed(spec: ModelSpec) -> bool:
    """Whether a verified copy is cached or bundled (no network; may hash the file once)."""
    return _find_local(spec, _cached_path(spec, cache_dir()), []) is not None


def import_model(spec: ModelSpec, source: Path | str) -> Path:
    """Install ``spec`` offline from a file, or a folder holding it; verified, copied atomically."""
    src = _import_source(spec, Path(source).expanduser())
    target = _cached_path(spec, cache_dir())
    if _same_file(src, target) and _verified(target, spec, _stamp_for_cached(target), []):
        return target
    _check_import_size(src, spec)
    folder = _writable_folder(target.parent)
    with _FileLock(folder, spec.file):
        tmp = _copy_verified(src, folder, spec)
        _install(tmp, target, spec)
    log.info("installed %s from %s into %s", spec.key, src, target)
    return target


def clear_cache(spec: ModelSpec | None = None) -> None:
    """Delete the cached copy of ``spec`` (all versions of all models when ``None``)."""
    root = cache_dir()
    folders = [root / "models" / spec.name / spec.version] if spec else [root / "models", root / "stamps"]
    for folder in folders:
        try:
            shutil.rmtree(folder)
            log.info("removed %s", folder)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise DeepsegError(f"cannot delete {folder} ({exc.strerror or exc}): delete it by hand") from None


# ----------------------------------------------------------------------------- cache location


def _platform_cache_base() -> Path | None:
    """The OS's per-user cache root, or None when there is no usable home."""
    windows = sys.platform == "win32"
    if windows and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"])
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if not windows and sys.platform != "darwin" and os.path.isabs(xdg):
        return Path(xdg)
    try:
        home = Path.home()
    except (RuntimeError, KeyError):
        return None
    if home == Path(home.anchor):  # "/" in containers: no real home
        return None
    if windows:
        return home / "AppData" / "Local"
    if sys.platform == "darwin":
        return home / "Library" / "Caches"
    return home / ".cache"


def _usable(folder: Path) -> bool:
    """Whether ``folder`` exists (maybe read-only, with models) or could be created."""
    if folder.is_dir():
        return True
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            return False
        probe = probe.parent
    return probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)


def _user_tag() -> str:
    getuid = getattr(os, "getuid", None)
    if getuid is not None:
        return str(getuid())
    return re.sub(r"[^A-Za-z0-9_.-]", "_", os.environ.get("USERNAME", "user")) or "user"


def _cached_path(spec: ModelSpec, root: Path) -> Path:
    for part in (spec.name, spec.version, spec.file):
        if not part or part in (".", "..") or Path(part).name != part or "\\" in part:
            raise DeepsegError(
                f"model '{spec.name}' version '{spec.version}' has an unsafe name or file '{part}' in "
                f"{spec.registry_dir}: fix the registry"
            )
    return root / "models" / spec.name / spec.version / spec.file


def _writable_folder(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _readonly_error(folder, exc) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise _readonly_error(folder, None)
    return folder


def _readonly_error(folder: Path, exc: OSError | None) -> DeepsegError:
    why = f" ({exc.strerror or exc})" if exc is not None else " (Permission denied)"
    return DeepsegError(
        f"the model cache folder {folder} is not writable{why}: make it writable, or set "
        f"{ENV_HOME} to a writable folder"
    )


# ----------------------------------------------------------------------------- verification


def _verified(path: Path, spec: ModelSpec, stamp: Path | None, problems: list[str]) -> bool:
    """Whether ``path`` matches the spec; a stamp (path, size, mtime, inode, sha) skips re-hashing."""
    try:
        st = path.stat()
    except OSError:
        return False
    if not path.is_file():
        problems.append(f"{path}: not a file")
        return False
    if st.st_size != spec.size:
        problems.append(f"{path}: {st.st_size} bytes, expected {spec.size}{_lfs_hint(path)}")
        return False
    key = _stamp_key(path, st, spec.sha256)
    if stamp is not None and _stamp_trusted(_read_json(stamp), key):
        return True
    log.info("verifying %s", path)
    try:
        actual = sha256sum(path)
    except OSError as exc:
        problems.append(f"{path}: unreadable ({exc.strerror or exc})")
        return False
    if actual != spec.sha256:
        problems.append(f"{path}: sha256 {actual}, expected {spec.sha256}")
        return False
    if stamp is not None:
        _write_stamp(stamp, key)
    return True


def _find_local(spec: ModelSpec, target: Path, problems: list[str]) -> Path | None:
    """The verified cached copy, else a verified bundled source, else None."""
    if _verified(target, spec, _stamp_for_cached(target), problems):
        return target
    return _verified_bundled(spec, target.parents[3], problems)


def _verified_bundled(spec: ModelSpec, root: Path, problems: list[str]) -> Path | None:
    for path in spec.local_sources():
        if _verified(path, spec, _stamp_for_bundled(path, root), problems):
            log.debug("using bundled %s", path)
            return path
        if not path.exists():
            problems.append(f"{path}: missing")
    return None


def _stamp_key(path: Path, st: os.stat_result, sha: str) -> dict[str, Any]:
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino, "sha256": sha}


def _stamp_trusted(stamp: Any, key: dict[str, Any]) -> bool:
    """Same file facts, and the stamp is clearly younger than the file's mtime.

    A file modified within the file system's timestamp granularity after hashing could keep its
    mtime ("racy git" problem), so a stamp written less than ``_RACY_NS`` after the mtime is not
    trusted: the file is hashed once more and the new stamp then is.
    """
    if not isinstance(stamp, dict) or any(stamp.get(k) != v for k, v in key.items()):
        return False
    stamped = stamp.get("stamped_ns")
    return isinstance(stamped, int) and stamped - key["mtime_ns"] > _RACY_NS


def _write_stamp(stamp: Path, key: dict[str, Any]) -> None:
    _write_json(stamp, {**key, "stamped_ns": time.time_ns()})


def _stamp_for_cached(target: Path) -> Path:
    return target.with_name(target.name + ".verified.json")


def _stamp_for_bundled(path: Path, root: Path) -> Path:
    key = hashlib.sha256(str(path.resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return root / "stamps" / f"{key}.json"


def _lfs_hint(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError:
        return ""
    return " (a Git LFS pointer: run `git lfs pull`)" if head.startswith(b"version https://git-lfs") else ""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data: Any) -> None:
    """Best effort, atomic: a stamp that cannot be written only costs a re-hash next time."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        log.debug("cannot write stamp %s: %s", path, exc)
        _unlink(tmp)


def _unlink(path: Path | None) -> None:
    if path is not None:
        try:
            os.unlink(path)
        except OSError:
            pass


# ----------------------------------------------------------------------------- install helpers


def _open_part(folder: Path, name: str) -> tuple[Path, int]:
    """A new unique temp file next to the destination (same file system: os.replace is atomic)."""
    path = folder / f".{name}.{os.getpid()}.{secrets.token_hex(4)}.part"
    try:
        return path, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
    except OSError as exc:
        raise _readonly_error(folder, exc) from None


def _write_all(fd: int, data: bytes, folder: Path) -> None:
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError as exc:
        hint = "free some disk space or" if exc.errno == errno.ENOSPC else "fix the folder or"
        raise DeepsegError(
            f"cannot write into the model cache folder {folder} ({exc.strerror or exc}): {hint} set {ENV_HOME} "
            "to another folder"
        ) from None


def _install(tmp: Path, target: Path, spec: ModelSpec) -> None:
    """Move a verified temp file into place and stamp it."""
    try:
        os.replace(tmp, target)
    except OSError as exc:
        _unlink(tmp)
        raise _readonly_error(target.parent, exc) from None
    _write_stamp(_stamp_for_cached(target), _stamp_key(target, target.stat(), spec.sha256))


def _remove_leftovers(target: Path) -> None:
    """Under the lock: drop the invalid cached file, its stamp, and old temp files of crashed runs."""
    _unlink(_stamp_for_cached(target))
    if target.exists():
        log.warning("discarding invalid cached %s", target)
        _unlink(target)
    for part in target.parent.glob(f".{target.name}.*.part"):
        try:
            if time.time() - part.stat().st_mtime > LOCK_STALE_S:
                part.unlink()
        except OSError:
            pass


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


# ----------------------------------------------------------------------------- import


def _import_source(spec: ModelSpec, source: Path) -> Path:
    """The file to import: ``source`` itself, or ``spec.file`` inside it (flat or cache layout)."""
    if source.is_file():
        return source
    if source.is_dir():
        for candidate in (
            source / spec.file,
            source / spec.name / spec.version / spec.file,
            source / "models" / spec.name / spec.version / spec.file,
        ):
            if candidate.is_file():
                return candidate
        raise DeepsegError(
            f"{source} holds no {spec.file} (nor {spec.name}/{spec.version}/{spec.file}): pass the model file "
            f"itself or the folder that contains it"
        )
    raise DeepsegError(f"{source} does not exist: pass the downloaded {spec.file} or the folder that contains it")


def _check_import_size(src: Path, spec: ModelSpec) -> None:
    size = src.stat().st_size
    if size != spec.size:
        raise DeepsegError(
            f"{src} is not {spec.key}: {size} bytes, expected {spec.size} (sha256 {spec.sha256}){_lfs_hint(src)}: "
            f"get the right file from {' or '.join(spec.remote_sources()) or 'the model release'}"
        )


def _copy_verified(src: Path, folder: Path, spec: ModelSpec) -> Path:
    """Copy ``src`` into a temp file in ``folder``, hashing the bytes copied; raise on mismatch."""
    tmp, fd = _open_part(folder, spec.file)
    digest = hashlib.sha256()
    ok = False
    try:
        with open(src, "rb") as fh:
            for block in iter(lambda: fh.read(CHUNK_BYTES), b""):
                digest.update(block)
                _write_all(fd, block, folder)
        os.fsync(fd)
        ok = digest.hexdigest() == spec.sha256
    finally:
        os.close(fd)
        if not ok:
            _unlink(tmp)
    if not ok:
        raise DeepsegError(
            f"{src} is not {spec.key}: sha256 {digest.hexdigest()}, expected {spec.sha256}: the file is corrupt or "
            f"another version; get it again from {' or '.join(spec.remote_sources()) or 'the model release'}"
        )
    return tmp


# ----------------------------------------------------------------------------- download


class _FetchError(Exception):
    """One URL failed; ``retry`` marks transient failures worth another attempt."""

    def __init__(self, reason: str, retry: bool = False, wait_s: float | None = None) -> None:
        super().__init__(reason)
        self.retry = retry
        self.wait_s = wait_s


def _download_locked(spec: ModelSpec, target: Path, problems: list[str], progress: bool) -> Path:
    folder = _writable_folder(target.parent)
    with _FileLock(folder, spec.file) as lock:
        if _verified(target, spec, _stamp_for_cached(target), []):  # another process just installed it
            log.info("%s was installed by another process", target)
            return target
        _remove_leftovers(target)
        errors = _download_mirrors(spec, target, progress, lock.refresh)
        if errors is None:
            return target
    raise DeepsegError(_failure_message(spec, target, problems + errors, "every download failed"))


def _download_mirrors(
    spec: ModelSpec, target: Path, progress: bool, heartbeat: Callable[[], None]
) -> list[str] | None:
    """Try each URL in order; None on success, else one line per URL tried."""
    import requests

    errors: list[str] = []
    with requests.Session() as session:
        session.headers.update({"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"})
        for url in spec.remote_sources():
            try:
                tmp = _fetch_with_retries(session, url, spec, target.parent, progress, heartbeat)
            except _FetchError as exc:
                log.warning("download of %s failed: %s", url, exc)
                errors.append(f"{url}: {exc}")
                continue
            _install(tmp, target, spec)
            log.info("downloaded %s from %s into %s", spec.key, url, target)
            return None
    return errors


def _fetch_with_retries(
    session: requests.Session, url: str, spec: ModelSpec, folder: Path, progress: bool,
    heartbeat: Callable[[], None],
) -> Path:
    last: _FetchError | None = None
    for attempt in range(max(1, ATTEMPTS)):
        if last is not None:
            delay = min(BACKOFF_MAX_S, last.wait_s if last.wait_s is not None else BACKOFF_S * 2 ** (attempt - 1))
            log.info("retrying %s in %.1f s (attempt %d of %d)", url, delay, attempt + 1, ATTEMPTS)
            time.sleep(delay)
            heartbeat()
        try:
            return _fetch_once(session, url, spec, folder, progress, heartbeat)
        except _FetchError as exc:
            if not exc.retry:
                raise
            last = exc
            log.info("%s: %s", url, exc)
    assert last is not None
    raise _FetchError(f"{last} (after {ATTEMPTS} attempts)")


def _fetch_once(
    session: requests.Session, url: str, spec: ModelSpec, folder: Path, progress: bool,
    heartbeat: Callable[[], None],
) -> Path:
    """One GET into a verified temp file in ``folder``."""
    import requests

    log.info("downloading %s (%s) from %s", spec.file, _human(spec.size), url)
    tmp: Path | None = None
    ok = False
    try:
        with session.get(url, stream=True, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S)) as resp:
            _check_response(resp, spec)
            tmp, fd = _open_part(folder, spec.file)
            try:
                size, digest = _stream(resp, fd, spec, folder, progress, heartbeat)
                os.fsync(fd)
            finally:
                os.close(fd)
        _check_payload(size, digest, spec)
        ok = True
        return tmp
    except requests.exceptions.SSLError as exc:
        raise _FetchError(
            f"TLS error ({_short(exc)}); behind a proxy that inspects TLS, set REQUESTS_CA_BUNDLE to its CA bundle"
        ) from None
    except requests.exceptions.Timeout as exc:
        raise _FetchError(f"timed out ({_short(exc)})", retry=True) from None
    except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
        raise _FetchError(_short(exc), retry=True) from None
    except requests.exceptions.RequestException as exc:
        raise _FetchError(_short(exc)) from None
    finally:
        if not ok:
            _unlink(tmp)


def _check_response(resp: requests.Response, spec: ModelSpec) -> None:
    """Reject error statuses and HTML pages announced as such."""
    if resp.status_code >= 400:
        transient = resp.status_code >= 500 or resp.status_code in (408, 429)
        raise _FetchError(f"HTTP {resp.status_code} {resp.reason or ''}".rstrip(), transient, _retry_after(resp))
    if resp.status_code != 200:
        raise _FetchError(f"unexpected HTTP {resp.status_code} {resp.reason or ''}".rstrip())
    if resp.headers.get("Content-Type", "").split(";")[0].strip().lower() in ("text/html", "application/xhtml+xml"):
        raise _FetchError(_HTML)


def _check_first_block(resp: requests.Response, block: bytes, spec: ModelSpec) -> None:
    """Reject an HTML body, then a Content-Length that cannot be the model (before the rest)."""
    if _looks_like_html(block):
        raise _FetchError(_HTML)
    length = resp.headers.get("Content-Length")
    encoded = resp.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
    if length is not None and not encoded and length.strip().isdigit() and int(length) != spec.size:
        raise _FetchError(f"the server announces {length} bytes, expected {spec.size}: not this model version")


def _retry_after(resp: requests.Response) -> float | None:
    value = resp.headers.get("Retry-After", "").strip()
    return float(value) if value.isdigit() else None


def _stream(
    resp: requests.Response, fd: int, spec: ModelSpec, folder: Path, progress: bool,
    heartbeat: Callable[[], None],
) -> tuple[int, str]:
    """Write the body into ``fd``; returns (bytes, sha256). Stops early on HTML or oversize."""
    from tqdm import tqdm

    digest = hashlib.sha256()
    size = 0
    with tqdm(total=spec.size, unit="B", unit_scale=True, unit_divisor=1024, desc=spec.file, leave=False,
              disable=True if not progress else None) as bar:
        for block in resp.iter_content(chunk_size=CHUNK_BYTES):
            if size == 0:
                _check_first_block(resp, block, spec)
            size += len(block)
            if size > spec.size:
                raise _FetchError(f"the server sends more than the expected {spec.size} bytes: not this model version")
            digest.update(block)
            _write_all(fd, block, folder)
            bar.update(len(block))
            heartbeat()
    return size, digest.hexdigest()


def _check_payload(size: int, digest: str, spec: ModelSpec) -> None:
    if size != spec.size:
        raise _FetchError(f"truncated download: {size} of {spec.size} bytes", retry=True)
    if digest != spec.sha256:
        raise _FetchError(f"sha256 mismatch: got {digest}, expected {spec.sha256}")


def _looks_like_html(head: bytes) -> bool:
    start = head[:256].lstrip().lower()
    return start.startswith((b"<!doctype", b"<html", b"<head", b"<body", b"<?xml"))


def _short(exc: BaseException) -> str:
    """The useful part of a requests/urllib3 error (e.g. 'Connection refused')."""
    text = str(exc)
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if found:
        return found.group(1).strip()
    found = re.search(r"IncompleteRead\((\d+) bytes read, (\d+) more expected\)", text)
    if found:
        return f"Connection broken after {found.group(1)} bytes ({found.group(2)} more expected)"
    found = re.search(r"\[SSL: [A-Z_]+\] [^'\"(]+", text)
    if found:
        return found.group(0).strip()
    if "Read timed out" in text:
        return f"no data for {READ_TIMEOUT_S:g} s"
    if "timed out" in text:
        return f"no connection within {CONNECT_TIMEOUT_S:g} s"
    return text[:300]


def _human(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n} bytes"


# ----------------------------------------------------------------------------- messages


def _task_hint(spec: ModelSpec) -> str:
    """The task that uses this model, for the ``-install`` command (``<task>`` when unknown)."""
    from .registry import load_registry

    path = spec.registry_dir / "model_registry.json"
    try:
        registry = load_registry(path if path.is_file() else None)
    except DeepsegError:
        return "<task>"
    for task in registry.tasks.values():
        if spec.name in (task.localizer, task.segmenter):
            return task.name
    return "<task>"


def _import_hint(spec: ModelSpec, target: Path) -> str:
    return (
        f"download {spec.file} (sha256 {spec.sha256}, {spec.size} bytes) on a machine with internet and run "
        f"`imsct_deepseg -install {_task_hint(spec)} --from <file-or-folder>`, or copy it to {target}"
    )


def _offline_message(spec: ModelSpec, target: Path, problems: list[str]) -> str:
    seen = f" (checked: {'; '.join(problems)})" if problems else ""
    return (
        f"model {spec.key} is not installed in {target} and offline mode forbids downloading it{seen}: "
        f"{_import_hint(spec, target)}"
    )


def _failure_message(spec: ModelSpec, target: Path, problems: list[str], what: str) -> str:
    tried = f": {'; '.join(problems)}" if problems else ""
    return (
        f"cannot get model {spec.key} ({what}){tried}. Fix: check the network or proxy (HTTPS_PROXY), or "
        f"{_import_hint(spec, target)}"
    )


# ----------------------------------------------------------------------------- locking


class _FileLock:
    """Inter-process lock for installing one file into ``folder``.

    ``fcntl.flock`` where available (released by the kernel if the holder dies; the lock file is
    never deleted). Elsewhere, or on file systems without flock, an ``O_CREAT|O_EXCL`` lock file
    holding pid/host; it is broken when its holder is a dead pid on this host or when it has not
    been touched for ``LOCK_STALE_S`` (holders touch it while downloading, see ``refresh``).
    """

    def __init__(self, folder: Path, name: str) -> None:
        self.folder = folder
        self.flock_path = folder / f".{name}.flock"
        self.excl_path = folder / f".{name}.lock"
        self._fd: int | None = None
        self._token = ""
        self._touched = 0.0
        self._said_waiting = False

    def __enter__(self) -> _FileLock:
        method = LOCK_METHOD if LOCK_METHOD != "auto" else ("flock" if fcntl is not None else "excl")
        if method == "flock" and self._acquire_flock():
            return self
        self._acquire_excl()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the flock
            self._fd = None
        elif self._token:
            if (_read_json(self.excl_path) or {}).get("token") == self._token:
                _unlink(self.excl_path)
            else:
                log.warning("lock %s was taken over while held", self.excl_path)
            self._token = ""

    def refresh(self) -> None:
        """Heartbeat for the O_EXCL lock file (rate-limited; a no-op with flock)."""
        now = time.monotonic()
        if self._token and now - self._touched > min(5.0, LOCK_STALE_S / 4):
            self._touched = now
            try:
                os.utime(self.excl_path)
            except OSError:
                pass

    def _acquire_flock(self) -> bool:
        """True once held; False when this file system has no flock (caller falls back)."""
        try:
            fd = os.open(self.flock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _readonly_error(self.folder, exc) from None
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._fd = fd
                return True
            except BlockingIOError:
                pass
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    log.debug("flock unsupported on %s (%s): using a lock file", self.folder, exc)
                    return False
                raise _readonly_error(self.folder, exc) from None
            self._wait(deadline, self.flock_path, fd)

    def _acquire_excl(self) -> None:
        self._token = secrets.token_hex(8)
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "token": self._token})
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fd = os.open(self.excl_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                if not self._break_if_stale():
                    self._wait(deadline, self.excl_path, None)
                continue
            except OSError as exc:
                self._token = ""
                raise _readonly_error(self.folder, exc) from None
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(info)
            self._touched = time.monotonic()
            return

    def _break_if_stale(self) -> bool:
        try:
            age = time.time() - self.excl_path.stat().st_mtime
        except FileNotFoundError:
            return True
        holder = _read_json(self.excl_path) or {}
        dead = holder.get("host") == socket.gethostname() and not _pid_alive(holder.get("pid"))
        if not dead and age <= LOCK_STALE_S:
            return False
        log.warning("removing stale lock %s (pid %s on %s, untouched for %.0f s)",
                    self.excl_path, holder.get("pid"), holder.get("host"), age)
        _unlink(self.excl_path)
        return True

    def _wait(self, deadline: float, path: Path, fd: int | None) -> None:
        if time.monotonic() > deadline:
            if fd is not None:
                os.close(fd)
            self._token = ""
            fix = "wait for it or stop it" + ("" if fd is not None else "; if none is running, delete the lock file")
            raise DeepsegError(
                f"another process has been installing into {self.folder} for over {LOCK_WAIT_S:g} s (lock {path}): "
                f"{fix}"
            )
        if not self._said_waiting:
            self._said_waiting = True
            log.info("waiting for another process that is installing into %s", self.folder)
        time.sleep(LOCK_POLL_S)


def _pid_alive(pid: Any) -> bool:
    """Whether a local pid runs (True when unknown: then only the lock's age can break it)."""
    if not isinstance(pid, int) or pid <= 0:
        return True
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
