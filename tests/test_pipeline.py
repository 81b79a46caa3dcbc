"""The cascade end to end with analytic ONNX models: geometry, outputs, failure modes."""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepseg_imsct import outputs
from deepseg_imsct.errors import DeepsegError
from deepseg_imsct.pipeline import Predictor
from deepseg_imsct.registry import load_registry

import synthetic
from onnx_models import write_registry

ORIENTATIONS = [("PSR", (0.8, 0.8, 3.0), (160, 200, 14)), ("RAS", (3.0, 0.7, 0.9), (14, 180, 180)),
                ("LPI", (3.5, 0.6, 0.6), (12, 210, 260)), ("SAL", (1.0, 1.0, 2.5), (150, 120, 16))]


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    folder = tmp_path_factory.mktemp("models")
    return Predictor(registry=load_registry(write_registry(folder)))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def centroid_mm(img: nib.Nifti1Image) -> np.ndarray:
    idx = np.argwhere(np.asanyarray(img.dataobj) > 0).mean(axis=0)
    return img.affine[:3, :3] @ idx + img.affine[:3, 3]


@pytest.mark.parametrize("axcodes,zooms,shape", ORIENTATIONS)
def test_masks_are_on_the_t2w_grid_and_right_in_scanner_space(predictor, axcodes, zooms, shape):
    t2, t1, truth = synthetic.case(axcodes, zooms, shape)
    result = predictor(t2, t1)
    assert set(result.masks) == {"tumor", "edema", "cavity", "whole-tumor"}
    for img in [*result.masks.values(), result.cord, result.box]:
        assert img.shape == t2.shape
        np.testing.assert_array_equal(img.affine, t2.affine)
        assert img.get_data_dtype() == np.uint8
        assert int(img.header["qform_code"]) == int(t2.header["qform_code"])
        assert int(img.header["sform_code"]) == int(t2.header["sform_code"])
    tumor = np.asanyarray(result.masks["tumor"].dataobj) > 0
    assert dice(tumor, truth) > 0.7  # the analytic model thresholds low: partial volume dilates a little
    np.testing.assert_allclose(centroid_mm(result.masks["tumor"]), synthetic.TUMOR_CENTRE_MM, atol=1.0)
    assert result.cord_found
    box = np.asanyarray(result.box.dataobj) > 0
    assert box[truth].all()  # the crop contains the lesion
    assert list(result.timings) == ["resample", "localize", "crop", "segment", "resample_back", "postprocess", "stats"]
    voxel_mm3 = float(np.prod(zooms))
    assert result.stats["Classes"]["tumor"]["volume_mm3"] == pytest.approx(tumor.sum() * voxel_mm3, abs=1e-3)
    assert result.stats["Classes"]["tumor"]["n_components"] == 1 and result.stats["Cord"]["found"]


def test_each_intermediate_is_computed_once(predictor, monkeypatch):
    """One localizer call per case, and each input resampled onto the localizer's block once."""
    from deepseg_imsct import localize, pipeline

    blocks, calls = [], []
    real_on_block, real_localizer = localize.on_block, predictor.localizer

    def on_block(volume, block, spec=None):
        blocks.append(volume.name)
        return real_on_block(volume, block, spec)

    class Counting:
        spec = real_localizer.spec

        def __call__(self, x):
            calls.append(x.shape)
            return real_localizer(x)

    for module in (localize, pipeline):
        monkeypatch.setattr(module, "on_block", on_block)
    monkeypatch.setattr(predictor, "localizer", Counting())
    t2, t1, _ = synthetic.case()
    assert predictor(t2, t1).cord_found
    # two localizer calls: the T2w, then the T1w, since this phantom has no CSF around the cord to
    # confirm the contrast order (contrast_order.check_order; with CSF: one call, tests/test_inputs_safety.py)
    assert len(calls) == 2 and len(blocks) == 2


def test_t1w_on_its_own_grid_gives_the_same_masks(predictor):
    t2, t1_same, _ = synthetic.case()
    other_affine = synthetic.sagittal_affine("RAS", (2.5, 0.5, 0.6), (20, 300, 300), centre=(1.0, -3.0, 5.0))
    _, t1_other, _ = synthetic.case(t1_grid=((20, 300, 300), other_affine))
    a = np.asanyarray(predictor(t2, t1_same).masks["tumor"].dataobj) > 0
    b = np.asanyarray(predictor(t2, t1_other).masks["tumor"].dataobj) > 0
    assert dice(a, b) > 0.85


