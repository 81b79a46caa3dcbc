"""A local HTTP server that misbehaves on demand, for download tests.

``FlakyServer`` listens on 127.0.0.1 (random port) in a daemon thread, counts requests per path
and answers each path with a scripted sequence of actions (the last one repeats). It stops on
``__exit__`` or by itself after ``lifetime_s``; stalled handlers wake up when it stops.
"""
from __future__ import annotations

import logging
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

log = logging.getLogger(__name__)

Action = Callable[[BaseHTTPRequestHandler, threading.Event], None]


def send_bytes(
    data: bytes,
    *,
    chunk: int = 65536,
    delay_s: float = 0.0,
    content_type: str = "application/octet-stream",
    length: int | None | str = "auto",
    cut: int | None = None,
) -> Action:
    """200 with ``data`` (only ``data[:cut]`` when cut); Content-Length = len(data) unless ``length``."""

    def act(handler: BaseHTTPRequestHandler, stop: threading.Event) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        if length is not None:
            handler.send_header("Content-Length", str(len(data) if length == "auto" else length))
        handler.end_headers()
        body = data if cut is None else data[:cut]
        for start in range(0, len(body), chunk):
            if stop.is_set():
                return
            handler.wfile.write(body[start:start + chunk])
            handler.wfile.flush()
            if delay_s:
                stop.wait(delay_s)

    return act


def status(code: int, body: bytes = b"error") -> Action:
    """An error status with a small body."""

    def act(handler: BaseHTTPRequestHandler, stop: threading.Event) -> None:
        handler.send_response(code)
        handler.send_header("Content-Type", "text/plain")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return act


def html_page(content_type: str = "text/html; charset=utf-8") -> Action:
    """200 with an HTML login page (as a proxy or an expired share link would send)."""
    return send_bytes(b"<!DOCTYPE html>\n<html><body>Please log in</body></html>\n", content_type=content_type)


def _headers_only(handler: BaseHTTPRequestHandler, announced: int) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "application/octet-stream")
    handler.send_header("Content-Length", str(announced))
    handler.end_headers()
    handler.wfile.flush()


def stall(seconds: float, announced: int = 1000) -> Action:
    """200 and headers, then silence for ``seconds`` (a read timeout), then close."""

    def act(handler: BaseHTTPRequestHandler, stop: threading.Event) -> None:
        _headers_only(handler, announced)
        stop.wait(seconds)

    return act


def trickle(interval_s: float, announced: int, byte: bytes = b"\x08") -> Action:
    """200 and headers, then one byte every ``interval_s`` (never silent long enough to time out)."""

    def act(handler: BaseHTTPRequestHandler, stop: threading.Event) -> None:
        _headers_only(handler, announced)
        for _ in range(announced):
            if stop.wait(interval_s):
                return
            handler.wfile.write(byte)
            handler.wfile.flush()

    return act


def redirect(location: str, code: int = 302) -> Action:
    def act(handler: BaseHTTPRequestHandler, stop: threading.Event) -> None:
        handler.send_response(code)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return act


class FlakyServer:
    """Scripted HTTP server; use as a context manager."""

    def __init__(self, lifetime_s: float = 120.0) -> None:
        self.hits: Counter[str] = Counter()
        self._routes: dict[str, list[Action]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._lifetime_s = lifetime_s
        self._httpd: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []

    def route(self, path: str, *actions: Action) -> str:
        """Script ``path``: request n gets ``actions[n]`` (the last repeats). Returns its URL."""
        with self._lock:
            self._routes[path] = list(actions)
        return self.url(path)

    def url(self, path: str) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}{path}"

    def __enter__(self) -> FlakyServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                server._dispatch(self)

            def log_message(self, fmt: str, *args: object) -> None:
                log.debug("test server: " + fmt, *args)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        serve = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        watchdog = threading.Thread(target=self._expire, daemon=True)
        self._threads = [serve, watchdog]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        assert self._httpd is not None
        self._httpd.shutdown()
        self._httpd.server_close()

    def _expire(self) -> None:
        if not self._stop.wait(self._lifetime_s):
            log.warning("test server outlived %s s: stopping it", self._lifetime_s)
            self.close()

    def _dispatch(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path.split("?")[0]
        with self._lock:
            self.hits[path] += 1
            actions = self._routes.get(path)
            action = actions[min(self.hits[path], len(actions)) - 1] if actions else status(404, b"not found")
        try:
            action(handler, self._stop)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up: that is what some tests want


def free_port() -> int:
    """A local port with nothing listening (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

