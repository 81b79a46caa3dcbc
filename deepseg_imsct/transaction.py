"""Output sets as transactions: checked before the work, replaced all at once, one writer at a time.

:func:`check_outputs` refuses, before any inference, what writing would get wrong: a folder that
cannot be created or written, names too long once temporary, an output that is an input, a folder
in the way, and (unless ``overwrite``) a file this tool did not write or wrote for another T2w
(its sidecar records the writer, the source T2w and the image's sha256).
:func:`locked` serializes writers on :data:`outputs.LOCK_NAME`; once held, a set left half-replaced
by a killed run is rolled back (:data:`outputs.JOURNAL_NAME`) and stale temporary files of this
tool (:data:`outputs.TEMP_NAME`) are removed. :func:`commit` keeps each old file aside until every
new one is in place and puts the old set back on any failure or interrupt. :func:`write_atomic`
replaces one file at once (an index, a table, a model's record).
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

from .checksums import sha256_file
from .errors import DeepsegError
from .outputs import JOURNAL_NAME, LOCK_NAME, PROG, TEMP_NAME, TEMP_SUFFIX, TOOL_NAME, sidecar_path, temp_name_length, temp_prefix

LOCK_WAIT_S = 600.0  # a whole write takes about a second; a holder this slow is stuck
DEFAULT_NAME_MAX = 255
OVERWRITE = "-overwrite"  # the option named in messages (params.py: 'overwrite')

Entry = tuple[Path, Path, "Path | None"]  # (temporary, final, old final kept aside or None)


def check_outputs(images: Iterable[Path], inputs: Mapping[str, Path | str], overwrite: bool = False) -> None:
    """Refuse, with the fix, outputs that cannot or must not be written (``inputs``: {role: path})."""
    images = list(images)
    for folder in sorted({p.parent for p in images}):
        limit = _check_folder(folder)
        if os.path.lexists(folder / JOURNAL_NAME):  # a killed run's half-replaced set: put back before judging
            with locked(folder):
                pass
        for path in images:
            if path.parent == folder:
                for target in (path, sidecar_path(path)):
                    _check_name(target, limit)
    for image in images:
        for target in (image, sidecar_path(image)):
            _check_not_input(target, inputs)
            if os.path.isdir(target):
                raise DeepsegError(f"a folder is in the way of output {target}: move it away or choose another folder with -o")
        if not overwrite and (os.path.lexists(image) or os.path.lexists(sidecar_path(image))):
            _check_owner(image, inputs["T2w"])


def _check_folder(folder: Path) -> int:
    """The folder, or its nearest existing parent (the folder is created later), must be a
    writable folder; returns the file system's longest file name."""
    probe = folder
    while not os.path.lexists(probe) and probe != probe.parent:
        probe = probe.parent
    if not os.path.isdir(probe):
        raise DeepsegError(f"cannot create output folder {folder} (a file is in the way: {probe}): choose another with -o")
    if not os.access(probe, os.W_OK | os.X_OK):
        if probe == folder:
            raise DeepsegError(f"output folder {folder} is not writable: choose another with -o")
        raise DeepsegError(f"cannot create output folder {folder} ({probe} is not writable): choose another with -o")
    try:
        return int(os.pathconf(probe, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return DEFAULT_NAME_MAX


def _check_name(target: Path, limit: int) -> None:
    need = temp_name_length(target)
    if need > limit:
        raise DeepsegError(
            f"output file name {target.name} is too long for {target.parent} ({need} bytes with the temporary suffix; "
            f"the file system allows {limit}): give the T2w file a shorter name (a symbolic link will do)"
        )


def _same_file(a: Path | str, b: Path | str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return Path(a).resolve() == Path(b).resolve()


def _check_not_input(target: Path, inputs: Mapping[str, Path | str]) -> None:
    for role, source in inputs.items():
        if os.path.lexists(target) and _same_file(target, source):
            raise DeepsegError(f"output {target} would replace the {role} input {source}: rename that input or choose another folder with -o")


def _recorded(sidecar: Path) -> dict | None:
    """The sidecar's content where it says this tool wrote it, else None."""
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
        return data if data["GeneratedBy"][0]["Name"] == TOOL_NAME else None
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


def _check_owner(image: Path, t2: Path | str) -> None:
    """An existing output may be replaced when this tool wrote it, unchanged, from this T2w."""
    data = _recorded(sidecar_path(image))
    digest = data.get("OutputSha256") if data else None
    changed = bool(digest) and os.path.isfile(image) and sha256_file(image) != digest
    if data is None or changed:
        shown = image if os.path.lexists(image) else sidecar_path(image)
        raise DeepsegError(f"{shown} was not written by {PROG} (or was changed since): move it away, choose another folder with -o, "
                           f"or add {OVERWRITE} to replace it")
    sources = data.get("Sources")
    source = sources.get("T2w") if isinstance(sources, dict) else None
    if not source or not _same_file(source, t2):
        raise DeepsegError(f"{image} holds the outputs of another T2w ({source}): choose another folder with -o, "
                           f"or add {OVERWRITE} to replace them")


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold the folder's writer lock; first roll back a set a killed run left half-replaced and
    remove the temporary files of runs that died before this one took the lock."""
    import filelock

    lock = filelock.FileLock(str(folder / LOCK_NAME))
    try:
        lock.acquire(timeout=LOCK_WAIT_S)
    except filelock.Timeout:
        raise DeepsegError(f"another {PROG} has been writing into {folder} for over {LOCK_WAIT_S:.0f} s "
                           f"(lock {folder / LOCK_NAME}): wait for it or stop it") from None
    try:
        since = time.time()
        recover(folder)
        sweep(folder, since)
        yield
    finally:
        lock.release()


def recover(folder: Path) -> None:
    """Put back the previous set of a run killed while replacing it (its journal is still there)."""
    journal = folder / JOURNAL_NAME
    try:
        names = json.loads(journal.read_text(encoding="utf-8"))
        entries = [(folder / t, folder / f, folder / b if b else None) for t, f, b in names
                   if all(n is None or (n and os.sep not in n and n not in (".", "..")) for n in (t, f, b))]
    except FileNotFoundError:
        return
    except (ValueError, TypeError):  # a journal is written whole (renamed into place): never half
        entries = []
    roll_back(folder, entries)


def sweep(folder: Path, before: float) -> None:
    """Remove this tool's temporary files in ``folder`` last changed before ``before`` (epoch s)."""
    for entry in os.scandir(folder):
        if TEMP_NAME.match(entry.name) and entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < before:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


def new_file_mode() -> int:
    """The permissions of a new file under this process's umask (0666 less the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomic(path: Path, data: str | bytes, prefix: str, suffix: str = "", mode: int | None = 0o644) -> None:
    """Replace ``path`` with ``data`` (text: UTF-8) at once: written to a temporary file
    ``<prefix>*<suffix>`` next to it, given ``mode`` (None: :func:`new_file_mode`), then renamed
    onto it, so readers see the old file or the whole new one; the temporary file never stays."""
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=Path(path).parent)
    try:
        with (os.fdopen(fd, "w", encoding="utf-8") if isinstance(data, str) else os.fdopen(fd, "wb")) as fh:
            fh.write(data)
        os.chmod(tmp, new_file_mode() if mode is None else mode)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _aside(final: Path) -> Path:
    return final.with_name(f"{temp_prefix(final)}{secrets.token_hex(4)}{TEMP_SUFFIX}")


def _write_journal(folder: Path, entries: Sequence[Entry]) -> None:
    names = [[t.name, f.name, b.name if b else None] for t, f, b in entries]
    tmp = _aside(folder / JOURNAL_NAME)
    tmp.write_text(json.dumps(names), encoding="utf-8")
    os.replace(tmp, folder / JOURNAL_NAME)


def commit(folder: Path, staged: Sequence[tuple[Path, Path]]) -> None:
    """Move each (temporary, final) pair of ``folder`` into place: all of them, or (on any error
    or interrupt, even a SIGKILL, then at the next run) none, the previous files kept."""
    entries: list[Entry] = [(tmp, final, _aside(final) if os.path.lexists(final) else None) for tmp, final in staged]
    _write_journal(folder, entries)
    try:
        for _, final, backup in entries:
            if backup is not None:
                try:  # a hard link keeps the old file visible meanwhile
                    os.link(final, backup, follow_symlinks=False)
                except OSError:
                    os.replace(final, backup)
        for tmp, final, _ in entries:
            os.replace(tmp, final)
    except BaseException as exc:
        try:
            roll_back(folder, entries)
        except OSError as again:
            raise DeepsegError(f"replacing the outputs in {folder} failed ({exc}) and putting the previous ones back failed "
                               f"({again.strerror or again}): the next run into {folder} puts them back") from None
        raise
    (folder / JOURNAL_NAME).unlink()
    for _, _, backup in entries:
        if backup is not None:
            backup.unlink(missing_ok=True)


def roll_back(folder: Path, entries: Sequence[Entry]) -> None:
    """Undo a partial :func:`commit`: old files back, files that did not exist removed."""
    for tmp, final, backup in entries:
        if backup is None:
            final.unlink(missing_ok=True)
        elif os.path.lexists(backup):
            if os.path.lexists(final) and os.path.samefile(backup, final):  # not replaced yet: a hard link of it
                backup.unlink()  # (rename() between two links of one file does nothing)
            else:
                os.replace(backup, final)
        tmp.unlink(missing_ok=True)
    (folder / JOURNAL_NAME).unlink(missing_ok=True)