def test_fields_of_view_that_do_not_overlap_are_refused(predictor):
    t2, _, _ = synthetic.case()
    far = synthetic.sagittal_affine("PSR", (0.8, 0.8, 3.0), (160, 200, 14), centre=(0.0, 0.0, 400.0))
    _, t1, _ = synthetic.case(t1_grid=((160, 200, 14), far))
    with pytest.raises(DeepsegError, match="overlap on only 0%"):
        predictor(t2, t1)


def test_no_cord_found_warns_and_segments_the_whole_field_of_view(tmp_path, caplog):
    """A localizer whose cord components are all implausibly small (< 1000 cm³ here) finds none."""
    predictor = Predictor(registry=load_registry(write_registry(tmp_path, loc_min_volume_cm3=1000.0)))
    t2, t1, _ = synthetic.case()
    with caplog.at_level(logging.WARNING):
        result = predictor(t2, t1)
    assert not result.cord_found and "found no spinal cord" in caplog.text
    assert (np.asanyarray(result.box.dataobj) > 0).all()
    assert np.asanyarray(result.masks["tumor"].dataobj).sum() > 0


def test_soft_output_is_probabilities(predictor):
    t2, t1, truth = synthetic.case()
    post = predictor.postprocessing(soft=True)
    prob = np.asanyarray(predictor(t2, t1, post).masks["tumor"].dataobj)
    assert prob.dtype == np.float32 and prob.min() >= 0 and prob.max() <= 1
    assert prob[truth].mean() > 0.5 > prob[~truth].mean()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_case(folder: Path, **kwargs) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    t2, t1, _ = synthetic.case(**kwargs)
    nib.save(t2, folder / "sub-01_T2w.nii.gz")
    nib.save(t1, folder / "sub-01_T1w.nii.gz")
    return folder / "sub-01_T2w.nii.gz", folder / "sub-01_T1w.nii.gz"


def test_run_files_writes_named_outputs_with_sidecars_and_leaves_inputs_alone(predictor, tmp_path):
    t2, t1 = write_case(tmp_path / "in")
    before = (sha(t2), sha(t1))
    paths = predictor.run_files(t2, t1, qc=tmp_path / "qc")
    assert (sha(t2), sha(t1)) == before
    names = sorted(p.name for p in (tmp_path / "in").iterdir() if p.name != outputs.LOCK_NAME)
    expected = [f"sub-01_T2w_{k}.{e}" for k in ("seg-cavity", "seg-edema", "seg-tumor", "seg-whole-tumor") for e in ("json", "nii.gz")]
    assert names == sorted(expected + ["sub-01_T1w.nii.gz", "sub-01_T2w.nii.gz", "sub-01_T2w_stats.json", "sub-01_T2w_stats.tsv"])
    assert {p.name for p in (tmp_path / "qc").glob("*.nii.gz")} == {"sub-01_T2w_seg-cord.nii.gz", "sub-01_T2w_cropbox.nii.gz"}
    stats = json.loads((tmp_path / "in" / "sub-01_T2w_stats.json").read_text())
    assert stats["Statistics"] == paths.stats and stats["OutputSha256"] == sha(paths["stats"])
    header, row = paths["stats"].read_text().splitlines()
    columns = dict(zip(header.split("\t"), row.split("\t")))
    assert columns["subject"] == "sub-01_T2w" and float(columns["tumor_volume_mm3"]) == paths.stats["Classes"]["tumor"]["volume_mm3"] > 0
    sidecar = json.loads(paths["seg-tumor"].with_name("sub-01_T2w_seg-tumor.json").read_text())
    assert sidecar["GeneratedBy"][0]["Models"]["seg"]["version"] == "1.0"
    assert sidecar["Postprocessing"]["classes"]["edema"]["threshold"] == 0.5
    assert sidecar["Sources"]["T1w"] == str(t1)
    assert nib.load(paths["seg-tumor"]).get_fdata().sum() > 0
    umask = __import__("os").umask(0o022)
    __import__("os").umask(umask)
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~umask for p in paths.values())  # not mkstemp's 0600


def test_a_failing_write_leaves_no_partial_file_and_earlier_outputs_intact(predictor, tmp_path, monkeypatch):
    t2, t1 = write_case(tmp_path)
    out = tmp_path / "out"
    first = predictor.run_files(t2, t1, out)
    before = {p: sha(p) for p in out.iterdir()}
    calls = {"n": 0}
    real = nib.Nifti1Image.to_bytes

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(nib.Nifti1Image, "to_bytes", flaky)
    post = predictor.postprocessing(threshold=0.9)
    with pytest.raises(DeepsegError, match="No space left on device.*nothing was written"):
        predictor.run_files(t2, t1, out, post)
    assert {p: sha(p) for p in out.iterdir()} == before
    assert set(first.values()) <= set(out.iterdir())


