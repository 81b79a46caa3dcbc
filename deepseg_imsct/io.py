"""Reading the inputs (checked, never modified) and writing outputs atomically.

Input arrays keep the file's own voxel order; their geometry travels as a :class:`Grid`.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import itertools
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping

import nibabel as nib
import numpy as np

from .errors import DeepsegError
from .grid import Grid
from .limits import declared_layout, gunzip_bounded, refuse_over_limit
from . import transaction
from .outputs import TEMP_SUFFIX, sidecar_path, temp_prefix

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
GZIP_LEVEL = 1  # masks are mostly zeros: level 1 writes them 2x faster than 4, files of ~0.1 MB


@dataclass(frozen=True)
class Volume:
    """A loaded 3D image: ``data`` in file voxel order, its ``grid``, and the header source.

    ``data`` is float32 with the file's scaling applied, or the file's own integers where they are
    8 or 16 bits and unscaled (exact in float32, half the memory); :func:`grid.resample` reads both.
    """

    data: np.ndarray
    grid: Grid
    image: nib.Nifti1Image
    path: Path | None = None

    @property
    def name(self) -> str:
        return str(self.path) if self.path else "<in-memory image>"


def check_input_file(path: Path | str, role: str) -> Path:
    """Fail early, with the fix, on a path that cannot be a readable NIfTI file."""
    if not isinstance(path, (str, os.PathLike)) or "\0" in str(path):
        what = "a file name with a NUL character" if isinstance(path, (str, os.PathLike)) else described(path)
        raise DeepsegError(f"{role} input is {what}, not a file path: give the NIfTI file's path (str or pathlib.Path)")
    path = Path(path)
    try:
        found = path.exists()
    except OSError as exc:  # a folder on the path that this user may not enter
        raise DeepsegError(f"{role} file {path} cannot be reached ({exc.strerror}): check the permissions of the folders above it") from None
    if not found:
        raise DeepsegError(f"{role} file not found: {path}: check the path")
    if path.is_dir():
        raise DeepsegError(f"{role} input {path} is a folder: give the NIfTI file (.nii or .nii.gz) inside it")
    if not path.name.endswith(NIFTI_SUFFIXES):
        raise DeepsegError(f"{role} file {path} is not a NIfTI file name (.nii or .nii.gz): convert it (e.g. dcm2niix) or rename it")
    if not os.access(path, os.R_OK):
        raise DeepsegError(f"{role} file {path} is not readable: check its permissions")
    return path


def described(value: object) -> str:
    """A Python value as messages name it: 'None', 'bytes', 'a numpy array of shape (3, 4)'."""
    if value is None:
        return "None"
    if isinstance(value, np.ndarray):
        return f"a numpy array of shape {value.shape}"
    return f"a value of type {type(value).__name__}"


def check_distinct(t2: Path | str, t1: Path | str) -> None:
    """Refuse the same file given as both inputs."""
    if Path(t2).resolve() == Path(t1).resolve():
        raise DeepsegError(f"the same file {t2} was given as T2w and T1w: give the T2w and the gadolinium T1w")


def load_volume(path: Path | str, role: str) -> Volume:
    """Load a 3D NIfTI (``role`` names it in messages, e.g. 'T2w'), checked for what breaks us."""
    path = check_input_file(path, role)
    try:
        declared_layout(path)  # header extensions end before the voxels: nibabel reads them in full
        image = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for bad files
        raise DeepsegError(f"{role} file {path} is not a readable NIfTI ({exc}): re-export it from the scanner or PACS") from None
    return as_volume(image, role, path)


def as_volume(image: nib.spatialimages.SpatialImage, role: str, path: Path | None = None) -> Volume:
    """Check an image and read its voxels (see :func:`read_voxels`; ``path``: the file it was loaded from)."""
    if not isinstance(image, nib.spatialimages.SpatialImage):
        raise DeepsegError(f"{role} input is {described(image)}, not a file path or an image: give a NIfTI file's path, "
                           "or a nibabel image (for an array: nibabel.Nifti1Image(array, affine))")
    where = f"{role} file {path}" if path else f"{role} image"
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        image = nib.Nifti1Image(np.asanyarray(image.dataobj), image.affine)
    shape = image.shape
    if len(shape) == 4 and shape[3] == 1:
        image = image.slicer[..., 0]
        shape = image.shape
    if len(shape) != 3:
        extra = f"{shape[3]} volumes" if len(shape) == 4 else f"{len(shape)} dimensions"
        raise DeepsegError(f"{where} has {extra} (shape {shape}): give a single 3D volume (e.g. fslroi or nibabel to extract one)")
    dtype = image.get_data_dtype()
    if dtype.kind == "c" or dtype.names is not None:
        raise DeepsegError(f"{where} holds {'complex' if dtype.kind == 'c' else 'RGB'} voxels: give a magnitude 3D image")
    affine = np.asarray(image.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise DeepsegError(f"{where} has a degenerate voxel-to-scanner affine: fix its header (qform/sform)")
    _warn_if_qform_sform_differ(image, where)
    check_memory(shape, where)
    try:
        data = read_voxels(image, path)
    except Exception as exc:
        raise DeepsegError(f"{where} cannot be read ({exc}): the file may be truncated; re-export it") from None
    bad = ~np.isfinite(data) if data.dtype.kind == "f" else None  # integers cannot be NaN
    if bad is not None and bad.any():
        log.warning("%s has %d NaN/Inf voxels: treated as 0", where, int(bad.sum()))
        data = np.where(bad, np.float32(0), data)
    low, high = float(data.min()), float(data.max())
    if low == high:
        raise DeepsegError(f"{where} is constant (every voxel is {low:g}): it holds no image; check the export")
    return Volume(data, Grid(tuple(int(n) for n in shape), affine), image, path)


def read_voxels(image: nib.Nifti1Image, path: Path | None = None) -> np.ndarray:
    """The image's 3D voxels in file voxel order, with the values of
    ``np.asarray(image.dataobj, dtype=np.float32)``: unscaled integers of 8 or 16 bits (exact in
    float32) are kept as they are, at half the memory or less; anything else becomes float32.

    A ``.nii.gz`` ``path`` (the file ``image`` was loaded from) is decompressed in 1 MB chunks up to
    the bytes its header declares, never further: about twice as fast as nibabel's 8 kB reads.
    """
    proxy = image.dataobj
    if not nib.is_proxy(proxy):  # an in-memory array: nibabel applies no scaling to it
        voxels, slope, inter = np.asanyarray(proxy), 1.0, 0.0
    elif path is not None and path.name.endswith(".gz") and _plain_proxy(proxy, image.shape):
        count = int(np.prod(image.shape, dtype=np.int64))
        raw = gunzip_bounded(path, int(proxy.offset) + count * image.header.get_data_dtype().itemsize)
        voxels = np.frombuffer(raw, image.header.get_data_dtype(), count=count, offset=int(proxy.offset))
        voxels, slope, inter = voxels.reshape(image.shape, order="F"), proxy.slope, proxy.inter
    elif _plain_proxy(proxy, image.shape):
        voxels, slope, inter = np.asanyarray(proxy.get_unscaled()), proxy.slope, proxy.inter
    else:
        return np.asarray(proxy, dtype=np.float32)
    if slope == 1 and inter == 0 and voxels.dtype.kind in "iu" and voxels.dtype.itemsize <= 2:
        return np.array(voxels) if isinstance(voxels, np.memmap) else voxels
    return scaled_float32(voxels, slope, inter)


def _plain_proxy(proxy, shape: tuple[int, ...]) -> bool:
    """A nibabel ArrayProxy over the whole image, in NIfTI's Fortran order."""
    return isinstance(proxy, nib.arrayproxy.ArrayProxy) and proxy.order == "F" and proxy.shape == tuple(shape)


