"""BIDS datasets: which subjects and sessions hold a T2w and a gadolinium T1w, and where their
outputs go in a BIDS derivatives dataset.

Discovery walks ``ROOT/sub-*/[ses-*/]anat/`` (``derivatives``, ``sourcedata`` and ``code`` are not
looked into) and matches file names against :class:`Patterns` (regular expressions, searched in
the name): by default ``..._T2w.nii[.gz]`` and ``..._ce-<gadolinium|gd|gado...>_..._T1w.nii[.gz]``
(the ``ce`` value in any case). A session with one file of each is a :class:`Subject`; one missing
a contrast or holding several candidates is a :class:`Problem`, reported, not run.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from . import __version__
from .errors import DeepsegError
from .outputs import TOOL_NAME

T2W_PATTERN = r"_T2w\.nii(\.gz)?$"
T1W_PATTERN = r"_ce-(?i:gd|gad|gado|gadolinium|gadovist|gadobutrol|dotarem|gadoterate)[A-Za-z0-9]*(_[^_]+)*_T1w\.nii(\.gz)?$"
DESCRIPTION = "dataset_description.json"
BIDS_VERSION = "1.9.0"
SKIPPED_FOLDERS = ("derivatives", "sourcedata", "code")


@dataclass(frozen=True)
class Patterns:
    """Regular expressions searched in file names (not paths) of ``anat`` folders."""

    t2: str = T2W_PATTERN
    t1: str = T1W_PATTERN

    def compiled(self) -> tuple[re.Pattern, re.Pattern]:
        out = []
        for role, text in (("T2w", self.t2), ("T1w", self.t1)):
            try:
                out.append(re.compile(text))
            except re.error as exc:
                raise DeepsegError(f"the {role} pattern {text!r} is not a regular expression ({exc}): fix it (example: {T2W_PATTERN!r})") from None
        return out[0], out[1]


@dataclass(frozen=True)
class Subject:
    """One subject (and session) to segment: its T2w and gadolinium T1w."""

    subject: str  # 'sub-01'
    session: str | None  # 'ses-01' or None
    t2: Path
    t1: Path

    @property
    def key(self) -> str:
        """'sub-01' or 'sub-01/ses-01': unique in a dataset, stable across runs."""
        return self.subject if self.session is None else f"{self.subject}/{self.session}"

    def anat(self, root: Path) -> Path:
        """This subject's ``anat`` folder under ``root`` (a dataset or its derivatives)."""
        return root / self.key / "anat"


@dataclass(frozen=True)
class Problem:
    """A session that cannot be run: a missing contrast, or several candidates for one."""

    subject: str
    session: str | None
    reason: str

    @property
    def key(self) -> str:
        return self.subject if self.session is None else f"{self.subject}/{self.session}"


@dataclass(frozen=True)
class Discovery:
    subjects: list[Subject]
    problems: list[Problem]


def _folders(path: Path, prefix: str) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.name.startswith(prefix) and p.is_dir())
    except OSError as exc:
        raise DeepsegError(f"cannot list {path} ({exc.strerror or exc}): check its permissions") from None


def _anat_folders(root: Path) -> Iterator[tuple[str, str | None, Path]]:
    """(subject, session or None, anat folder) of every subject and session, sorted."""
    for sub in _folders(root, "sub-"):
        sessions = _folders(sub, "ses-")
        if not sessions:
            yield sub.name, None, sub / "anat"
        for ses in sessions:
            yield sub.name, ses.name, ses / "anat"


def _pair(sub: str, ses: str | None, anat: Path, t2s: Sequence[Path], t1s: Sequence[Path]) -> Subject | Problem:
    where = sub if ses is None else f"{sub}/{ses}"
    for role, found in (("T2w", t2s), ("gadolinium T1w", t1s)):
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            return Problem(sub, ses, f"{len(found)} {role} files in {anat} ({names}): narrow the {role.split()[-1]} pattern")
    missing = [role for role, found in (("T2w", t2s), ("gadolinium T1w", t1s)) if not found]
    if missing:
        return Problem(sub, ses, f"no {' and no '.join(missing)} in {anat if anat.is_dir() else where}")
    return Subject(sub, ses, t2s[0], t1s[0])


def discover(root: Path | str, patterns: Patterns = Patterns()) -> Discovery:
    """Every subject/session of the BIDS dataset at ``root`` with one T2w and one gadolinium T1w,
    and the sessions that lack one (sorted by subject, then session)."""
    root = Path(root)
    if not root.is_dir():
        raise DeepsegError(f"BIDS dataset {root} {'is not a folder' if root.exists() else 'not found'}: give the folder that holds the sub-* folders")
    t2_re, t1_re = patterns.compiled()
    subjects, problems = [], []
    for sub, ses, anat in _anat_folders(root):
        names = sorted(p for p in anat.iterdir() if p.is_file()) if anat.is_dir() else []
        t2s = [p for p in names if t2_re.search(p.name)]
        t1s = [p for p in names if t1_re.search(p.name) and p not in t2s]
        found = _pair(sub, ses, anat, t2s, t1s)
        (subjects if isinstance(found, Subject) else problems).append(found)
    if not subjects and not problems:
        raise DeepsegError(f"no sub-* folders in {root}: give the root of a BIDS dataset (the folder that holds sub-01, sub-02, ...)")
    return Discovery(subjects, problems)


def description(source: Path) -> dict:
    """The derivatives dataset's ``dataset_description.json`` content."""
    return {
        "Name": f"{TOOL_NAME} segmentations of intramedullary spinal cord tumors",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": TOOL_NAME, "Version": __version__,
                         "Description": "tumor, edema, cavity and whole-tumor masks from a T2w and a gadolinium T1w"}],
        "SourceDatasets": [{"URL": source.resolve().as_uri()}],
    }


def write_description(out: Path, source: Path) -> Path:
    """Create ``out/dataset_description.json`` once, atomically (a hard link of a complete
    temporary file: concurrent runs see no file or a whole one). An existing one is kept when this
    tool wrote it; one from another pipeline is refused."""
    path = out / DESCRIPTION
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{DESCRIPTION}.", suffix=".part", dir=out)
    except OSError as exc:
        raise DeepsegError(f"cannot create derivatives folder {out} ({exc.strerror or exc}): choose another with -o") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(description(source), fh, indent=2)
            fh.write("\n")
        os.chmod(tmp, 0o644)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)
    _check_ours(path)
    return path


def _check_ours(path: Path) -> None:
    try:
        name = json.loads(path.read_text(encoding="utf-8"))["GeneratedBy"][0]["Name"]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        name = None
    if name != TOOL_NAME:
        raise DeepsegError(f"{path} describes another dataset (not generated by {TOOL_NAME}): "
                           f"give -o a folder of its own, e.g. {path.parent / TOOL_NAME}")