def test_constant_image_is_refused(predictor):
    t2, t1, _ = synthetic.case()
    flat = nib.Nifti1Image(np.full(t2.shape, 50, np.int16), t2.affine)
    with pytest.raises(DeepsegError, match="T2w image is constant \\(every voxel is 50\\)"):
        predictor(flat, t1)


def test_same_file_twice_is_refused(predictor, tmp_path):
    t2, _ = write_case(tmp_path)
    with pytest.raises(DeepsegError, match="same file"):
        predictor.run_files(t2, t2)


def test_swapped_contrasts_are_detected_from_csf_around_the_cord():
    from deepseg_imsct.contrast_order import looks_swapped

    shape = (40, 30, 20)
    ii, jj, kk = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    radius = np.hypot(jj - 15, kk - 10)
    cord, csf = radius <= 3, (radius > 3) & (radius <= 6)

    def block(cord_value, csf_value):
        data = np.full(shape, 200.0, np.float32)
        data[cord], data[csf] = cord_value, csf_value
        data[:, :, :2] = np.nan  # outside the field of view: ignored
        return data

    t2, t1 = block(300, 800), block(300, 50)
    assert not looks_swapped(cord, t2, t1)
    assert looks_swapped(cord, t1, t2)
    assert not looks_swapped(cord, t2, t2) and not looks_swapped(cord, t1, t1)  # both must be reversed
    assert not looks_swapped(np.ones(shape, bool), t1, t2)  # no shell around the cord: no verdict


def _cord_with_cavity(shape=(40, 30, 20)):
    """A cord in CSF with a cavity inside: (cord mask, cavity mask, T2w block, T1w block)."""
    ii, jj, kk = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    radius = np.hypot(jj - 15, kk - 10)
    cord, csf = radius <= 4, (radius > 4) & (radius <= 7)
    cavity = (radius <= 2) & (ii > 10) & (ii < 30)
    t2, t1 = np.full(shape, 200.0, np.float32), np.full(shape, 200.0, np.float32)
    t2[cord], t2[csf], t2[cavity] = 300, 800, 900
    t1[cord], t1[csf], t1[cavity] = 300, 50, 40
    return cord, cavity, t2, t1


def test_a_cavity_found_on_the_t1w_does_not_make_a_correct_pair_look_swapped():
    """Phantom 200032 (generator 2.0, test split) was refused as swapped: the localizer found its
    cavity on the T1w, and a cavity is brighter than its shell on T2w and darker on T1w."""
    from deepseg_imsct.io import as_volume
    from deepseg_imsct.contrast_order import check_order, looks_swapped

    cord, cavity, t2, t1 = _cord_with_cavity()
    assert looks_swapped(cavity, t2, t1)  # the measure alone cannot tell a cavity from a swap
    t2v, t1v = (as_volume(nib.Nifti1Image(a, np.eye(4)), r) for a, r in ((t2, "T2w"), (t1, "T1w")))
    check_order(t2v, t1v, cord, cavity, t2, t1)  # the T2w's cord is larger: accepted
    check_order(t2v, t1v, cord, None, t2, t1)
    with pytest.raises(DeepsegError, match="look swapped"):  # no cord on the T2w: the T1w's decides
        check_order(t2v, t1v, None, cavity, t2, t1)
    with pytest.raises(DeepsegError, match="look swapped"):  # really swapped: the 'T2w' is the T1w
        check_order(t1v, t2v, cavity, cord, t1, t2)
    with pytest.raises(DeepsegError, match="look swapped"):
        check_order(t1v, t2v, None, cord, t1, t2)


