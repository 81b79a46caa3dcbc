"""docs/errors.md tells the truth: each row's message is what the command prints for that failure.

Every table row of docs/errors.md has a trigger here that really causes the failure (bad files,
a misbehaving HTTP server on 127.0.0.1, permissions as the user 'nobody' when run as root) and
runs ``imsct_deepseg`` on it. The printed line must match the row, ``<placeholders>`` matching
any text. Error rows: exactly one ``imsct_deepseg: ...`` line and a non-zero exit status; warning
rows: one of the lines on stderr. Rows of the "Download failure reasons" table are checked inside
the "Model download failed" message.
"""
from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest
import synthetic
from http_server import FlakyServer, free_port, html_page, send_bytes, stall, status, trickle
from onnx_models import write_registry
from unprivileged import as_nobody, can_drop_privileges, shared_folder

from deepseg_imsct import batch as batch_module
from deepseg_imsct import batch_cli, cache, cli, fetch, io, limits, registry, transaction
from deepseg_imsct.batch import run_batch
from deepseg_imsct.errors import DeepsegError
from deepseg_imsct.pipeline import Predictor, segment_files
from deepseg_imsct.task import TUMOR_EDEMA_CAVITY

DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"
REASONS = "Download failure reasons"
DOWNLOAD_ROW = "Model download failed"


# ----------------------------------------------------------------------------- reading the doc


@dataclass(frozen=True)
class Row:
    section: str
    failure: str
    message: str  # with <placeholders>


def doc_rows() -> list[Row]:
    """Table rows whose second cell is a ``code span``, with their section heading."""
    rows, section = [], ""
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            section = line.lstrip("#").strip()
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] if line.startswith("|") else []
        if len(cells) >= 3:
            code = re.fullmatch(r"``? (.*) ``?", cells[1])
            if code:
                rows.append(Row(section, cells[0], code.group(1).replace("\\|", "|")))
    return rows


def pattern(message: str) -> re.Pattern:
    """The message as a regex: ``<anything>`` is a wildcard, the rest literal."""
    parts = re.split(r"<[^<>]+>", message)
    return re.compile(".+?".join(re.escape(p) for p in parts))


def row(failure: str) -> Row:
    return next(r for r in doc_rows() if r.failure == failure)


# ----------------------------------------------------------------------------- running the command


