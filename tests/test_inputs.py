"""Bad inputs end in one clear DeepsegError naming the file and the fix, or are handled."""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import logging
import os
from io import StringIO
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import synthetic
from onnx_models import write_registry
from test_pipeline import write_case
from unprivileged import as_nobody, can_drop_privileges, shared_folder

from deepseg_imsct import cli, io
from deepseg_imsct.errors import DeepsegError
from deepseg_imsct.pipeline import Predictor
from deepseg_imsct.registry import load_registry

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


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_truncated_or_corrupt_gzip_is_refused(tmp_path, damage):
    path = save(tmp_path / "t2.nii.gz", noise((60, 60, 20)))
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:  # bytes flipped in the middle of the deflate stream: bad data or CRC
        data[len(data) // 2 : len(data) // 2 + 64] = bytes(b ^ 0xFF for b in data[len(data) // 2 : len(data) // 2 + 64])
    path.write_bytes(bytes(data))
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


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_voxels_keep_their_values_small_integers_their_type(tmp_path, dtype, suffix):
    """Unscaled 8/16-bit integers stay integers (exact in float32, half the memory); the rest is float32."""
    values = np.arange(2400).reshape(20, 20, 6) % 120
    nib.save(nib.Nifti1Image(values.astype(dtype), AFFINE), tmp_path / f"v{suffix}")
    data = io.load_volume(tmp_path / f"v{suffix}", "T2w").data
    small_integer = np.dtype(dtype).kind in "iu" and np.dtype(dtype).itemsize <= 2
    assert data.dtype == (dtype if small_integer else np.float32)
    assert not isinstance(data, np.memmap)
    np.testing.assert_array_equal(data, values.astype(np.float32))


@pytest.mark.parametrize("slope,inter", [(1.0, 0.0), (2.0, 0.0), (1.3, -7.25), (0.003, 1.0)])
@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32])
@pytest.mark.parametrize("endianness", ["<", ">"])
def test_fast_gzip_read_equals_nibabel(tmp_path, dtype, endianness, slope, inter):
    """The one-call decompression gives nibabel's float32 values exactly, scaling and byte order included."""
    values = (np.random.default_rng(0).random((17, 9, 13)) * 200).astype(dtype)
    header = nib.Nifti1Header(endianness=endianness)
    header.set_data_dtype(dtype)  # stored as this type (a header's own type, float32, would win otherwise)
    img = nib.Nifti1Image(values, AFFINE, header)
    img.header.set_slope_inter(slope, inter)
    nib.save(img, tmp_path / "v.nii.gz")
    loaded = nib.load(tmp_path / "v.nii.gz")
    got = io.read_voxels(loaded, tmp_path / "v.nii.gz")
    np.testing.assert_array_equal(got.astype(np.float32), np.asarray(loaded.dataobj, dtype=np.float32))
    assert loaded.get_data_dtype() == np.dtype(dtype).newbyteorder(endianness)
    kept = (slope, inter) == (1.0, 0.0) and dtype in (np.int16, np.uint8)  # small unscaled integers stay as they are
    assert got.dtype.newbyteorder("=") == (np.dtype(dtype) if kept else np.float32)


def test_concatenated_gzip_members_are_read_whole(tmp_path):
    img = nib.Nifti1Image(noise(dtype=np.int16), AFFINE)
    payload = img.to_bytes()
    half = len(payload) // 2
    (tmp_path / "m.nii.gz").write_bytes(gzip.compress(payload[:half]) + gzip.compress(payload[half:]))
    np.testing.assert_array_equal(io.load_volume(tmp_path / "m.nii.gz", "T2w").data, noise(dtype=np.int16))


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


def test_0_1_mm_voxels_give_masks_on_the_native_grid(tmp_path):
    """Extreme in-plane resolution (0.1 mm, 3 mm slices) through the whole cascade."""
    predictor = Predictor(registry=load_registry(write_registry(tmp_path)))
    t2, t1, truth = synthetic.case("PSR", (0.1, 0.1, 3.0), (300, 600, 14))
    tumor = np.asanyarray(predictor(t2, t1).masks["tumor"].dataobj) > 0
    assert tumor.shape == truth.shape and tumor[truth].mean() > 0.9