def test_the_t2w_cord_found_wider_on_the_t1w_does_not_make_a_correct_pair_look_swapped():
    """Healthy phantom 100202 (tight sac, bright-cord T1w) and test phantom 200009 were refused:
    the localizer found on the T1w a region larger than the T2w's cord and 41-44 % on it, whose
    shell reads swapped. Here that region is the whole sac (cord + CSF, a third of it cord)."""
    from deepseg_imsct.io import as_volume
    from deepseg_imsct.contrast_order import OTHER_OVERLAP, check_order, looks_swapped

    cord, cavity, t2, t1 = _cord_with_cavity()
    sac = cord | (t2 == 800)
    assert looks_swapped(sac, t2, t1) and sac.sum() > cord.sum()
    assert OTHER_OVERLAP * sac.sum() <= cord.sum()
    t2v, t1v = (as_volume(nib.Nifti1Image(a, np.eye(4)), r) for a, r in ((t2, "T2w"), (t1, "T1w")))
    check_order(t2v, t1v, cord, sac, t2, t1)  # mostly the T2w's own cord, seen wider: accepted
    with pytest.raises(DeepsegError, match="look swapped"):  # found on the T1w only: refused
        check_order(t2v, t1v, cord & (np.arange(t2.shape[0]) < 3)[:, None, None], sac, t2, t1)


@pytest.mark.parametrize("degrees", [12.0, -20.0])
def test_oblique_acquisitions_keep_the_tumor_where_it_is(predictor, degrees):
    """A T2w/T1w pair acquired obliquely (rotated about R-L and A-P) on the same anatomy."""
    theta = np.deg2rad(degrees)
    rx, ry = synthetic.rotation(theta, 0), synthetic.rotation(-theta / 2, 1)
    shape = (160, 200, 14)
    affine = ry @ rx @ synthetic.sagittal_affine("PSR", (0.8, 0.8, 3.0), shape)
    t2, t1 = synthetic.render(shape, affine, "t2"), synthetic.render(shape, affine, "t1", seed=1)
    result = predictor(t2, t1)
    np.testing.assert_allclose(result.masks["tumor"].affine, affine, atol=1e-5)  # NIfTI stores float32
    np.testing.assert_allclose(centroid_mm(result.masks["tumor"]), synthetic.TUMOR_CENTRE_MM, atol=1.5)


@pytest.mark.parametrize("zooms,shape", [((0.3, 0.3, 3.0), (430, 530, 14)), ((1.0, 1.0, 10.0), (130, 160, 5))],
                         ids=["0.3mm-in-plane", "10mm-slices"])
def test_extreme_voxel_sizes(predictor, zooms, shape):
    t2, t1, truth = synthetic.case("PSR", zooms, shape)
    result = predictor(t2, t1)
    tumor = np.asanyarray(result.masks["tumor"].dataobj) > 0
    assert tumor.shape == shape and tumor.any()
    np.testing.assert_allclose(centroid_mm(result.masks["tumor"]), synthetic.TUMOR_CENTRE_MM, atol=zooms[2] / 2 + 0.5)


@settings(max_examples=8, deadline=None)
@given(
    t2_axes=st.sampled_from(["PSR", "RAS", "LPI", "SAL", "ASR", "IRP"]),
    t1_axes=st.sampled_from(["PSR", "RAS", "LAS", "PIL"]),
    inplane=st.floats(0.5, 1.0),
    slice_mm=st.floats(2.0, 5.0),
    qform_code=st.sampled_from([0, 1, 2]),
)
def test_any_header_geometry_gives_masks_on_the_t2w_grid(predictor, t2_axes, t1_axes, inplane, slice_mm, qform_code):
    """Random orientations, axis orders, voxel sizes and qform codes for both images."""
    def grid(axes, zooms_by_axis):
        zooms = tuple(zooms_by_axis[c] for c in axes)
        fov = {"R": 42.0, "L": 42.0, "A": 110.0, "P": 110.0, "S": 170.0, "I": 170.0}
        shape = tuple(int(round(fov[c] / z)) for c, z in zip(axes, zooms))
        return shape, synthetic.sagittal_affine(axes, zooms, shape)

    sizes = {"R": slice_mm, "L": slice_mm, "A": inplane, "P": inplane, "S": inplane, "I": inplane}
    (s2, a2), (s1, a1) = grid(t2_axes, sizes), grid(t1_axes, {**sizes, "R": 3.0, "L": 3.0})
    t2 = synthetic.render(s2, a2, "t2", qform_code=qform_code)
    t1 = synthetic.render(s1, a1, "t1", seed=1)
    result = predictor(t2, t1)
    for img in result.masks.values():
        assert img.shape == s2 and int(img.header["qform_code"]) == qform_code
        np.testing.assert_allclose(img.affine, t2.affine, atol=1e-5)
    np.testing.assert_allclose(centroid_mm(result.masks["tumor"]), synthetic.TUMOR_CENTRE_MM, atol=slice_mm / 2 + 1.0)