class Env:
    """A scratch folder ('nobody' can read it when we are root), the analytic models, the command."""

    def __init__(self, base: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
        self.base, self.mp, self.capsys = base, monkeypatch, capsys
        self.cache = base / "cache"
        monkeypatch.setenv("DEEPSEG_IMSCT_HOME", str(self.cache))
        for module, name, value in ((fetch, "BACKOFF_S", 0.01), (fetch, "READ_TIMEOUT_S", 0.3),
                                    (fetch, "CONNECT_TIMEOUT_S", 2.0), (fetch, "WATCH_POLL_S", 0.02),
                                    (cache, "LOCK_POLL_S", 0.02), (cache, "LOCK_WAIT_S", 0.3)):
            monkeypatch.setattr(module, name, value)
        for name in (fetch.ENV_DEADLINE, fetch.ENV_MIN_RATE):
            monkeypatch.delenv(name, raising=False)
        self.registry()

    def registry(self, change: Callable[[dict], None] | None = None, **kwargs) -> Path:
        """Write the analytic registry (then ``change`` its JSON) and point the command at it."""
        path = write_registry(self.base / "models", **kwargs)
        if change:
            data = json.loads(path.read_text())
            change(data)
            path.write_text(json.dumps(data))
        self.mp.setenv("DEEPSEG_IMSCT_REGISTRY", str(path))
        return path

    def entry(self, model: str) -> dict:
        return json.loads((self.base / "models" / "model_registry.json").read_text())["models"][model]["versions"]["1.0"]

    def remote(self, server: FlakyServer, *actions) -> list[str]:
        """Models served only by ``server`` (``actions`` for the localizer): returns their URLs."""
        seg = (self.base / "models" / "seg.onnx").read_bytes()
        urls = [server.route("/loc.onnx", *actions), server.route("/seg.onnx", send_bytes(seg))]

        def change(data: dict) -> None:
            for name, url in zip(("loc", "seg"), urls):
                data["models"][name]["versions"]["1.0"]["sources"] = [url]
        self.registry(change)
        return urls

    def case(self, folder: str = "in", **kwargs) -> tuple[Path, Path]:
        (self.base / folder).mkdir(parents=True, exist_ok=True)
        t2, t1, _ = synthetic.case(**kwargs)
        return self.save(t2, f"{folder}/sub-01_T2w.nii.gz"), self.save(t1, f"{folder}/sub-01_T1w.nii.gz")

    def save(self, image: nib.Nifti1Image, name: str) -> Path:
        path = self.base / name
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(image, path)
        return path

    def cli(self, *argv: str, code: int = 2) -> list[str]:
        """Run the command in this process: its stderr lines (the exit status must be ``code``)."""
        self.capsys.readouterr()
        assert cli.main([str(a) for a in argv]) == code
        return self.capsys.readouterr().err.splitlines()

    def cli_restricted(self, *argv: str) -> list[str]:
        """Run the command where chmod binds: as 'nobody' in a child when we are root."""
        if not can_drop_privileges():
            return self.cli(*argv)

        def main() -> str:
            err = StringIO()
            with contextlib.redirect_stderr(err):
                status_ = cli.main([str(a) for a in argv])
            return f"{status_}\n{err.getvalue()}"

        child, text = as_nobody(main)
        assert child == 0, text
        code, _, err = text.partition("\n")
        assert int(code) == 2, err
        return err.splitlines()


@pytest.fixture
def env(monkeypatch, capsys, tmp_path):
    if can_drop_privileges():
        with shared_folder() as base:
            yield Env(base, monkeypatch, capsys)
    else:
        yield Env(tmp_path, monkeypatch, capsys)


@pytest.fixture
def server():
    with FlakyServer(lifetime_s=60) as srv:
        yield srv


# ----------------------------------------------------------------------------- triggers

TRIGGERS: dict[str, Callable[..., list[str]]] = {}


def trigger(failure: str):
    def register(fn):
        TRIGGERS[failure] = fn
        return fn
    return register


def image(data: np.ndarray, affine: np.ndarray | None = None) -> nib.Nifti1Image:
    return nib.Nifti1Image(data, np.diag([0.8, 0.8, 3.0, 1.0]) if affine is None else affine)


def noise(shape=(20, 20, 6), dtype=np.float32) -> np.ndarray:
    return (np.random.default_rng(0).random(shape) * 100).astype(dtype)


def bad_input(env: Env, img_or_bytes, name: str = "bad_T2w.nii.gz") -> list[str]:
    """Run on a bad T2w (an image, or raw bytes) with a good T1w."""
    _, t1 = env.case()
    path = env.base / name
    if isinstance(img_or_bytes, bytes):
        path.write_bytes(img_or_bytes)
    else:
        nib.save(img_or_bytes, path)
    return env.cli("-i", path, t1, "-o", env.base / "out")


# inputs

@trigger("Input file missing")
def _(env):
    _, t1 = env.case()
    return env.cli("-i", env.base / "nope_T2w.nii.gz", t1)


@trigger("Input is a folder")
def _(env):
    _, t1 = env.case()
    return env.cli("-i", env.base / "in", t1)


@trigger("Wrong file extension")
def _(env):
    _, t1 = env.case()
    (env.base / "t2.dcm").write_bytes(b"DICM")
    return env.cli("-i", env.base / "t2.dcm", t1)


@trigger("No read permission")
def _(env):
    t2, t1 = env.case()
    t2.chmod(0o000)
    return env.cli_restricted("-i", t2, t1)


@trigger("A folder on the path cannot be entered")
def _(env):
    t2, t1 = env.case()
    closed = env.base / "closed"
    closed.mkdir()
    t2 = t2.rename(closed / t2.name)
    closed.chmod(0o700 if can_drop_privileges() else 0o000)
    try:
        return env.cli_restricted("-i", t2, t1)
    finally:
        closed.chmod(0o755)


@trigger("Not a NIfTI file, or an empty one")
def _(env):
    return bad_input(env, b"")


@trigger("Truncated or corrupt file")
def _(env):
    data = image(noise((60, 60, 20))).to_bytes()
    return bad_input(env, gzip.compress(data)[:-len(data) // 4])


@trigger("2D image, or more than 4 dimensions")
def _(env):
    return bad_input(env, image(noise((20, 20))))


@trigger("4D image with several volumes")
def _(env):
    return bad_input(env, image(noise((20, 20, 6, 3))))


@trigger("Complex voxels")
def _(env):
    return bad_input(env, image(noise().astype(np.complex64)))


@trigger("RGB voxels")
def _(env):
    rgb = np.zeros((20, 20, 6), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    return bad_input(env, image(rgb))


@trigger("Degenerate affine")
def _(env):
    img = image(noise())
    img.header["qform_code"], img.header["sform_code"] = 0, 1
    img.header["srow_z"] = [0, 0, 0, 0]
    return bad_input(env, gzip.compress(img.header.binaryblock + b"\0" * 4 + noise().tobytes(order="F")))


@trigger("Image too large for this machine's memory")
def _(env):
    env.mp.setattr(io, "available_memory_bytes", lambda: 1000)
    return bad_input(env, image(noise()))


def declared_only(shape: tuple[int, ...], dtype=np.int16, data: bytes = b"") -> bytes:
    """A .nii.gz whose header declares ``shape`` voxels, followed by ``data`` only."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_sform(np.diag([0.5, 0.5, 0.5, 1.0]), code=1)
    header["vox_offset"] = 352
    return gzip.compress(header.binaryblock + b"\0" * 4 + data)


@trigger("Image larger than the memory limit")
def _(env):
    return bad_input(env, declared_only((2048, 2048, 512)))  # 34 GB declared in 0.4 kB


@trigger("Working grid larger than the memory limit")
def _(env):
    env.registry(loc_min_volume_cm3=1000.0, seg_spacing=(0.3, 0.3, 0.3))  # no cord: the whole field of view
    env.mp.setenv(limits.ENV_MEMORY, "0.05")
    return with_case(env)


@trigger("Memory limit setting not a number")
def _(env):
    env.mp.setenv(limits.ENV_MEMORY, "lots")
    return with_case(env)


@trigger("Constant or all-zero image")
def _(env):
    return bad_input(env, image(np.zeros((20, 20, 6), np.int16)))


@trigger("The same file given twice")
def _(env):
    t2, _ = env.case()
    return env.cli("-i", t2, t2)


@trigger("T1w and T2w do not overlap")
def _(env):
    far = synthetic.sagittal_affine("PSR", (0.8, 0.8, 3.0), (160, 200, 14), centre=(0.0, 0.0, 400.0))
    t2, t1 = env.case(t1_grid=((160, 200, 14), far))
    return env.cli("-i", t2, t1)


@trigger("The same image given twice (a copy)")
def _(env):
    t2, _ = env.case()
    copy = env.base / "in" / "sub-01_T1w.nii.gz"
    copy.write_bytes(t2.read_bytes())
    return env.cli("-i", t2, copy)


# outputs and the run

@trigger("Output folder cannot be created")
def _(env):
    t2, t1 = env.case()
    (env.base / "a_file").write_text("x")
    return env.cli("-i", t2, t1, "-o", env.base / "a_file" / "out")


@trigger("Output folder not writable")
def _(env):
    t2, t1 = env.case()
    out = env.base / "out"
    out.mkdir(mode=0o555)
    out.chmod(0o555)
    try:
        return env.cli_restricted("-i", t2, t1, "-o", out)
    finally:
        out.chmod(0o755)


def _failing_write(env: Env, exc: BaseException) -> None:
    real, calls = nib.Nifti1Image.to_bytes, []

    def flaky(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise exc
        return real(self, *args, **kwargs)
    env.mp.setattr(nib.Nifti1Image, "to_bytes", flaky)


@trigger("Disk full (or any write error) while writing the outputs")
def _(env):
    t2, t1 = env.case()
    _failing_write(env, OSError(errno.ENOSPC, "No space left on device"))
    return env.cli("-i", t2, t1, "-o", env.base / "out")


@trigger("Ctrl-C")
def _(env):
    t2, t1 = env.case()
    _failing_write(env, KeyboardInterrupt())
    return env.cli("-i", t2, t1, "-o", env.base / "out", code=130)


@trigger("SIGTERM or SIGHUP (`timeout`, `docker stop`, Slurm's `scancel`, a closed terminal)")
def _(env):
    t2, t1 = env.case()
    real = nib.Nifti1Image.to_bytes

    def terminated(self, *args, **kwargs):
        signal.raise_signal(signal.SIGTERM)  # a real signal, to the command's own handler
        return real(self, *args, **kwargs)
    env.mp.setattr(nib.Nifti1Image, "to_bytes", terminated)
    return env.cli("-i", t2, t1, "-o", env.base / "out", code=143)


@trigger("Output file name too long")
def _(env):
    t2, t1 = env.case()
    long_t2 = t2.with_name("x" * 235 + ".nii.gz")
    long_t2.write_bytes(t2.read_bytes())
    return env.cli("-i", long_t2, t1, "-o", env.base / "out")


@trigger("Output would replace an input")
def _(env):
    t2, t1 = env.case()
    renamed = t1.rename(t1.with_name("sub-01_T2w_seg-tumor.nii.gz"))
    return env.cli("-i", t2, renamed)


@trigger("Output file not written by imsct_deepseg")
def _(env):
    t2, t1 = env.case()
    (env.base / "out").mkdir()
    (env.base / "out" / "sub-01_T2w_seg-tumor.nii.gz").write_bytes(b"a manual mask")
    return env.cli("-i", t2, t1, "-o", env.base / "out")


@trigger("QC report index not written by imsct_deepseg")
def _(env):
    t2, t1 = env.case()
    (env.base / "qc").mkdir()
    (env.base / "qc" / "index.html").write_text("<html>another tool's report</html>")
    return env.cli("-i", t2, t1, "-qc", env.base / "qc")


@trigger("Outputs of another T2w with the same name")
def _(env):
    t2, t1 = env.case()
    other, _ = env.case("other")
    env.cli("-i", other, t1, "-o", env.base / "out", code=0)
    return env.cli("-i", t2, t1, "-o", env.base / "out")


@trigger("A folder in the way of an output")
def _(env):
    t2, t1 = env.case()
    (env.base / "out" / "sub-01_T2w_seg-edema.json").mkdir(parents=True)
    return env.cli("-i", t2, t1, "-o", env.base / "out")


@trigger("Another run writing into the folder (lock held)")
def _(env):
    t2, t1 = env.case()
    (env.base / "out").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time, filelock; lock = filelock.FileLock(sys.argv[1]); "
                               "lock.acquire(); print('held', flush=True); time.sleep(600)",
                               str(env.base / "out" / ".imsct_deepseg.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        env.mp.setattr(transaction, "LOCK_WAIT_S", 0.2)
        return env.cli("-i", t2, t1, "-o", env.base / "out")
    finally:
        holder.kill()
        holder.wait()


@trigger("Failure while replacing the outputs")
def _(env):
    t2, t1 = env.case()
    real, calls = os.replace, []

    def flaky(src, dst, *args, **kwargs):
        calls.append(dst)
        if len(calls) == 4:  # after the journal and two outputs are in place
            raise OSError(errno.EIO, "Input/output error")
        return real(src, dst, *args, **kwargs)
    env.mp.setattr(transaction.os, "replace", flaky)
    return env.cli("-i", t2, t1, "-o", env.base / "out")


# options

def with_case(env: Env, *options: str) -> list[str]:
    t2, t1 = env.case()
    return env.cli("-i", t2, t1, *options)


TRIGGERS["Wrong number of -i files"] = lambda env: env.cli("-i", "a.nii.gz")
TRIGGERS["-c does not name t2 and t1"] = lambda env: env.cli("-i", "a.nii", "b.nii", "-c", "t2", "t2")
TRIGGERS["-thr not a probability"] = lambda env: with_case(env, "-thr", "1.5")
TRIGGERS["-thr 0 for some classes only"] = lambda env: with_case(env, "-thr", "edema=0")
TRIGGERS["-remove-small not a volume"] = lambda env: with_case(env, "-remove-small", "0.2litres")
TRIGGERS["-remove-small without a unit"] = lambda env: with_case(env, "-remove-small", "200")
TRIGGERS["-remove-small not whole voxels"] = lambda env: with_case(env, "-remove-small", "0.2vox")
TRIGGERS["-fill-holes not 0 or 1"] = lambda env: with_case(env, "-fill-holes", "yes")
TRIGGERS["Unknown class in CLASS=VALUE"] = lambda env: with_case(env, "-thr", "brain=0.5")
TRIGGERS["Wrong number of per-class values"] = lambda env: with_case(env, "-thr", "0.5", "0.6")
TRIGGERS["-threads out of range"] = lambda env: with_case(env, "-threads", "99999999999")
TRIGGERS["-remove-small out of range"] = lambda env: with_case(env, "-remove-small", "1e400cm3")


# the Python API: its messages, from the call that raises them

def api_error(call: Callable[[], object]) -> list[str]:
    with pytest.raises(DeepsegError) as info:
        call()
    return [str(info.value)]


def _api_case(env: Env) -> tuple[Path, Path]:
    return env.case()


TRIGGERS["Input neither a path nor an image"] = lambda env: api_error(lambda: Predictor()(np.zeros((20, 20, 6)), _api_case(env)[1]))
TRIGGERS["Input file name not a path"] = lambda env: api_error(lambda: segment_files(b"sub_T2w.nii.gz", _api_case(env)[1]))
TRIGGERS["Output folder not a path"] = lambda env: api_error(lambda: segment_files(*_api_case(env), out_dir=b"out"))
TRIGGERS["QC folder not a path (run_files)"] = lambda env: api_error(lambda: Predictor().run_files(*_api_case(env), qc=True))
TRIGGERS["Task.run inputs malformed"] = lambda env: api_error(lambda: TUMOR_EDEMA_CAVITY.run({"t2": _api_case(env)[0]}))
TRIGGERS["Parameters not a mapping"] = lambda env: api_error(lambda: TUMOR_EDEMA_CAVITY.run(dict(zip(("t2", "t1"), _api_case(env))), ["soft"]))
TRIGGERS["Unknown task"] = lambda env: env.cli("no_such_task", "-i", "a.nii", "b.nii")
TRIGGERS["Unknown model version"] = lambda env: with_case(env, "-segmenter-version", "9.9")


# cohorts (imsct_batch)

def bids(env: Env, *sessions: str) -> Path:
    """A BIDS dataset with sub-01 (T2w and gadolinium T1w); returns its root."""
    t2, t1, _ = synthetic.case()
    for stem, anat in (("sub-01", "sub-01/anat"),) if not sessions else ((f"sub-01_{s}", f"sub-01/{s}/anat") for s in sessions):
        env.save(t2, f"bids/{anat}/{stem}_T2w.nii.gz")
        env.save(t1, f"bids/{anat}/{stem}_ce-gadolinium_T1w.nii.gz")
    return env.base / "bids"


def batch(env: Env, *argv, code: int = 2) -> list[str]:
    """Run imsct_batch in this process: its stderr lines (the exit status must be ``code``)."""
    env.capsys.readouterr()
    assert batch_cli.main([str(a) for a in argv] + ["-v", "0"]) == code
    return env.capsys.readouterr().err.splitlines()


def _unlistable(env: Env) -> list[str]:
    root = bids(env)
    real = Path.iterdir

    def iterdir(self):
        if self.name == "sub-01":
            raise PermissionError(13, "Permission denied")
        return real(self)
    env.mp.setattr(Path, "iterdir", iterdir)
    return batch(env, root, "-o", env.base / "d")


def _foreign(env: Env) -> list[str]:
    out = env.base / "derivatives" / "other"
    out.mkdir(parents=True)
    (out / "dataset_description.json").write_text(json.dumps({"Name": "x", "GeneratedBy": [{"Name": "fmriprep"}]}))
    return batch(env, bids(env), "-o", out)


def _in_the_way(env: Env, name: str) -> list[str]:
    (env.base / "d" / name).mkdir(parents=True) if name else (env.base / "d").write_text("x")
    return batch(env, bids(env), "-o", env.base / "d")


def _no_dask(env: Env) -> list[str]:
    env.mp.setitem(sys.modules, "distributed", None)
    return batch(env, bids(env), "-o", env.base / "d", "--dask", "tcp://127.0.0.1:1")


def _no_scheduler(env: Env) -> list[str]:
    pytest.importorskip("distributed")
    from deepseg_imsct import batch_dask
    env.mp.setattr(batch_dask, "CONNECT_TIMEOUT_S", 1)
    return batch(env, bids(env), "-o", env.base / "d", "--dask", f"tcp://127.0.0.1:{free_port()}")


def _subject_fails(env: Env) -> list[str]:
    root = bids(env)
    (root / "sub-01" / "anat" / "sub-01_T2w.nii.gz").write_bytes(b"")
    return batch(env, root, "-o", env.base / "d", code=1)


def _lacks(env: Env, t2_pattern: str = r"_T2w\.nii(\.gz)?$") -> list[str]:
    root = bids(env, "ses-1")
    env.save(synthetic.case()[0], "bids/sub-01/ses-1/anat/sub-01_ses-1_run-2_T2w.nii.gz")
    (root / "sub-02" / "anat").mkdir(parents=True)
    env.save(synthetic.case()[0], "bids/sub-02/anat/sub-02_T2w.nii.gz")
    return batch(env, root, "-o", env.base / "d", "--t2-pattern", t2_pattern, code=0)


def _interrupted(env: Env) -> list[str]:
    env.mp.setattr(batch_module, "discover", _raise(KeyboardInterrupt()))
    return batch(env, bids(env), "-o", env.base / "d", code=130)


def crash_once(setup, job):
    """In a worker process (which imports the real run_job): die the first time, then run the subject."""
    from deepseg_imsct.batch import run_job

    marker = job.out_dir.parent / "crashed"
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        os._exit(9)
    return run_job(setup, job)


def _worker_dies(env: Env) -> list[str]:
    env.mp.setattr(batch_module, "run_job", crash_once)
    return batch(env, bids(env), "-o", env.base / "d", "--workers", "2", code=0)


TRIGGERS["BIDS dataset not found"] = lambda env: batch(env, env.base / "nope", "-o", env.base / "d")
TRIGGERS["BIDS dataset is a file"] = lambda env: batch(env, env.case()[0], "-o", env.base / "d")
TRIGGERS["No subjects in the dataset"] = lambda env: batch(env, env.base, "-o", env.base / "d")
TRIGGERS["A dataset folder cannot be listed"] = _unlistable
TRIGGERS["File name pattern not a regular expression"] = lambda env: batch(env, bids(env), "-o", env.base / "d", "--t2-pattern", "([")
TRIGGERS["Number of parts below 1"] = lambda env: batch(env, bids(env), "-o", env.base / "d", "--num-parts", "0")
TRIGGERS["Part id outside the parts"] = lambda env: batch(env, bids(env), "-o", env.base / "d", "--num-parts", "4", "--part-id", "4")
TRIGGERS["No worker"] = lambda env: batch(env, bids(env), "-o", env.base / "d", "--workers", "0")
TRIGGERS["Derivatives folder of another pipeline"] = _foreign
TRIGGERS["Local workers and Dask together"] = lambda env: batch(env, bids(env), "-o", env.base / "d", "--workers", "2", "--dask", "tcp://x:1")
TRIGGERS["A worker process died"] = _worker_dies
TRIGGERS["Derivatives folder cannot be created"] = lambda env: _in_the_way(env, "")
TRIGGERS["Status table cannot be written"] = lambda env: _in_the_way(env, "status.tsv")
TRIGGERS["Dask not installed"] = _no_dask
TRIGGERS["Dask scheduler unreachable"] = _no_scheduler
TRIGGERS["A subject failed"] = _subject_fails
TRIGGERS["A subject lacks a contrast"] = _lacks
TRIGGERS["Several candidate scans"] = _lacks
TRIGGERS["Output folder given as a parameter (Python API)"] = lambda env: api_error(lambda: run_batch(bids(env), env.base / "d", {"out_dir": "x"}))
TRIGGERS["Ctrl-C or SIGTERM during a batch"] = _interrupted


# models and downloads

@trigger("Offline, model not installed")
def _(env, server):
    env.remote(server, send_bytes(b""))
    out = with_case(env, "-offline")
    assert server.hits["/loc.onnx"] == 0
    return out


@trigger("Bundled model file missing, no URL")
def _(env):
    (env.base / "models" / "loc.onnx").unlink()
    return with_case(env)


@trigger(DOWNLOAD_ROW)
def _(env, server):
    env.remote(server, status(404))
    return env.cli("-install")


@trigger("A mirror failed (the next one is tried)")
def _(env, server):
    good = server.route("/good.onnx", send_bytes((env.base / "models" / "loc.onnx").read_bytes()))

    def change(data: dict) -> None:
        data["models"]["loc"]["versions"]["1.0"]["sources"] = [server.route("/gone.onnx", status(404)), good]
    env.registry(change)
    return env.cli("-install", code=0)


@trigger("Corrupt model in the cache")
def _(env, server):
    data = (env.base / "models" / "loc.onnx").read_bytes()
    env.remote(server, send_bytes(data))
    cached = env.cache / "models" / "loc" / "1.0" / "loc.onnx"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(data[::-1])
    return env.cli("-install", code=0)


@trigger("Model cache folder not writable")
def _(env, server):
    env.remote(server, send_bytes(b""))
    env.cache.mkdir(mode=0o555)
    env.cache.chmod(0o555)
    try:
        out = env.cli_restricted("-install")
    finally:
        env.cache.chmod(0o755)
    assert server.hits["/loc.onnx"] == 0
    return out


@trigger("Disk full while downloading a model")
def _(env, server):
    resource = pytest.importorskip("resource")  # a real write error: the file-size limit (EFBIG)
    data = (env.base / "models" / "loc.onnx").read_bytes()
    env.remote(server, send_bytes(data))
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(data) // 2, limits[1]))
    try:
        return env.cli("-install")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)


@trigger("Download limit setting not a number")
def _(env, server):
    env.remote(server, send_bytes(b""))
    env.mp.setenv(fetch.ENV_DEADLINE, "soon")
    out = env.cli("-install")
    assert server.hits["/loc.onnx"] == 0
    return out


@trigger("Another process is installing (lock held)")
def _(env, server):
    env.remote(server, send_bytes(b""))
    folder = env.cache / "models" / "loc" / "1.0"
    folder.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time, filelock; lock = filelock.FileLock(sys.argv[1]); lock.acquire(); "
                               "print('held', flush=True); time.sleep(120)", str(folder / ".loc.onnx.flock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        return env.cli("-install")
    finally:
        holder.kill()
        holder.wait()


@trigger("No writable per-user cache folder")
def _(env):
    for name in ("DEEPSEG_IMSCT_HOME", "XDG_CACHE_HOME", "LOCALAPPDATA"):
        env.mp.delenv(name, raising=False)
    (env.base / "not_a_folder").write_text("x")
    env.mp.setenv("HOME", str(env.base / "not_a_folder" / "home"))  # ~/.cache cannot be created
    env.mp.setattr(cache.tempfile, "tempdir", str(env.base))
    return env.cli("-list-tasks", code=0)


@trigger("Task list not written")
def _(env):
    class Full:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            raise OSError(errno.ENOSPC, "No space left on device")

    env.mp.setattr(sys, "stdout", Full())
    return env.cli("-list-tasks")


@trigger("Model file does not match its registry entry")
def _(env):
    env.registry(lambda d: d["models"]["seg"]["versions"]["1.0"].update(patch_size=[16, 16, 16]))
    return with_case(env)


@trigger("Model file made for other settings than its registry entry")
def _(env):
    import onnx

    from deepseg_imsct.registry import METADATA_KEY

    graph = env.base / "models" / "seg.onnx"
    model = onnx.load(str(graph))
    model.metadata_props.add(key=METADATA_KEY, value=json.dumps({"stride": [8, 8, 8]}))
    onnx.save(model, str(graph))
    data = graph.read_bytes()
    env.registry(lambda d: d["models"]["seg"]["versions"]["1.0"].update(sha256=hashlib.sha256(data).hexdigest(), size=len(data)))
    graph.write_bytes(data)  # write_registry rewrote it
    return with_case(env)


@trigger("Model file not loadable by ONNX Runtime")
def _(env):
    junk = b"not an onnx graph"
    env.registry(lambda d: d["models"]["seg"]["versions"]["1.0"].update(
        sha256=hashlib.sha256(junk).hexdigest(), size=len(junk)))
    (env.base / "models" / "seg.onnx").write_bytes(junk)  # write_registry rewrote it
    return with_case(env)


# installing from a file or folder

@trigger("-install --from: path does not exist")
def _(env):
    return env.cli("-install", "--from", env.base / "downloads" / "seg.onnx")


@trigger("-install --from: not one of the task's model files")
def _(env):
    (env.base / "other.onnx").write_bytes(b"something else")
    return env.cli("-install", "--from", env.base / "other.onnx")


@trigger("-install --from: folder without the model")
def _(env):
    (env.base / "empty").mkdir()
    return env.cli("-install", "--from", env.base / "empty")


@trigger("-install --from: file of the wrong size")
def _(env):
    (env.base / "dl").mkdir()
    (env.base / "dl" / "loc.onnx").write_bytes(b"short")
    return env.cli("-install", "--from", env.base / "dl")


@trigger("-install --from: file with the wrong checksum")
def _(env):
    data = (env.base / "models" / "loc.onnx").read_bytes()
    (env.base / "dl").mkdir()
    (env.base / "dl" / "loc.onnx").write_bytes(data[::-1])
    return env.cli("-install", "--from", env.base / "dl")


# the registry

def _broken_shipped_registry(env: Env, text: str | None) -> list[str]:
    """The shipped registry (no $DEEPSEG_IMSCT_REGISTRY) missing, or with this text."""
    path = env.base / "shipped" / "model_registry.json"
    if text is not None:
        path.parent.mkdir()
        path.write_text(text)
    env.mp.delenv("DEEPSEG_IMSCT_REGISTRY")
    env.mp.setattr(registry, "REGISTRY_PATH", path)
    return env.cli("-list-tasks")


TRIGGERS["Registry file missing"] = lambda env: _broken_shipped_registry(env, None)
TRIGGERS["Registry file not valid JSON"] = lambda env: _broken_shipped_registry(env, "{not json")
TRIGGERS["Registry task lacks a field"] = lambda env: _broken_shipped_registry(env, json.dumps({"schema": 1, "tasks": {"t": {}}, "models": {}}))
TRIGGERS["Registry of a newer schema"] = lambda env: _broken_shipped_registry(env, json.dumps({"schema": 2, "tasks": {}, "models": {}}))


def _seg_entry(env: Env, change: Callable[[dict], None]) -> list[str]:
    env.registry(lambda d: change(d["models"]["seg"]["versions"]["1.0"]))
    return with_case(env)


TRIGGERS["Registry model lacks a field"] = lambda env: _seg_entry(env, lambda e: e.pop("file"))
TRIGGERS["Registry model field malformed"] = lambda env: _seg_entry(env, lambda e: e.update(patch_size=[32, 32]))
TRIGGERS["Registry model without checksum, sources, classes or contrasts"] = lambda env: _seg_entry(env, lambda e: e.update(sources=[]))
TRIGGERS["Registry asks for an unknown normalization"] = lambda env: _seg_entry(env, lambda e: e.update(normalization="minmax"))
TRIGGERS["Registry asks for an unknown output"] = lambda env: _seg_entry(env, lambda e: e.update(output="softmax"))
TRIGGERS["Registry gives an exclusive model other semantics"] = lambda env: _seg_entry(
    env, lambda e: e.update(output="exclusive", semantics={"preset": "ivadomed"}))
TRIGGERS["Registry model with an unsafe file name"] = lambda env: _seg_entry(env, lambda e: e.update(file="../seg.onnx"))


@trigger("Registry task names a model it does not list")
def _(env):
    env.registry(lambda d: d["models"].pop("seg"))
    return with_case(env)


# warnings

def run_with_t2(env: Env, t2_image: nib.Nifti1Image, t1_image: nib.Nifti1Image | None = None, code: int = 0) -> list[str]:
    t2 = env.save(t2_image, "w/sub_T2w.nii.gz")
    _, t1 = env.case()
    if t1_image is not None:
        t1 = env.save(t1_image, "w/sub_T1w.nii.gz")
    return env.cli("-i", t2, t1, "-o", env.base / "out", code=code)


@trigger("NaN or Inf voxels")
def _(env):
    t2, _, _ = synthetic.case()
    data = t2.get_fdata(dtype=np.float32)
    data[0, 0, 0] = np.nan
    return run_with_t2(env, nib.Nifti1Image(data, t2.affine))


@trigger("qform and sform disagree")
def _(env):
    t2, _, _ = synthetic.case()
    shifted = t2.affine.copy()
    shifted[0, 3] += 20
    t2.set_qform(shifted, code=1)
    return run_with_t2(env, t2)


def cord_phantoms() -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """(T2w, T1w) with CSF around the cord: bright on the T2w, dark on the T1w."""
    shape = (100, 160, 14)
    affine = synthetic.sagittal_affine("PSR", (1.0, 1.0, 3.0), shape)
    xyz = synthetic.centres_mm(shape, affine)
    radius = np.hypot(xyz[..., 0], xyz[..., 1])
    rng = np.random.default_rng(0)
    t2, t1 = 100 + rng.normal(0, 3, shape), 200 + rng.normal(0, 3, shape)
    t2[radius <= 7], t1[radius <= 7] = 900, 30  # CSF
    t2[radius <= 4], t1[radius <= 4] = 400, 400  # cord
    return nib.Nifti1Image(t2.astype(np.float32), affine), nib.Nifti1Image(t1.astype(np.float32), affine)


def true_cord(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make stage 1 find the true cord of :func:`cord_phantoms` (radius 4 mm about the z axis) on
    any scan: the analytic localizer ('bright = cord') takes the bright CSF for cord. Returns the
    list that counts the calls."""
    from deepseg_imsct import localize

    calls: list[int] = []

    def find_cord(values, block, model, prob=None):
        calls.append(1)
        xyz = synthetic.centres_mm(block.shape, block.affine)
        return (np.hypot(xyz[..., 0], xyz[..., 1]) <= 4) & ~np.isnan(values)
    monkeypatch.setattr(localize, "find_cord", find_cord)
    return calls


@trigger("T2w and T1w look swapped")
def _(env):
    t2, t1 = cord_phantoms()
    true_cord(env.mp)
    return run_with_t2(env, t1, t2, code=2)


@trigger("No cord in the T2w but one in the T1w")
def _(env):
    t2, t1 = cord_phantoms()
    dark_cord = np.where(t1.get_fdata() >= 400, 0, 100).astype(np.float32)  # nothing 1 SD above the mean
    return run_with_t2(env, nib.Nifti1Image(dark_cord, t2.affine), t1)


@trigger("No spinal cord found")
def _(env):
    env.registry(loc_min_volume_cm3=1000.0)
    t2, t1 = env.case()
    return env.cli("-i", t2, t1, "-o", env.base / "out", code=0)


# ----------------------------------------------------------------------------- imsct_growth


def run_growth(env: Env, *argv, code: int = 2) -> list[str]:
    from deepseg_imsct import growth_cli

    env.capsys.readouterr()
    assert growth_cli.main([str(a) for a in argv]) == code
    return env.capsys.readouterr().err.splitlines()


def growth_visit(env: Env, name: str, cord: bool = True, shift_mm: float = 0.0) -> Path:
    """A visit's T2w with its masks (test_growth's phantom) in ``env.base / name``; returns the T2w."""
    from test_growth import visit
    from test_stats import AFFINE

    masks, cord_mask = visit((100, 120))
    affine = AFFINE.copy()
    affine[2, 3] += shift_mm
    folder = env.base / name
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.where(cord_mask, 2.0, 1.0).astype(np.float32), affine), folder / "sub_T2w.nii.gz")
    for cls, mask in {**masks, **({"cord": cord_mask} if cord else {})}.items():
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), folder / f"sub_T2w_seg-{cls}.nii.gz")
    return folder / "sub_T2w.nii.gz"


