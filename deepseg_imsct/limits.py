"""Resource limits on what a small input file can make us allocate.

Every allocation that scales with the input is estimated first and refused, with the number, when
it passes the memory ceiling: ``DEEPSEG_IMSCT_MAX_MEMORY_GB`` (default :data:`DEFAULT_MEMORY_GB`,
well within a laptop's memory), or the memory available when that is lower. A ``.nii.gz`` is
first read as far as its header and header extensions (:func:`declared_layout`), checked, then
decompressed no further than the header says the image holds (:func:`gunzip_bounded`).
"""
from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Sequence

import nibabel as nib
import numpy as np

from .errors import DeepsegError

ENV_MEMORY = "DEEPSEG_IMSCT_MAX_MEMORY_GB"
DEFAULT_MEMORY_GB = 4.0
MAX_HEADER_BYTES = 16 << 20  # header + extensions before the voxels (DICOM text: ~100 kB)
READ_CHUNK = 1 << 20  # bytes of compressed file read at a time
# Working memory per voxel of a working grid (localizer block, segmenter crop), for C input
# channels and K output classes: each channel resampled, z-scored and padded (3 x 4 B), each
# class's summed output and its resampled copy (2 x 4 B), the window counts and masks (8 B).
CHANNEL_BYTES, CLASS_BYTES, GRID_BYTES = 12, 8, 8


def memory_limit_bytes() -> int:
    """The memory ceiling in bytes (``DEEPSEG_IMSCT_MAX_MEMORY_GB``, GB = 1e9 bytes)."""
    raw = os.environ.get(ENV_MEMORY, "").strip()
    if not raw:
        return int(DEFAULT_MEMORY_GB * 1e9)
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value < 1e6:  # NaN included
        raise DeepsegError(f"{ENV_MEMORY} is '{raw}', not a number of GB above 0: unset it (default {DEFAULT_MEMORY_GB:g}) or set e.g. 8")
    return int(value * 1e9)


def refuse_over_limit(what: str, shape: Sequence[int], need: int, fix: str) -> None:
    """Raise when ``need`` bytes for ``what`` (of ``shape`` voxels) pass the memory ceiling."""
    limit = memory_limit_bytes()
    if need > limit:
        raise DeepsegError(
            f"{what} has {'x'.join(map(str, shape))} voxels: processing it needs about {need / 1e9:.1f} GB of memory, "
            f"over the limit of {limit / 1e9:.1f} GB ({ENV_MEMORY}); {fix}"
        )


def check_work(shape: Sequence[int], channels: int, classes: int, what: str) -> None:
    """Refuse a working grid of ``shape`` voxels (``channels`` in, ``classes`` out) over the ceiling."""
    per_voxel = channels * CHANNEL_BYTES + classes * CLASS_BYTES + GRID_BYTES
    need = int(np.prod(shape, dtype=np.float64)) * per_voxel
    refuse_over_limit(what, shape, need, "crop the T2w around the spinal cord (e.g. fslroi) or raise the limit")


@dataclass(frozen=True)
class Layout:
    """What a NIfTI header declares: voxel ``shape``, bytes per voxel, and where voxels start."""

    shape: tuple[int, ...]
    itemsize: int
    offset: int

    @property
    def data_bytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.float64)) * self.itemsize

    @property
    def file_bytes(self) -> int:
        return self.offset + self.data_bytes


def _open(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def declared_layout(path: Path) -> Layout | None:
    """The layout a NIfTI-1/2 file's header declares, its extensions checked to end before the voxels
    (nibabel would read an extension of any declared size); None when the file is no NIfTI (nibabel
    then says why). Raises DeepsegError (a reason) for an offset or extension past the bounds."""
    try:
        with _open(path) as fh:
            head = fh.read(540)
            size = next((n for n in (348, 540) for order in "<>" if len(head) >= n
                         and int(np.frombuffer(head[:4], order + "i4")[0]) == n), None)
            if size is None:
                return None
            klass = nib.Nifti1Header if size == 348 else nib.Nifti2Header
            header = klass(head[:size], check=False)
            layout = Layout(tuple(int(n) for n in header.get_data_shape()), header.get_data_dtype().itemsize,
                            int(header.get_data_offset()))
            if layout.offset > MAX_HEADER_BYTES:
                raise ValueError(f"its header declares {layout.offset} bytes before the voxels, over {MAX_HEADER_BYTES}")
            _check_extensions(fh, size, layout.offset, header.endianness)
            return layout
    except (OSError, EOFError, zlib.error, nib.spatialimages.HeaderDataError, ValueError) as exc:
        raise DeepsegError(str(exc)) from None


def _check_extensions(fh: BinaryIO, size: int, offset: int, endianness: str) -> None:
    """Walk the header extensions (8-byte size and code, then the content) up to ``offset``."""
    fh.seek(size)
    flag = fh.read(4)
    if len(flag) < 4 or flag[0] == 0:
        return
    pos, order = size + 4, endianness
    while offset - pos >= 16:
        head = fh.read(8)
        if len(head) < 8:
            return  # nibabel reports the short file
        esize = int(np.frombuffer(head[:4], order + "i4")[0])
        if esize < 16 or pos + esize > offset:
            raise ValueError(f"a header extension declares {esize} bytes where {offset - pos} remain before the voxels")
        fh.seek(pos + esize)
        pos += esize


def gunzip_bounded(path: Path, nbytes: int) -> bytearray:
    """The first ``nbytes`` of a gzip file, decompressed in chunks: a stream that inflates beyond
    them is not read further. Raises EOFError when the stream ends before ``nbytes``."""
    out = bytearray(nbytes)
    view, filled = memoryview(out), 0
    inflate = zlib.decompressobj(wbits=31)
    with open(path, "rb") as fh:
        while filled < nbytes:
            blob = inflate.unconsumed_tail or fh.read(READ_CHUNK)
            if not blob:
                break
            part = inflate.decompress(blob, nbytes - filled)
            view[filled : filled + len(part)] = part
            filled += len(part)
            if inflate.eof:  # several gzip members (concatenated files): go on with the next
                rest = inflate.unused_data
                inflate = zlib.decompressobj(wbits=31)
                if rest.strip(b"\0"):
                    part = inflate.decompress(rest, nbytes - filled)
                    view[filled : filled + len(part)] = part
                    filled += len(part)
    if filled < nbytes:
        raise EOFError(f"compressed file ended after {filled} of the {nbytes} bytes its header declares")
    return out
