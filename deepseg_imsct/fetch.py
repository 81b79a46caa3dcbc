"""Getting a model file from its mirrors (the network half of the model cache, see download.py).

pooch does the retrieval: a temp file in the destination folder, moved into place only once its
sha256 matches. This module adds what is specific to model files: the mirrors in order, retries of
transient failures with back-off, early rejection of an HTML page, of a wrong Content-Length and
of a body longer than the model, and the limits of a transfer: an overall deadline per model (all
mirrors and attempts) and a minimum rate, both settable through environment variables. A transfer
past a limit is aborted at once by shutting its socket down, even in the middle of a blocking read.
Timings are module constants read at call time, so tests can tune them.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pooch

from . import __version__
from .errors import DeepsegError
from .registry import ModelSpec

log = logging.getLogger(__name__)

ENV_DEADLINE = "DEEPSEG_IMSCT_DOWNLOAD_TIMEOUT"  # seconds per model; 0 turns the deadline off
ENV_MIN_RATE = "DEEPSEG_IMSCT_MIN_RATE"  # bytes/s over RATE_WINDOW_S; 0 turns the check off
DEADLINE_S = 1800.0
MIN_RATE = 10_000.0
RATE_WINDOW_S = 30.0
CONNECT_TIMEOUT_S = 10.0  # TCP/TLS connect
READ_TIMEOUT_S = 60.0  # max silence between two received bytes
ATTEMPTS = 3  # per URL, for transient errors (connection, timeout, truncation, 5xx/408/429)
BACKOFF_S = 1.0  # first retry delay, doubled each retry
BACKOFF_MAX_S = 30.0
WATCH_POLL_S = 0.1
CHUNK_BYTES = 1 << 16
_HTML = "the server sent an HTML page instead of the model (an error or login page?)"
_HEADERS = {"User-Agent": f"deepseg-imsct/{__version__}", "Accept-Encoding": "identity"}


class FetchError(Exception):
    """One URL failed: ``retry`` marks transient failures, ``final`` stops the remaining mirrors."""

    def __init__(self, reason: str, retry: bool = False, wait_s: float | None = None, final: bool = False) -> None:
        super().__init__(reason)
        self.retry, self.wait_s, self.final = retry, wait_s, final


def download(spec: ModelSpec, target: Path, progress: bool) -> list[str]:
    """Fetch ``spec`` into ``target`` trying each mirror in order: [] once done, else one line per URL."""
    deadline_s, min_rate = setting(ENV_DEADLINE, DEADLINE_S), setting(ENV_MIN_RATE, MIN_RATE)
    deadline = time.monotonic() + deadline_s if deadline_s else math.inf
    errors: list[str] = []
    for url in spec.remote_sources():
        try:
            _with_retries(url, lambda: retrieve(url, spec, target, _Transfer(spec, progress, deadline, deadline_s, min_rate)),
                          deadline, deadline_s)
        except FetchError as exc:
            log.warning("download of %s failed: %s", url, exc)
            errors.append(f"{url}: {exc}")
            if exc.final:
                break
            continue
        log.info("downloaded %s from %s into %s", spec.key, url, target)
        return []
    return errors


def retrieve(url: str, spec: ModelSpec, target: Path, downloader: Callable[[str, str, Any], None]) -> None:
    """pooch's retrieval into ``target``: ``downloader`` fills a temp file, moved in if its sha256 matches."""
    logger = pooch.get_logger()  # pooch logs every download at INFO on its own handler
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        pooch.retrieve(url, known_hash=f"sha256:{spec.sha256}", fname=target.name, path=target.parent,
                       downloader=downloader)
    except ValueError as exc:  # pooch's hash check of the temp file (the downloader checked it already)
        raise FetchError(f"sha256 mismatch ({exc})") from None
    finally:
        logger.setLevel(level)