def test_cord_predicted_in_the_padding_outside_the_field_of_view_is_ignored():
    """A small scan sits in the middle of the localizer's block: a large false 'cord' in the zero
    padding must not win over the real one inside the field of view (seen on a real T1w crop)."""
    from deepseg_imsct.grid import resample
    from deepseg_imsct.io import as_volume
    from deepseg_imsct.localize import find_cord, localizer_block, on_block

    spec = load_registry().model("imsct_localizer")
    affine = np.diag([-1.0, 1.0, 1.0, 1.0])  # 60x50x40 mm, 1 mm voxels
    image = nib.Nifti1Image(np.random.default_rng(0).random((40, 50, 60)).astype(np.float32) + 1, affine)
    volume = as_volume(image, "T2w")

    class Fake:
        def __init__(self):
            self.spec = spec

        def __call__(self, x):
            prob = np.zeros(x.shape[:1] + (1,) + x.shape[2:], np.float32)
            fov = x[0, 0] != 0
            prob[0, 0, :20, :20, :] = 1.0  # a big blob in a corner of the block: padding only
            sl = tuple(slice(int(i.min()), int(i.min()) + 4) for i in np.nonzero(fov))
            prob[(0, 0) + sl] = 1.0  # a small one inside the field of view
            return prob

    block = localizer_block(volume.grid, spec)
    cord = find_cord(on_block(volume, block), block, Fake())
    assert cord is not None and cord.shape == block.shape
    inside = ~np.isnan(resample(volume.data, volume.grid, block, order=0, fill=np.nan))
    assert cord.sum() == 4 ** 3 and inside[cord].all()  # the small blob, whole; none of the big one


# ------------------------------------------------------------------ back to the native grid, restricted


def _oblique_native(shape=(70, 60, 12), zooms=(0.7, 0.8, 3.0), degrees=17.0):
    """A PSR T2w grid tilted by ``degrees`` about the R-L axis."""
    from deepseg_imsct.grid import Grid

    return Grid(shape, synthetic.rotation(np.deg2rad(degrees), 0) @ synthetic.sagittal_affine("PSR", zooms, shape))


def _crop_of(native, rotate_degrees: float = 0.0):
    """A 1x1x2 mm crop of ``native``'s working grid; rotated (general resampling path) if asked."""
    from deepseg_imsct.grid import Grid, working_grid

    work = working_grid(native, (1.0, 1.0, 2.0))
    crop = work.subgrid((4, -3, 2), (40, 50, 14))
    if rotate_degrees:
        crop = Grid(crop.shape, synthetic.rotation(np.deg2rad(rotate_degrees), 2) @ crop.affine)
    return crop


