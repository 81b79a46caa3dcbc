"""Reading the inputs (checked, never modified) and writing outputs atomically.

Input arrays keep the file's own voxel order; their geometry travels as a :class:`Grid`.
"""
from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import nibabel as nib
import numpy as np

from .errors import DeepsegError
from .grid import Grid

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass(frozen=True)
class Volume:
    """A loaded 3D image: float32 ``data`` in file voxel order, its ``grid``, and the header source."""

    data: np.ndarray
    grid: Grid
    image: nib.Nifti1Image
    path: Path | None = None

    @property
    def name(self) -> str:
        return str(self.path) if self.path else "<in-memory image>"


def nifti_stem(path: Path) -> str:
    """File name without ``.nii`` / ``.nii.gz``."""
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def check_input_file(path: Path | str, role: str) -> Path:
    """Fail early, with the fix, on a path that cannot be a readable NIfTI file."""
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


def load_volume(path: Path | str, role: str) -> Volume:
    """Load a 3D NIfTI (``role`` names it in messages, e.g. 'T2w'), checked for what breaks us."""
    path = check_input_file(path, role)
    try:
        image = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for bad files
        raise DeepsegError(f"{role} file {path} is not a readable NIfTI ({exc}): re-export it from the scanner or PACS") from None
    return as_volume(image, role, path)


def as_volume(image: nib.spatialimages.SpatialImage, role: str, path: Path | None = None) -> Volume:
    """Check an in-memory image and read its voxels as float32 (scaling applied)."""
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
        data = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as exc:
        raise DeepsegError(f"{where} cannot be read ({exc}): the file may be truncated; re-export it") from None
    bad = ~np.isfinite(data)
    if bad.any():
        log.warning("%s has %d NaN/Inf voxels: treated as 0", where, int(bad.sum()))
        data = np.where(bad, np.float32(0), data)
    low, high = float(data.min()), float(data.max())
    if low == high:
        raise DeepsegError(f"{where} is constant (every voxel is {low:g}): it holds no image; check the export")
    return Volume(data, Grid(tuple(int(n) for n in shape), affine), image, path)


# Peak working memory per native voxel: the float32 image, its copy on the working grid and the
# four float32 class probabilities resampled back (measured with bench/bench_pipeline.py).
BYTES_PER_VOXEL = 4 * 8


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
    """Refuse, before allocating, an image this machine cannot process (estimate in GB)."""
    need = int(np.prod(shape[:3], dtype=np.int64)) * BYTES_PER_VOXEL
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


def mask_image(data: np.ndarray, reference: nib.Nifti1Image) -> nib.Nifti1Image:
    """An output image on the reference's grid: same affine, qform/sform codes and units."""
    header = reference.header.copy()
    out = nib.Nifti1Image(data, reference.affine, header)
    out.set_data_dtype(data.dtype)
    out.header.set_slope_inter(1.0, 0.0)
    out.header["cal_min"], out.header["cal_max"] = 0, 0
    out.header["descrip"] = b"deepseg-imsct"
    out.set_qform(reference.get_qform(), code=int(reference.header["qform_code"]))
    out.set_sform(reference.get_sform(), code=int(reference.header["sform_code"]))
    return out


@contextlib.contextmanager
def _temporary(folder: Path, name: str) -> Iterator[Path]:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=folder)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files: give outputs the usual permissions
    try:
        yield Path(tmp)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_outputs(images: Mapping[Path, nib.Nifti1Image], sidecars: Mapping[Path, dict]) -> None:
    """Write every file to a temporary name in its folder, then rename all of them.

    Either every output appears complete, or (on any error, a full disk, Ctrl-C) none is
    touched: earlier outputs with the same names stay intact and no partial file remains.
    """
    folders = {p.parent for p in list(images) + list(sidecars)}
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DeepsegError(f"cannot create output folder {folder} ({exc.strerror}): choose another with -o") from None
        if not os.access(folder, os.W_OK):
            raise DeepsegError(f"output folder {folder} is not writable: choose another with -o")
    with contextlib.ExitStack() as stack:
        staged: list[tuple[Path, Path]] = []
        try:
            for path, image in images.items():
                tmp = stack.enter_context(_temporary(path.parent, path.name))
                payload = image.to_bytes()
                if path.name.endswith(".gz"):
                    payload = gzip.compress(payload, compresslevel=4, mtime=0)
                tmp.write_bytes(payload)
                staged.append((tmp, path))
            for path, content in sidecars.items():
                tmp = stack.enter_context(_temporary(path.parent, path.name))
                tmp.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
                staged.append((tmp, path))
        except OSError as exc:
            raise DeepsegError(f"writing outputs in {path.parent} failed ({exc.strerror or exc}): free disk space or choose another folder with -o; nothing was written") from None
        for tmp, path in staged:
            os.replace(tmp, path)
