"""Bad inputs end in one clear DeepsegError naming the file and the fix, or are handled."""
from __future__ import annotations

import gzip
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from deepseg_imsct import io
from deepseg_imsct.errors import DeepsegError

AFFINE = np.diag([0.8, 0.8, 3.0, 1.0])


def save(path: Path, data: np.ndarray, affine=AFFINE, **header) -> Path:
    img = nib.Nifti1Image(data, affine)
    for key, value in header.items():
        img.header[key] = value
    nib.save(img, path)
    return path


def write(path: Path, payload: bytes) -> Path:
    path.write_bytes(payload)
    return path


def noise(shape=(20, 20, 6), dtype=np.float32) -> np.ndarray:
    return (np.random.default_rng(0).random(shape) * 100).astype(dtype)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda d: d / "missing.nii.gz", "T2w file not found: .*missing.nii.gz: check the path"),
        (lambda d: d, "is a folder: give the NIfTI file"),
        (lambda d: write(d / "scan.mha", b"x"), "not a NIfTI file name .*convert it"),
        (lambda d: write(d / "empty.nii.gz", b""), "not a readable NIfTI"),
        (lambda d: write(d / "text.nii", b"hello"), "not a readable NIfTI"),
    ],
    ids=["missing", "folder", "extension", "zero-byte", "not-nifti"],
)
def test_unusable_files_are_named_with_the_fix(tmp_path, make, message):
    with pytest.raises(DeepsegError, match=message):
        io.load_volume(make(tmp_path), "T2w")


def test_truncated_gzip_is_refused(tmp_path):
    path = save(tmp_path / "t2.nii.gz", noise((60, 60, 20)))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DeepsegError, match="T2w file .*t2.nii.gz (is not a readable NIfTI|cannot be read).*re-export"):
        io.load_volume(path, "T2w")


@pytest.mark.parametrize(
    "shape,message",
    [((20, 20), "has 2 dimensions"), ((20, 20, 6, 3), "has 3 volumes"), ((20, 20, 6, 1, 2), "has 5 dimensions")],
)
def test_wrong_dimensionality_is_refused(tmp_path, shape, message):
    path = save(tmp_path / "t1.nii.gz", noise(shape))
    with pytest.raises(DeepsegError, match=f"T1w file .*{message}.*give a single 3D volume"):
        io.load_volume(path, "T1w")


def test_single_volume_4d_is_accepted(tmp_path):
    path = save(tmp_path / "t2.nii.gz", noise((20, 20, 6, 1)))
    assert io.load_volume(path, "T2w").data.shape == (20, 20, 6)


def test_complex_and_rgb_are_refused(tmp_path):
    save(tmp_path / "c.nii.gz", noise().astype(np.complex64))
    with pytest.raises(DeepsegError, match="complex"):
        io.load_volume(tmp_path / "c.nii.gz", "T2w")
    rgb = np.zeros((20, 20, 6), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["R"] = 5
    nib.save(nib.Nifti1Image(rgb, AFFINE), tmp_path / "rgb.nii.gz")
    with pytest.raises(DeepsegError, match="RGB"):
        io.load_volume(tmp_path / "rgb.nii.gz", "T2w")


def test_scaled_integers_are_read_in_physical_values(tmp_path):
    img = nib.Nifti1Image(np.arange(2400, dtype=np.int16).reshape(20, 20, 6), AFFINE)
    img.header.set_slope_inter(0.5, 10.0)
    nib.save(img, tmp_path / "s.nii.gz")
    data = io.load_volume(tmp_path / "s.nii.gz", "T2w").data
    assert data.dtype == np.float32 and data[0, 0, 1] == pytest.approx(10.5)


def test_nan_and_inf_become_zero_with_a_warning(tmp_path, caplog):
    data = noise()
    data[0, 0, 0], data[1, 1, 1] = np.nan, np.inf
    path = save(tmp_path / "n.nii.gz", data)
    with caplog.at_level(logging.WARNING):
        out = io.load_volume(path, "T2w").data
    assert out[0, 0, 0] == 0 and out[1, 1, 1] == 0 and "2 NaN/Inf voxels" in caplog.text


@pytest.mark.parametrize("value", [0, 7])
def test_constant_images_are_refused(tmp_path, value):
    path = save(tmp_path / "k.nii.gz", np.full((20, 20, 6), value, np.int16))
    with pytest.raises(DeepsegError, match=f"constant \\(every voxel is {value}\\)"):
        io.load_volume(path, "T1w")


def test_degenerate_affine_is_refused(tmp_path):
    img = nib.Nifti1Image(noise(), AFFINE)
    img.header["qform_code"], img.header["sform_code"] = 0, 1
    img.header["srow_z"] = [0, 0, 0, 0]  # third axis collapsed: no inverse exists
    path = tmp_path / "d.nii.gz"
    path.write_bytes(gzip.compress(img.header.binaryblock + b"\0" * 4 + noise().tobytes(order="F")))
    with pytest.raises(DeepsegError, match="degenerate voxel-to-scanner affine"):
        io.load_volume(path, "T2w")


def test_qform_sform_disagreement_warns_and_uses_the_sform(tmp_path, caplog):
    img = nib.Nifti1Image(noise(), AFFINE)
    shifted = AFFINE.copy()
    shifted[0, 3] = 25.0
    img.set_qform(AFFINE, code=1)
    img.set_sform(shifted, code=1)
    nib.save(img, tmp_path / "q.nii.gz")
    with caplog.at_level(logging.WARNING):
        vol = io.load_volume(tmp_path / "q.nii.gz", "T2w")
    assert "disagree: using the sform" in caplog.text
    np.testing.assert_allclose(vol.grid.affine, shifted)


def test_images_too_large_for_memory_are_refused_before_reading(tmp_path, monkeypatch):
    path = save(tmp_path / "big.nii.gz", noise())
    monkeypatch.setattr(io, "available_memory_bytes", lambda: 1000)
    with pytest.raises(DeepsegError, match=r"20x20x6 voxels: processing it needs about .* GB of memory but 0.0 GB"):
        io.load_volume(path, "T2w")


def test_unwritable_output_folder_is_named(tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    monkeypatch.setattr(io.os, "access", lambda p, mode: Path(p) != folder)
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4))
    with pytest.raises(DeepsegError, match="output folder .*ro is not writable: choose another with -o"):
        io.write_outputs({folder / "x.nii.gz": img}, {})


def test_missing_output_folder_is_created(tmp_path):
    img = nib.Nifti1Image(np.ones((2, 2, 2), np.uint8), np.eye(4))
    target = tmp_path / "a" / "b" / "x.nii.gz"
    io.write_outputs({target: img}, {target.with_suffix("").with_suffix(".json"): {"k": 1}})
    assert nib.load(target).get_fdata().sum() == 8 and (tmp_path / "a" / "b" / "x.json").exists()
    assert gzip.decompress(target.read_bytes())[:4] != b""  # a real gzip stream
