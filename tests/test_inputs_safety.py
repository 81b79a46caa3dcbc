"""Issue 15, the input side: bounded resources, arguments checked up front, contrast sanity, privacy.

Real files throughout (gzip bombs made here: small on disk, huge declared or undeclared
inflation), the command in a real process where its exit status matters; no timing assertions.
"""
from __future__ import annotations

import gzip
import os
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import synthetic
from conftest import REPO, shared_data
from onnx_models import write_registry
from test_errors_doc import cord_phantoms, declared_only, true_cord
from test_pipeline import write_case

from deepseg_imsct import limits
from deepseg_imsct.errors import DeepsegError
from deepseg_imsct.io import PRIVATE_TEXT_FIELDS, load_volume
from deepseg_imsct.contrast_order import csf_evidence
from deepseg_imsct.localize import find_cord, localize, localizer_block, on_block
from deepseg_imsct.pipeline import Predictor, segment_files
from deepseg_imsct.registry import load_registry
from deepseg_imsct.task import TUMOR_EDEMA_CAVITY


@pytest.fixture(scope="module")
def registry_path(tmp_path_factory) -> Path:
    return write_registry(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def predictor(registry_path) -> Predictor:
    return Predictor(registry=load_registry(registry_path))


# ----------------------------------------------------------------------------- resources


def test_a_header_declaring_gigabytes_is_refused_before_any_voxel_is_read(tmp_path):
    path = tmp_path / "bomb_T2w.nii.gz"
    path.write_bytes(declared_only((2048, 2048, 1024)))  # 8 GB of int16 declared in under 1 kB
    tracemalloc.start()
    try:
        with pytest.raises(DeepsegError, match=r"has 2048x2048x1024 voxels: processing it needs about 68\.7 GB of memory, "
                                               r"over the limit of 4\.0 GB \(DEEPSEG_IMSCT_MAX_MEMORY_GB\)"):
            load_volume(path, "T2w")
        assert tracemalloc.get_traced_memory()[1] < 20e6
    finally:
        tracemalloc.stop()


def _zeros_after(image: nib.Nifti1Image, extra_bytes: int) -> bytes:
    """The image's .nii bytes then ``extra_bytes`` of zeros, gzip-compressed chunk by chunk."""
    pack = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts, chunk = [pack.compress(image.to_bytes())], bytes(1 << 20)
    for _ in range(extra_bytes // len(chunk)):
        parts.append(pack.compress(chunk))
    return b"".join(parts) + pack.flush()


def test_a_stream_inflating_beyond_its_header_is_not_read_further(tmp_path):
    data = (np.random.default_rng(0).random((20, 20, 6)) * 100).astype(np.float32)
    path = tmp_path / "inflating_T2w.nii.gz"
    path.write_bytes(_zeros_after(nib.Nifti1Image(data, np.eye(4)), 512 << 20))  # 0.5 GB more inside 0.5 MB
    assert path.stat().st_size < 1e6
    tracemalloc.start()
    try:
        volume = load_volume(path, "T2w")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(volume.data, data)
    assert peak < 30e6  # the declared image and one compressed chunk, not the 0.5 GB


def test_a_truncated_stream_is_still_reported_as_truncated(tmp_path):
    data = (np.random.default_rng(0).random((40, 40, 10)) * 100).astype(np.float32)
    blob = gzip.compress(nib.Nifti1Image(data, np.eye(4)).to_bytes())
    path = tmp_path / "cut_T2w.nii.gz"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DeepsegError, match="cannot be read .*the file may be truncated"):
        load_volume(path, "T2w")


def test_a_header_extension_claiming_gigabytes_is_refused(tmp_path):
    header = nib.Nifti1Image(np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.eye(4)).header
    header["vox_offset"] = 368  # room for one 16-byte extension, which claims 2 GB
    extension = np.array([2**31 - 16, 6], "<i4").tobytes() + bytes(8)
    path = tmp_path / "ext_T2w.nii.gz"
    path.write_bytes(gzip.compress(header.binaryblock + b"\1\0\0\0" + extension + bytes(1 << 16)))
    with pytest.raises(DeepsegError, match=r"is not a readable NIfTI \(a header extension declares 2147483632 bytes"):
        load_volume(path, "T2w")


def test_the_memory_limit_is_settable(tmp_path, monkeypatch):
    t2, _ = write_case(tmp_path)
    monkeypatch.setenv(limits.ENV_MEMORY, "0.001")
    with pytest.raises(DeepsegError, match=r"over the limit of 0\.0 GB"):
        load_volume(t2, "T2w")
    monkeypatch.setenv(limits.ENV_MEMORY, "nan")
    with pytest.raises(DeepsegError, match="DEEPSEG_IMSCT_MAX_MEMORY_GB is 'nan', not a number of GB above 0"):
        load_volume(t2, "T2w")


@pytest.mark.parametrize("loc_min, where", [(1000.0, "the whole field of view: no spinal cord was found"),
                                            (0.0, "around the spinal cord")])
def test_stage_2_crop_is_estimated_before_it_is_made(tmp_path, monkeypatch, loc_min, where):
    """A model with tiny voxels (0.1 mm), around the cord or on the no-cord fallback."""
    predictor = Predictor(registry=load_registry(write_registry(tmp_path / "m", seg_spacing=(0.1, 0.1, 0.1),
                                                                loc_min_volume_cm3=loc_min)))
    t2, t1 = write_case(tmp_path / "in")
    monkeypatch.setenv(limits.ENV_MEMORY, "0.5")  # the crop around the cord: ~1.2 GB
    with pytest.raises(DeepsegError, match=rf"segmenter's crop of T2w .* \({where}\) on its 0\.1x0\.1x0\.1 mm grid has .* over the limit"):
        predictor.run_files(t2, t1, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ----------------------------------------------------------------------------- arguments


def _command(args: list[str], registry: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEEPSEG_IMSCT_REGISTRY": str(registry)}
    return subprocess.run([sys.executable, "-m", "deepseg_imsct.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("option, message", [
    (["-threads", "99999999999"], "-threads must be from 0 to 1024 (0 lets ONNX Runtime use the physical cores)"),
    (["-remove-small", "1e400cm3"], "-remove-small: 1e400cm3 is not a volume from 0 to 1000 cm³"),
    (["-remove-small", "edema=1e999mm3"], "-remove-small: 1e999mm3 is not a volume from 0 to 1000 cm³"),
])
def test_out_of_range_options_are_one_line_and_exit_2_in_a_real_process(tmp_path, registry_path, option, message):
    t2, t1 = write_case(tmp_path)
    done = _command(["-i", str(t2), str(t1), *option], registry_path)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"imsct_deepseg: error: {message}"]


@pytest.mark.parametrize("bad", [np.zeros((20, 20, 6)), b"sub_T2w.nii.gz", None, 3])
def test_the_python_api_refuses_what_is_not_a_path_or_an_image(predictor, tmp_path, registry_path, bad):
    t2, t1 = write_case(tmp_path)
    with pytest.raises(DeepsegError, match="^T2w input is .*, not a file path or an image"):
        predictor(bad, t1)
    with pytest.raises(DeepsegError, match="^T1w input is .*, not a file path: give the NIfTI file's path"):
        predictor.run_files(t2, bad, tmp_path / "out")
    with pytest.raises(DeepsegError, match="^T2w input is .*, not a file path"):
        segment_files(bad, t1, registry=load_registry(registry_path))
    if bad is not None:
        with pytest.raises(DeepsegError, match="^out_dir: .* is not a folder path"):
            segment_files(t2, t1, out_dir=bad, registry=load_registry(registry_path))
    with pytest.raises(DeepsegError, match="^T2w input is a file name with a NUL character"):
        predictor.run_files(str(t2) + "\0", t1)


def test_task_run_checks_its_mappings(tmp_path, registry_path, monkeypatch):
    monkeypatch.setenv("DEEPSEG_IMSCT_REGISTRY", str(registry_path))
    t2, t1 = write_case(tmp_path)
    for inputs in ({"t2": t2}, None, [t2, t1]):
        with pytest.raises(DeepsegError, match="^Task.run: inputs must map each of t2 t1 to a file path"):
            TUMOR_EDEMA_CAVITY.run(inputs)
    with pytest.raises(DeepsegError, match="^Task.run: params must map"):
        TUMOR_EDEMA_CAVITY.run({"t2": t2, "t1": t1}, ["soft"])
    with pytest.raises(DeepsegError, match="^T1w input is a numpy array"):
        TUMOR_EDEMA_CAVITY.run({"t2": t2, "t1": np.zeros(3)})


# ----------------------------------------------------------------------------- contrasts


def test_csf_around_the_cord_confirms_the_order_with_one_localizer_pass(predictor, monkeypatch):
    """A localizer that finds the true cord (``true_cord``) on a phantom with CSF around it."""
    calls = true_cord(monkeypatch)
    t2, t1 = cord_phantoms()
    assert predictor(t2, t1).cord_found and len(calls) == 1
    with pytest.raises(DeepsegError, match=r"the inputs look swapped: .* give the T2w first, or add -c t1 t2"):
        predictor(t1, t2)
    assert len(calls) == 3  # the first scan's cord did not confirm that order: the second's was sought


def test_a_copy_of_the_t2w_given_as_t1w_is_refused(predictor, tmp_path):
    t2, _ = write_case(tmp_path)
    copy = tmp_path / "copy_T1w.nii"
    copy.write_bytes(gzip.decompress(t2.read_bytes()))  # same voxels, another file and format
    with pytest.raises(DeepsegError, match="hold the same voxel data"):
        predictor.run_files(t2, copy, tmp_path / "out")


REAL_PAIRS = {
    "testing_data": (REPO / "testing_data/sub-test01/anat/sub-test01_T2w.nii.gz",
                     REPO / "testing_data/sub-test01/anat/sub-test01_T1w.nii.gz"),
    "sct_testing_data": (shared_data() / "real/sct_testing_data/t2/t2.nii.gz",
                         shared_data() / "real/sct_testing_data/t1/t1w.nii.gz"),
}


@pytest.fixture(scope="module")
def shipped_localizer():
    return Predictor(offline=True).localizer


@pytest.mark.parametrize("name", sorted(REAL_PAIRS))
def test_real_pairs_pass_the_contrast_check_and_are_refused_swapped(name, shipped_localizer):
    paths = REAL_PAIRS[name]
    if not all(p.exists() for p in paths):
        pytest.skip(f"{paths[0].parent} is absent (shared data not available here)")
    t2, t1 = (load_volume(p, role) for p, role in zip(paths, ("T2w", "T1w")))
    block = localizer_block(t2.grid, shipped_localizer.spec)
    t2_block, t1_block = on_block(t2, block), on_block(t1, block)
    cord = localize(t2, t1, t2_block, block, shipped_localizer)
    assert cord is not None and csf_evidence(cord.mask, t2_block, t1_block)[0] > 0.3  # margin 0.2
    t1_grid = localizer_block(t1.grid, shipped_localizer.spec)
    with pytest.raises(DeepsegError, match="the inputs look swapped"):
        localize(t1, t2, on_block(t1, t1_grid), t1_grid, shipped_localizer)
    cord_t2 = find_cord(on_block(t2, t1_grid), t1_grid, shipped_localizer)
    assert csf_evidence(cord_t2, on_block(t1, t1_grid), on_block(t2, t1_grid))[1] > 0.3


# ----------------------------------------------------------------------------- privacy


def test_outputs_carry_no_header_extension_or_text_of_the_inputs(predictor, tmp_path):
    t2_image, t1_image, _ = synthetic.case()
    t2_image.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"(0010,0010) PatientName DOE^JOHN"))
    for field in PRIVATE_TEXT_FIELDS:
        t2_image.header[field] = b"DOE"
    t2_image.header.set_intent("t test", (3,), name="DOE")
    (tmp_path / "in").mkdir()
    nib.save(t2_image, tmp_path / "in" / "s_T2w.nii.gz")
    nib.save(t1_image, tmp_path / "in" / "s_T1w.nii.gz")
    paths = predictor.run_files(tmp_path / "in" / "s_T2w.nii.gz", tmp_path / "in" / "s_T1w.nii.gz", tmp_path / "out", qc=tmp_path / "qc")
    for path in [paths["stats"], paths["stats"].with_suffix(".json")]:
        assert b"DOE" not in path.read_bytes(), path
    for path in (p for p in paths.values() if p.name.endswith(".nii.gz")):
        raw = gzip.decompress(path.read_bytes())
        assert b"DOE" not in raw, path
        header = nib.load(path).header
        assert len(header.extensions) == 0 and header.get_intent()[0] == "none"
