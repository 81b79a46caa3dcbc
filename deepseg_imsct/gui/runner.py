"""Run ``imsct_deepseg`` in a child process that Cancel can stop (plain Python, no wx).

The GUI polls :meth:`CommandRun.progress` and :meth:`CommandRun.outcome` from its main loop;
one reader thread follows the child's stderr (log lines and the tqdm bar of the sliding window).
Cancel sends SIGTERM (the worker turns it into the command's Ctrl-C path: nothing written or
changed), and SIGKILL after a grace period; after a kill, the command's temporary files of the
expected outputs (:func:`deepseg_imsct.outputs.temporary_files`) are removed, so no partial output is ever left behind.
"""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from ..outputs import ERROR_PREFIX, PROG, temporary_files

log = logging.getLogger(__name__)

BAR = re.compile(r"^\s*(?P<desc>[^:|]*?):?\s*\d+%\|.*?\|\s*(?P<n>\d+)/(?P<total>\d+)")
SPLIT = re.compile(r"[\r\n]")
GRACE_S = 10.0
TAIL_LINES = 50


class Status(str, Enum):
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Progress:
    """``fraction`` in [0, 1] while the sliding window runs (None before: unknown); ``text``: the
    latest line the command printed."""

    fraction: float | None = None
    text: str = "starting…"


@dataclass(frozen=True)
class Outcome:
    status: Status
    message: str = ""
    outputs: dict[str, Path] = field(default_factory=dict)
    returncode: int | None = None


def parse_progress(line: str, previous: Progress) -> Progress:
    """The progress after one stderr line (a tqdm refresh or a log line)."""
    text = line.strip()
    if not text:
        return previous
    bar = BAR.match(text)
    if bar:
        n, total = int(bar["n"]), int(bar["total"])
        return Progress(n / total if total else None, f"{bar['desc'] or 'segmenting'} {n}/{total}")
    return Progress(previous.fraction, text)


def error_message(lines: Sequence[str], returncode: int) -> str:
    """The command's one-line error as it printed it, else a line naming the exit status."""
    for line in reversed(lines):
        if line.startswith(ERROR_PREFIX):
            return line.strip()
    last = next((line.strip() for line in reversed(lines) if line.strip()), "no message")
    return f"{PROG} failed (exit status {returncode}): {last}"


def worker_command(args: Sequence[str], python: str | None = None) -> list[str]:
    """The child's command line: ``imsct_deepseg ARGS`` run by this Python (same install)."""
    return [python or sys.executable, "-m", "deepseg_imsct.gui.worker", *args]


class CommandRun:
    """One run of the command; :meth:`start` it, then poll it, :meth:`cancel` it or :meth:`wait`."""

    def __init__(self, args: Sequence[str], expected: Mapping[str, Path], *, command: Sequence[str] | None = None,
                 grace_s: float = GRACE_S, env: Mapping[str, str] | None = None):
        self._command = list(command) if command is not None else worker_command(args)
        self._expected = dict(expected)
        self._grace_s = grace_s
        self._env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        self._lock = threading.Lock()
        self._progress = Progress()
        self._outcome: Outcome | None = None
        self._cancelled = threading.Event()
        self._finished = threading.Event()
        self._tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._proc: subprocess.Popen | None = None
        self._killer: threading.Timer | None = None

    @property
    def command(self) -> list[str]:
        return list(self._command)

    def start(self) -> CommandRun:
        log.info("running %s", subprocess.list2cmdline(self._command))
        self._proc = subprocess.Popen(self._command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, env=self._env)
        threading.Thread(target=self._follow, name="imsct-run", daemon=True).start()
        return self

    def progress(self) -> Progress:
        with self._lock:
            return self._progress

    def outcome(self) -> Outcome | None:
        """None while running."""
        with self._lock:
            return self._outcome

    def wait(self, timeout: float | None = None) -> Outcome | None:
        self._finished.wait(timeout)
        return self.outcome()

    def cancel(self) -> None:
        """Stop the command: SIGTERM now, SIGKILL after the grace period. Idempotent."""
        if self._proc is None or self._finished.is_set() or self._cancelled.is_set():
            self._cancelled.set()
            return
        self._cancelled.set()
        log.info("cancelling the segmentation (pid %d)", self._proc.pid)
        try:
            self._proc.terminate()
        except ProcessLookupError:
            return
        self._killer = threading.Timer(self._grace_s, self._kill)
        self._killer.daemon = True
        self._killer.start()

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            log.warning("the command did not stop within %.0f s: killing it", self._grace_s)
            self._proc.kill()

    def _follow(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        pending = ""
        while chunk := self._proc.stderr.read1(4096):
            *lines, pending = SPLIT.split(pending + chunk.decode("utf-8", "replace"))
            self._consume(lines)
        self._consume([pending])
        returncode = self._proc.wait()
        if self._killer is not None:
            self._killer.cancel()
        outcome = self._conclude(returncode)
        with self._lock:
            self._outcome = outcome
        self._finished.set()
        log.info("segmentation %s%s", outcome.status.value, f": {outcome.message}" if outcome.message else "")

    def _consume(self, lines: Sequence[str]) -> None:
        for line in lines:
            if not line.strip():
                continue
            self._tail.append(line)
            with self._lock:
                self._progress = parse_progress(line, self._progress)

    def _conclude(self, returncode: int) -> Outcome:
        if returncode < 0:  # killed by a signal: the command could not remove its temporary files
            for tmp in temporary_files(self._expected):
                log.info("removing %s", tmp)
                tmp.unlink(missing_ok=True)
        if self._cancelled.is_set():
            written = " (it had already finished: its outputs are written but not loaded)" if returncode == 0 else \
                ": no output was written or changed"
            return Outcome(Status.CANCELLED, f"cancelled{written}", returncode=returncode)
        if returncode != 0:
            return Outcome(Status.FAILED, error_message(list(self._tail), returncode), returncode=returncode)
        missing = [str(p) for p in self._expected.values() if not p.is_file()]
        if missing:
            return Outcome(Status.FAILED, f"imsct_deepseg finished but did not write {', '.join(missing)}", returncode=0)
        return Outcome(Status.DONE, outputs=dict(self._expected), returncode=0)
