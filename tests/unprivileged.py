"""Run code as the unprivileged user 'nobody', for permission tests on machines that run as root.

As root, ``chmod`` does not stop reads or writes, so such tests fork a child that drops to
'nobody' (uid/gid 65534) and checks there. Whatever the child needs must be imported first:
the interpreter's site-packages may be unreadable to 'nobody'.
"""
from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from deepseg_imsct.errors import DeepsegError

NOBODY = 65534
CHILD_TIMEOUT_S = 280.0  # a few seconds on an idle machine; generous for a loaded one, under pytest's 300 s


def can_drop_privileges() -> bool:
    """Whether this process runs as root on a system with fork (so a child can become 'nobody')."""
    return hasattr(os, "fork") and hasattr(os, "geteuid") and os.geteuid() == 0


def _preload() -> None:
    """Import what children use lazily (requests, tqdm, ONNX Runtime, the whole package)."""
    import filelock  # noqa: F401
    import onnxruntime  # noqa: F401
    import platformdirs  # noqa: F401
    import pooch  # noqa: F401
    import requests  # noqa: F401
    import tqdm  # noqa: F401

    from deepseg_imsct import cli, console, download, fetch, inference, io, pipeline, postprocess, registry, transaction  # noqa: F401


def as_nobody(fn: Callable[[], str]) -> tuple[int, str]:
    """Run ``fn() -> str`` in a forked child that dropped root to 'nobody': (exit code, text).

    Exit code 0: ``fn`` returned the text; 1: it raised DeepsegError (text: its message);
    2: it raised anything else (text: its repr).
    """
    _preload()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        os.close(read_end)
        code = 2
        try:
            _fresh_locks()
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.write(write_end, fn().encode())
            code = 0
        except DeepsegError as exc:
            os.write(write_end, str(exc).encode())
            code = 1
        except BaseException as exc:  # noqa: BLE001 (reported to the parent)
            os.write(write_end, repr(exc).encode())
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as fh:
        if not select.select([fh], [], [], CHILD_TIMEOUT_S)[0]:  # a hung child fails the test, not the run
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"the child running as 'nobody' gave no answer in {CHILD_TIMEOUT_S:.0f} s")
        text = fh.read().decode()
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), text


def _fresh_locks() -> None:
    """In a forked child: tqdm's lock may have been held by another thread of the parent at the
    fork (its monitor thread), and would then never be released; give tqdm a new one."""
    import threading

    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())


@contextlib.contextmanager
def shared_folder() -> Iterator[Path]:
    """A fresh root-owned folder (0755) in /tmp: 'nobody' can read in it but not write."""
    base = Path(tempfile.mkdtemp(prefix="deepseg_nobody_", dir="/tmp"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)