def scaled_float32(voxels: np.ndarray, slope: float, inter: float, chunk_voxels: int = 1 << 22) -> np.ndarray:
    """``voxels * slope + inter`` as float32, as nibabel computes it (in float64, then rounded)
    but in slabs of about ``chunk_voxels`` along the last axis: no whole-volume float64 copy."""
    out = np.empty(voxels.shape, np.float32, order="F")
    if slope == 1 and inter == 0:
        out[...] = voxels
        return out
    slab = max(1, chunk_voxels // max(1, int(np.prod(voxels.shape[:-1]))))
    for k in range(0, voxels.shape[-1], slab):
        out[..., k : k + slab] = voxels[..., k : k + slab] * np.float64(slope) + np.float64(inter)
    return out


# Working memory per native voxel, rounded up: the voxels (4 B as float32), the file's compressed and
# decompressed bytes while it is read (up to 8 B), one byte per output mask on the T2w's grid (6 B).
# Resampling back and post-processing only touch the crop box's footprint. bench/bench_pipeline.py
# measured ~5 B per voxel of each image beyond the ~0.5 GB the models need (int16 files).
BYTES_PER_VOXEL = 16


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), or None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_memory(shape: tuple[int, ...], where: str) -> None:
    """Refuse, before allocating, an image over the memory ceiling (:mod:`limits`) or this
    machine's available memory (estimate in GB)."""
    need = int(np.prod(shape[:3], dtype=np.int64)) * BYTES_PER_VOXEL
    refuse_over_limit(where, shape[:3], need, "crop or downsample it, or raise the limit")
    have = available_memory_bytes()
    if have is not None and need > have:
        raise DeepsegError(
            f"{where} has {'x'.join(map(str, shape))} voxels: processing it needs about {need / 1e9:.1f} GB of memory "
            f"but {have / 1e9:.1f} GB is available; crop or downsample it, or close other programs"
        )