def setting(name: str, default: float) -> float:
    """A limit from the environment (a number >= 0), else ``default``."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise DeepsegError(f"{name} must be a number >= 0 (0 turns the limit off); got '{text}'")
    return value


def _with_retries(url: str, attempt: Callable[[], None], deadline: float, deadline_s: float) -> None:
    last: FetchError | None = None
    for number in range(max(1, ATTEMPTS)):
        if last is not None:
            delay = min(BACKOFF_MAX_S, last.wait_s if last.wait_s is not None else BACKOFF_S * 2 ** (number - 1))
            log.info("retrying %s in %.1f s (attempt %d of %d)", url, delay, number + 1, ATTEMPTS)
            time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
        if time.monotonic() >= deadline:
            raise FetchError(_deadline_reason(deadline_s), final=True)
        try:
            return attempt()
        except FetchError as exc:
            if not exc.retry:
                raise
            last = exc
            log.info("%s: %s", url, exc)
    assert last is not None
    raise FetchError(f"{last} (after {ATTEMPTS} attempts)")


class _Transfer:
    """pooch downloader for one GET: checks the response, streams and hashes the body into pooch's
    temp file, and aborts (shutting the socket down) past the deadline or below the minimum rate."""

    def __init__(self, spec: ModelSpec, progress: bool, deadline: float, deadline_s: float, min_rate: float) -> None:
        self.spec, self.progress, self.deadline, self.deadline_s, self.min_rate = spec, progress, deadline, deadline_s, min_rate
        self.size, self.digest = 0, hashlib.sha256()
        self.abort: FetchError | None = None
        self.started: float | None = None
        self.announced: int | None = None
        self.fd: int | None = None
        self.done = threading.Event()
        self.file: Any = None

    def __call__(self, url: str, output_file: str, _pooch: Any) -> None:
        import requests

        log.info("downloading %s (%.1f MiB) from %s", self.spec.file, self.spec.size / 2**20, url)
        from tqdm import tqdm

        bar = tqdm(total=self.spec.size, unit="B", unit_scale=True, unit_divisor=1024, desc=self.spec.file, leave=False,
                   disable=None if self.progress else True)  # None: shown on a terminal only
        http = pooch.HTTPDownloader(progressbar=bar, chunk_size=CHUNK_BYTES, headers=_HEADERS,
                                    timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S), hooks={"response": self._on_response})
        watchdog = threading.Thread(target=self._watch, daemon=True)
        watchdog.start()
        try:
            with open(output_file, "wb") as self.file:
                http(url, self, None)
        except requests.RequestException as exc:
            raise self.abort or _classify(exc) from None
        finally:
            self.done.set()
            watchdog.join()
        if self.size != self.spec.size:
            raise self.abort or FetchError(f"truncated download: {self.size} of {self.spec.size} bytes", retry=True)
        if self.digest.hexdigest() != self.spec.sha256:
            raise FetchError(f"sha256 mismatch: got {self.digest.hexdigest()}, expected {self.spec.sha256}")

    def write(self, block: bytes) -> None:
        if self.abort is not None:
            raise self.abort
        if self.size == 0:  # an HTML page first (its length is wrong too), then a length that cannot be right
            if block[:256].lstrip().lower().startswith((b"<!doctype", b"<html", b"<head", b"<body", b"<?xml")):
                raise FetchError(_HTML)
            if self.announced not in (None, self.spec.size):
                raise FetchError(f"the server announces {self.announced} bytes, expected {self.spec.size}: not this "
                                 "model version")
        self.size += len(block)
        if self.size > self.spec.size:
            raise FetchError(f"the server sends more than the expected {self.spec.size} bytes: not this model version")
        self.digest.update(block)
        self.file.write(block)

    def flush(self) -> None:
        self.file.flush()

    def _on_response(self, resp: Any, *args: Any, **kwargs: Any) -> None:
        """Requests' response hook: reject what cannot be the model before reading the body."""
        if resp.is_redirect or resp.status_code >= 400:  # redirects are followed; pooch raises for errors
            return
        if resp.status_code != 200:
            raise FetchError(f"unexpected HTTP {resp.status_code} {resp.reason or ''}".rstrip())
        if resp.headers.get("Content-Type", "").split(";")[0].strip().lower() in ("text/html", "application/xhtml+xml"):
            raise FetchError(_HTML)
        length = resp.headers.get("Content-Length", "").strip()
        encoded = resp.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
        self.announced = int(length) if length.isdigit() and not encoded else None
        with contextlib.suppress(OSError, ValueError, AttributeError):
            self.fd = resp.raw.fileno()  # the socket the body is read from
        self.started = time.monotonic()

    def _watch(self) -> None:
        """Until the transfer ends: enforce the deadline, and the minimum rate over each window."""
        mark: tuple[float, int] | None = None
        while not self.done.wait(WATCH_POLL_S):
            now = time.monotonic()
            if now >= self.deadline:
                return self._stop(FetchError(_deadline_reason(self.deadline_s), final=True))
            if self.started is None or not self.min_rate:
                continue
            mark = mark or (self.started, 0)
            if now - mark[0] >= RATE_WINDOW_S:
                if self.size - mark[1] < self.min_rate * (now - mark[0]):
                    return self._stop(FetchError(
                        f"slower than {self.min_rate:g} bytes/s over {RATE_WINDOW_S:g} s; to accept slower "
                        f"transfers set {ENV_MIN_RATE}"))
                mark = (now, self.size)

    def _stop(self, reason: FetchError) -> None:
        self.abort = reason
        if self.fd is not None:
            with contextlib.suppress(OSError), socket.fromfd(self.fd, socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked read with an end of stream


def _deadline_reason(deadline_s: float) -> str:
    return f"not done within the download deadline of {deadline_s:g} s; to allow more set {ENV_DEADLINE}"


def _classify(exc: Exception) -> FetchError:
    """A requests error as a one-line reason; connection trouble, timeouts and 5xx are worth a retry."""
    import requests

    resp = getattr(exc, "response", None)
    if isinstance(exc, requests.HTTPError) and resp is not None:
        code = resp.status_code
        after = resp.headers.get("Retry-After", "").strip()
        return FetchError(f"HTTP {code} {resp.reason or ''}".rstrip(), code >= 500 or code in (408, 429),
                          float(after) if after.isdigit() else None)
    if isinstance(exc, requests.exceptions.SSLError):
        return FetchError(f"TLS error ({_short(exc)}); behind a proxy that inspects TLS, set REQUESTS_CA_BUNDLE to "
                          "its CA bundle")
    transient = (requests.exceptions.Timeout, requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError)
    return FetchError(_short(exc), retry=isinstance(exc, transient))


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
        return f"timed out (no connection within {CONNECT_TIMEOUT_S:g} s)"
    return text[:300]