# ----------------------------------------------------------------------------- permissions, for real


def run_cli_as_nobody(argv: list[str]) -> tuple[int, list[str]]:
    """``imsct_deepseg argv`` in a child running as 'nobody': (exit status, its stderr lines)."""

    def main() -> str:
        err = StringIO()
        with contextlib.redirect_stderr(err):
            code = cli.main(argv)
        return f"{code}\n{err.getvalue()}"

    child, text = as_nobody(main)
    assert child == 0, text
    code, _, err = text.partition("\n")
    return int(code), err.splitlines()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def nobody_case(monkeypatch):
    """A T2w/T1w pair and analytic models in a folder 'nobody' can read, and an empty output
    folder it can write: (T2w, T1w, output folder)."""
    if not can_drop_privileges():
        pytest.skip("needs root (to drop privileges in a child); as a user, the chmod tests apply")
    with shared_folder() as base:
        monkeypatch.setenv("DEEPSEG_IMSCT_REGISTRY", str(write_registry(base / "models")))
        t2, t1 = write_case(base / "in")
        (base / "in").chmod(0o755)
        out = base / "out"
        out.mkdir(mode=0o777)
        out.chmod(0o777)
        yield t2, t1, out


@pytest.mark.parametrize("blocked", ["file", "folder"])
def test_unreadable_input_as_unprivileged_user(nobody_case, blocked):
    """A T2w without read permission (or in a folder 'nobody' may not enter): one line, exit 2."""
    t2, t1, out = nobody_case
    before = (sha(t2), sha(t1))
    if blocked == "file":
        t2.chmod(0o600)
        expected = f"imsct_deepseg: error: T2w file {t2} is not readable: check its permissions"
    else:
        t2.parent.chmod(0o711)  # t1 stays reachable by its name, t2 is moved into a closed folder
        closed = t2.parent / "closed"
        closed.mkdir(mode=0o700)
        t2 = t2.rename(closed / t2.name)
        expected = f"imsct_deepseg: error: T2w file {t2} cannot be reached (Permission denied): check the permissions of the folders above it"
    code, err = run_cli_as_nobody(["-i", str(t2), str(t1), "-o", str(out)])
    assert code == 2
    assert [line for line in err if line.startswith("imsct_deepseg")] == [expected]
    assert list(out.iterdir()) == []
    assert (sha(t2), sha(t1)) == before


def test_unreadable_input_as_user(tmp_path, monkeypatch, capsys):
    """The same without root: chmod 000 makes the file unreadable."""
    monkeypatch.setenv("DEEPSEG_IMSCT_REGISTRY", str(write_registry(tmp_path / "models")))
    t2, t1 = write_case(tmp_path / "in")
    t2.chmod(0o000)
    try:
        if os.access(t2, os.R_OK):
            pytest.skip("running as root: chmod does not stop reads (see the 'nobody' variant)")
        assert cli.main(["-i", str(t2), str(t1), "-o", str(tmp_path / "out")]) == 2
    finally:
        t2.chmod(0o644)
    assert capsys.readouterr().err.strip() == f"imsct_deepseg: error: T2w file {t2} is not readable: check its permissions"
    assert not (tmp_path / "out").exists()


def test_unwritable_output_folder_as_unprivileged_user(nobody_case):
    """A real read-only output folder: refused with the fix; nothing written, inputs intact."""
    t2, t1, out = nobody_case
    out.chmod(0o755)  # root's: 'nobody' cannot write in it
    before = (sha(t2), sha(t1))
    code, err = run_cli_as_nobody(["-i", str(t2), str(t1), "-o", str(out)])
    assert code == 2
    assert [line for line in err if line.startswith("imsct_deepseg")] == [
        f"imsct_deepseg: error: output folder {out} is not writable: choose another with -o"]
    assert list(out.iterdir()) == []
    assert (sha(t2), sha(t1)) == before