DATES = ("-dates", "2024-01-01", "2025-01-01")
TRIGGERS["Growth: date not ISO"] = lambda env: run_growth(env, "a.json", "b.json", "-dates", "2024-01-01", "1/2/2025")
TRIGGERS["Growth: dates out of order"] = lambda env: run_growth(env, growth_visit(env, "a"), growth_visit(env, "b"), "-dates", "2025-01-01", "2024-01-01")
TRIGGERS["Growth: visit missing"] = lambda env: run_growth(env, env.base / "none_stats.json", env.base / "b.json", *DATES)
TRIGGERS["Growth: -o not .json or .tsv"] = lambda env: run_growth(env, "a.json", "b.json", *DATES, "-o", "growth.csv")
TRIGGERS["Growth: no cord mask (warning)"] = lambda env: run_growth(env, growth_visit(env, "a", cord=False), growth_visit(env, "b"), *DATES,
                                                                    "-masks", env.base / "a", env.base / "b", code=0)


@trigger("Growth: not a statistics file")
def _(env):
    t2 = growth_visit(env, "a")
    (env.base / "a" / "sub_T2w_seg-tumor.json").write_text('{"Output": "seg-tumor"}')
    return run_growth(env, env.base / "a" / "sub_T2w_seg-tumor.json", t2, *DATES)