def _blobs(shape, spheres) -> np.ndarray:
    """Probabilities on a grid: max over soft balls ((centre voxel), radius in voxels, peak), in [0, 1]."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(np.float32)
    prob = np.zeros(shape, np.float32)
    for centre, radius, peak in spheres:
        dist = np.linalg.norm(idx - np.asarray(centre, np.float32), axis=-1)
        prob = np.maximum(prob, peak * np.clip(1.5 - dist / radius, 0, 1).astype(np.float32))
    return prob


def _to_native(values: np.ndarray, src, native, order: int = 1) -> np.ndarray:
    """Reference: (C, *src.shape) ``values`` resampled onto the whole of ``native`` (0 outside ``src``),
    by the one resampling function, with no footprint or reach box."""
    from deepseg_imsct.grid import resample

    return resample(values, src, native, order=order, fill=0)


@pytest.mark.parametrize("rotate", [0.0, 25.0], ids=["separable", "general"])
def test_resample_back_around_the_reach_box_equals_the_full_resample(rotate):
    """On an oblique T2w: restricted to the native voxels the threshold can reach, the
    probabilities equal the whole-grid resampling there, and the masks everywhere."""
    from deepseg_imsct.grid import crop, uncrop
    from deepseg_imsct.resample_back import native_block, reach_box

    native = _oblique_native()
    grid = _crop_of(native, rotate)
    prob = _blobs(grid.shape, [((20, 25, 7), 5.0, 0.95), ((8, 10, 3), 2.0, 0.6), ((30, 40, 10), 3.0, 0.45)])
    full = _to_native(prob[None], grid, native)[0]
    for threshold in (0.3, 0.5, 0.9, 0.99):
        box = reach_box(prob, threshold)
        block, start = native_block(prob, grid, native, box=box)
        assert block.size < full.size
        np.testing.assert_allclose(block, crop(full, start, block.shape), atol=1e-6)
        np.testing.assert_array_equal(uncrop(block >= threshold, start, native.shape), full >= threshold)
        assert (full >= threshold).any() == (threshold < 0.95)
    assert reach_box(prob, 0.99)[1] == (0, 0, 0)


@pytest.mark.parametrize("rotate", [0.0, 25.0], ids=["separable", "general"])
def test_class_images_equal_post_processing_on_the_whole_grid(rotate):
    """Hole filling and small-object removal on the reach block give the whole-grid result."""
    from deepseg_imsct.io import Volume
    from deepseg_imsct.pipeline import class_images
    from deepseg_imsct.postprocess import ClassPost, PostprocessConfig, postprocess

    native = _oblique_native()
    grid = _crop_of(native, rotate)
    shell = _blobs(grid.shape, [((20, 25, 7), 9.0, 0.9)]) * (1 - _blobs(grid.shape, [((20, 25, 7), 3.0, 1.0)]))
    specks = _blobs(grid.shape, [((5, 6, 2), 1.0, 0.8), ((34, 44, 11), 1.5, 0.7), ((10, 40, 6), 4.0, 0.9)])
    probs = np.stack([shell, specks, np.zeros(grid.shape, np.float32)])
    post = PostprocessConfig({"shell": ClassPost(0.5, True, 0.0), "specks": ClassPost(0.5, True, 0.05),
                              "none": ClassPost(0.5, True, 0.0)})
    t2 = Volume(np.ones(native.shape, np.float32), native, nib.Nifti1Image(np.zeros(native.shape, np.int16), native.affine))
    timings: dict[str, float] = {}
    images = class_images(probs, grid, t2, tuple(post.classes), post, timings)
    assert set(timings) == {"resample_back", "postprocess"}
    full = _to_native(probs, grid, native)
    for i, name in enumerate(post.classes):
        expected = postprocess(full[i], post.classes[name], native.voxel_volume_mm3)
        got = np.asanyarray(images[name].dataobj)
        assert got.dtype == np.uint8 and got.shape == native.shape
        np.testing.assert_array_equal(got, expected)
    filled = postprocess(full[0], ClassPost(0.5, False, 0.0), 1.0)
    assert np.asanyarray(images["shell"].dataobj).sum() > filled.sum()  # the hole was there, and filled
    removed = postprocess(full[1], ClassPost(0.5, True, 0.0), 1.0)
    assert 0 < np.asanyarray(images["specks"].dataobj).sum() < removed.sum()  # some specks were dropped


def test_localization_masks_equal_their_whole_grid_definition():
    from deepseg_imsct.grid import working_grid
    from deepseg_imsct.localize import Cord
    from deepseg_imsct.resample_back import localization_masks

    native = _oblique_native()
    block = working_grid(native, (2.0, 2.0, 4.0))
    cord = np.zeros(block.shape, bool)
    cord[5:20, 10:14, 2:4] = True
    crop_grid = _crop_of(native)
    cord_native, box_native = localization_masks(Cord(cord, block), crop_grid, native)
    np.testing.assert_array_equal(cord_native, _to_native(cord[None].astype(np.float32), block, native)[0] >= 0.5)
    np.testing.assert_array_equal(box_native, _to_native(np.ones((1, *crop_grid.shape), np.uint8), crop_grid, native, order=0)[0] > 0)
    assert cord_native.any() and box_native.any() and not box_native.all()
    assert not localization_masks(None, crop_grid, native)[0].any()


def test_an_exclusive_model_gives_disjoint_classes_whose_union_is_the_whole_tumor(tmp_path):
    """A softmax model (registry output 'exclusive'): classes post-processed together, whole tumor
    = their union exactly, in any orientation; the tumor is still where the analytic model puts it."""
    exclusive = Predictor(registry=load_registry(write_registry(tmp_path, exclusive=True)))
    assert exclusive.segmenter.spec.output == "exclusive"
    for axcodes, zooms, shape in ORIENTATIONS[:2]:
        t2, t1, truth = synthetic.case(axcodes, zooms, shape)
        m = {c: np.asanyarray(img.dataobj) > 0 for c, img in exclusive(t2, t1).masks.items()}
        assert np.array_equal(m["whole-tumor"], m["tumor"] | m["edema"] | m["cavity"])
        assert (m["tumor"].astype(int) + m["edema"] + m["cavity"]).max() == 1
        assert dice(m["tumor"], truth) > 0.7