def _warn_if_qform_sform_differ(image: nib.Nifti1Image, where: str) -> None:
    header = image.header
    if int(header["qform_code"]) > 0 and int(header["sform_code"]) > 0:
        if not np.allclose(image.get_qform(), image.get_sform(), atol=1e-3):
            log.warning("%s has a qform and an sform that disagree: using the sform, as nibabel and FSL do", where)


# Header text an input may carry about the patient or the study (a scanner's series text, DICOM
# fields pasted by converters): cleared in outputs, with every header extension and the intent.
PRIVATE_TEXT_FIELDS = ("descrip", "aux_file", "intent_name", "db_name", "data_type")


def mask_image(data: np.ndarray, reference: nib.Nifti1Image) -> nib.Nifti1Image:
    """An output image on the reference's grid: same affine, qform/sform codes and units; none of
    its header extensions or text fields (:data:`PRIVATE_TEXT_FIELDS`)."""
    header = reference.header.copy()
    out = nib.Nifti1Image(data, reference.affine, header)
    out.header.extensions.clear()
    for name in set(PRIVATE_TEXT_FIELDS) & set(out.header.keys()):
        out.header[name] = b""
    out.header.set_intent("none", allow_unknown=True)
    out.set_data_dtype(data.dtype)
    out.header.set_slope_inter(1.0, 0.0)
    out.header["cal_min"], out.header["cal_max"] = 0, 0
    out.header["descrip"] = b"deepseg-imsct"
    out.set_qform(reference.get_qform(), code=int(reference.header["qform_code"]))
    out.set_sform(reference.get_sform(), code=int(reference.header["sform_code"]))
    return out


@contextlib.contextmanager
def _temporary(final: Path) -> Iterator[Path]:
    """A temporary file next to ``final``, named as :func:`outputs.temp_prefix` says; removed on exit."""
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(final), suffix=TEMP_SUFFIX, dir=final.parent)
    os.close(fd)
    os.chmod(tmp, transaction.new_file_mode())  # mkstemp makes 0600 files: give outputs the usual permissions
    try:
        yield Path(tmp)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_outputs(images: Mapping[Path, nib.Nifti1Image], sidecars: Mapping[Path, dict],
                  check: Callable[[], None] | None = None, files: Mapping[Path, str | bytes] | None = None) -> None:
    """Write every file of one folder to a temporary name, then replace the previous set at once.

    Under the folder's lock (:func:`transaction.locked`), ``check`` runs first (the targets seen
    again, as another run may have written meanwhile); a sidecar of an image records the image's
    sha256 (``OutputSha256``), as does the sidecar of another file (``files``: {path: UTF-8 text or
    bytes}, e.g. the statistics' TSV, a picture). Either the complete new set is in place or (on any error, a full disk,
    Ctrl-C) the previous one is, and no partial file remains.
    """
    files = files or {}
    (folder,) = {p.parent for p in [*images, *sidecars, *files]}
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DeepsegError(f"cannot create output folder {folder} ({exc.strerror}): choose another with -o") from None
    if not os.access(folder, os.W_OK):
        raise DeepsegError(f"output folder {folder} is not writable: choose another with -o")
    try:
        with transaction.locked(folder), contextlib.ExitStack() as stack:
            if check:
                check()
            staged = _stage(stack, images, sidecars, files)
            _commit(folder, staged)
    except OSError as exc:
        raise DeepsegError(f"writing outputs in {folder} failed ({exc.strerror or exc}): free disk space or choose another folder with -o; nothing was written") from None


def _stage(stack: contextlib.ExitStack, images: Mapping[Path, nib.Nifti1Image], sidecars: Mapping[Path, dict],
           files: Mapping[Path, str | bytes]) -> list[tuple[Path, Path]]:
    """Every file written under its temporary name: [(temporary, final)]."""
    staged, digests = [], {}
    payloads = itertools.chain(((path, image.to_bytes()) for path, image in images.items()),  # one image in memory at a time
                               ((path, data if isinstance(data, bytes) else data.encode("utf-8")) for path, data in files.items()))
    for path, payload in payloads:
        tmp = stack.enter_context(_temporary(path))
        if path.name.endswith(".gz"):
            payload = gzip.compress(payload, compresslevel=GZIP_LEVEL, mtime=0)
        tmp.write_bytes(payload)
        digests[sidecar_path(path)] = hashlib.sha256(payload).hexdigest()
        staged.append((tmp, path))
    for path, content in sidecars.items():
        tmp = stack.enter_context(_temporary(path))
        content = {**content, "OutputSha256": digests[path]} if path in digests else content
        tmp.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
        staged.append((tmp, path))
    return staged


def _commit(folder: Path, staged: list[tuple[Path, Path]]) -> None:
    """:func:`transaction.commit`, its failures said as what they left: the previous set."""
    try:
        transaction.commit(folder, staged)
    except OSError as exc:
        raise DeepsegError(f"replacing the outputs in {folder} failed ({exc.strerror or exc}): the previous outputs were put back; "
                           "fix the cause (a full disk, permissions) and run again") from None