@trigger("Growth: no masks for a T2w")
def _(env):
    t2 = growth_visit(env, "a")
    return run_growth(env, t2, t2, *DATES, "-masks", env.base, env.base)


@trigger("Growth: mask on another grid")
def _(env):
    t2 = growth_visit(env, "a")
    other = growth_visit(env, "b", shift_mm=10.0)
    (env.base / "b" / "sub_T2w.nii.gz").unlink()
    (env.base / "b" / "sub_T2w.nii.gz").symlink_to(t2)
    return run_growth(env, other, t2, *DATES)


@trigger("Growth: -o exists")
def _(env):
    (env.base / "growth.tsv").write_text("mine")
    return run_growth(env, "a.json", "b.json", *DATES, "-o", env.base / "growth.tsv")


# ----------------------------------------------------------------------------- the checks


def _call(failure: str, env: Env, request: pytest.FixtureRequest) -> list[str]:
    fn = TRIGGERS[failure]
    if "server" in fn.__code__.co_varnames[: fn.__code__.co_argcount]:
        return fn(env, request.getfixturevalue("server"))
    return fn(env)


def test_every_row_has_a_trigger_and_every_trigger_a_row():
    rows = [r.failure for r in doc_rows() if r.section != REASONS]
    assert len(rows) == len(set(rows)), "duplicate failure names in docs/errors.md"
    assert sorted(set(rows) - set(TRIGGERS)) == [], "rows without a trigger"
    assert sorted(set(TRIGGERS) - set(rows)) == [], "triggers without a row"


@pytest.mark.parametrize("failure", [r.failure for r in doc_rows() if r.section != REASONS])
def test_the_message_in_the_table_is_the_one_printed(failure, env, request):
    doc = row(failure)
    lines = _call(failure, env, request)
    if doc.message.startswith("imsct_deepseg:"):
        printed = [line for line in lines if line.startswith("imsct_deepseg:")]
        assert len(printed) == 1, lines
        assert pattern(doc.message).fullmatch(printed[0]), f"\ndoc:     {doc.message}\nprinted: {printed[0]}"
    else:
        assert any(pattern(doc.message).fullmatch(line) for line in lines), f"\ndoc: {doc.message}\nprinted: {lines}"


def _serve(env: Env, server: FlakyServer, reason: str) -> list[str]:
    data = (env.base / "models" / "loc.onnx").read_bytes()
    actions = {
        "HTTP 404": [status(404)],
        "HTTP 5xx": [status(503)],
        "Connection refused": None,
        "DNS failure": None,
        "No network": None,
        "Timeout": [stall(10.0, announced=len(data))],
        "HTML page instead of the model": [html_page()],
        "Connection broken mid-download": [send_bytes(data, cut=len(data) // 2)],
        "Body shorter than the model": [send_bytes(data[:-10], length=None)],
        "Body longer than the model": [send_bytes(data + b"x" * 10, length=None)],
        "Wrong Content-Length": [send_bytes(data + b"x")],
        "Wrong checksum": [send_bytes(bytes([data[0] ^ 0xFF]) + data[1:])],
        "TLS error": [send_bytes(data)],
        "Download deadline passed": [trickle(0.02, len(data))],
        "Transfer too slow": [trickle(0.02, len(data))],
        "Archive without the model": [send_bytes(_archive({"README.md": b"# loc"}))],
        "Published model with another git blob": [send_bytes(_archive({"loc.onnx": data[:-1] + b"\0"}))],
    }[reason]
    urls = env.remote(server, *(actions or [status(500)]))
    if reason in ("Archive without the model", "Published model with another git blob"):
        env.mp.setenv("DEEPSEG_IMSCT_REGISTRY", str(env.registry(lambda d: d["models"]["loc"]["versions"]["1.0"].update(
            sha256="", size=0, blob_sha1=_blob(data), sources=[urls[0].replace(".onnx", ".zip")]))))
        server.route("/loc.zip", *actions)
    url = urls[0]
    if reason == "Connection refused":
        url = f"http://127.0.0.1:{free_port()}/loc.onnx"
    elif reason == "DNS failure":
        url = "http://models.deepseg-imsct.invalid/loc.onnx"
        env.mp.setattr(socket, "getaddrinfo", _raise(socket.gaierror(socket.EAI_NONAME, "Name or service not known")))
    elif reason == "No network":
        url = "http://192.0.2.1/loc.onnx"
        env.mp.setattr(socket.socket, "connect", _raise(OSError(errno.ENETUNREACH, "Network is unreachable")))
    elif reason == "TLS error":
        url = url.replace("http://", "https://")
    elif reason in ("Download deadline passed", "Transfer too slow"):  # limits far below the trickle's gaps
        env.mp.setattr(fetch, "READ_TIMEOUT_S", 60.0)
        env.mp.setattr(fetch, "RATE_WINDOW_S", 0.5)
        env.mp.setenv(fetch.ENV_DEADLINE, "1" if reason == "Download deadline passed" else "0")
        env.mp.setenv(fetch.ENV_MIN_RATE, "0" if reason == "Download deadline passed" else "100000")
    if url != urls[0]:
        env.registry(lambda d: d["models"]["loc"]["versions"]["1.0"].update(sources=[url]))
    return env.cli("-install")


def _blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _published_folder(env: Env, onnx: bytes, config: dict | None) -> Path:
    """A registry whose localizer is known by its git blob only, and a folder holding ``onnx``
    under its name (with an ivadomed config when given): for -install --from."""
    entry = env.entry("loc")
    env.registry(lambda d: d["models"]["loc"]["versions"]["1.0"].update(
        sha256="", size=0, blob_sha1=_blob((env.base / "models" / "loc.onnx").read_bytes())))
    folder = env.base / "toolbox"
    folder.mkdir(exist_ok=True)
    (folder / entry["file"]).write_bytes(onnx)
    if config is not None:
        (folder / entry["file"]).with_suffix(".json").write_text(json.dumps(config))
    return folder


TRIGGERS["-install --from: published model with another git blob"] = lambda env: env.cli(
    "-install", "--from", _published_folder(env, b"another model", None))
TRIGGERS["-install --from: toolbox model folder this package cannot run"] = lambda env: env.cli(
    "-install", "--from", _published_folder(env, (env.base / "models" / "seg.onnx").read_bytes(), {"transformation": {}}))
@trigger("-install --from: archive without the model set's files")
def _(env):
    (env.base / "other.zip").write_bytes(_archive({"other.onnx": b"x"}))
    return env.cli("-install", "--from", env.base / "other.zip")


TRIGGERS["Unknown model set"] = lambda env: api_error(lambda: Predictor(model_set="nnunet"))


@trigger("Custom toolbox model folder")
def _(env):
    fixture = Path(__file__).parent / "fixtures" / "ivadomed" / "findcord_tumor.json"
    folder = _published_folder(env, (env.base / "models" / "seg.onnx").read_bytes(), json.loads(fixture.read_text()))
    return env.cli("-install", "--from", folder, code=0)


def _archive(files: dict[str, bytes]) -> bytes:
    import io as _io
    import zipfile

    buf = _io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(f"loc-r1/{name}", data)
    return buf.getvalue()


def _raise(exc: BaseException) -> Callable[..., None]:
    def fail(*args, **kwargs):
        raise exc
    return fail


@pytest.mark.parametrize("reason", [r.failure for r in doc_rows() if r.section == REASONS])
def test_each_download_failure_reason_is_printed_as_documented(reason, env, server):
    template = row(DOWNLOAD_ROW).message
    assert template.count("<reason>") == 1
    doc = template.replace("<reason>", row(reason).message)
    printed = [line for line in _serve(env, server, reason) if line.startswith("imsct_deepseg:")]
    assert len(printed) == 1 and pattern(doc).fullmatch(printed[0]), f"\ndoc:     {doc}\nprinted: {printed}"
