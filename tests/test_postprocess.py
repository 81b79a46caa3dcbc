"""Post-processing: thresholds, 3D hole filling, removal of small objects by physical volume."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepseg_imsct.grid import bounding_box, crop, uncrop
from deepseg_imsct.postprocess import ClassPost, binarize, fill_holes, postprocess, postprocess_exclusive, remove_small
from deepseg_imsct.primitives import connected_components


def test_binarize_keeps_values_at_the_threshold():
    prob = np.array([0.2, 0.5, 0.50001, 0.49999, 1.0], np.float32)
    np.testing.assert_array_equal(binarize(prob, 0.5), [False, True, True, False, True])


def test_fill_holes_fills_enclosed_cavities_only():
    shell = np.zeros((9, 9, 9), bool)
    shell[1:8, 1:8, 1:8] = True
    shell[3:6, 3:6, 3:6] = False  # enclosed hole
    filled = fill_holes(shell)
    assert filled[4, 4, 4] and filled.sum() == 7**3
    open_cup = np.zeros((9, 9, 9), bool)
    open_cup[1:8, 1:8, 1:8] = True
    open_cup[3:6, 3:6, 3:9] = False  # tunnel to the border: not a hole
    np.testing.assert_array_equal(fill_holes(open_cup), open_cup)


def test_fill_holes_in_3d_not_per_slice():
    tube = np.zeros((9, 9, 9), bool)
    tube[1:8, 1:8, :] = True
    tube[3:6, 3:6, :] = False  # hole in every axial slice, open at both ends in 3D
    np.testing.assert_array_equal(fill_holes(tube), tube)


@pytest.mark.parametrize("zoom", [0.5, 1.0, 2.0])
def test_remove_small_depends_on_physical_volume_not_voxels(zoom):
    """The same two objects (8 mm³ and 216 mm³) at three voxel sizes: the same one survives."""
    n = int(round(40 / zoom))
    mask = np.zeros((n, n, n), bool)
    small, big = int(round(2 / zoom)), int(round(6 / zoom))  # 2 mm and 6 mm cubes
    mask[1 : 1 + small, 1 : 1 + small, 1 : 1 + small] = True
    at = n // 2
    mask[at : at + big, at : at + big, at : at + big] = True
    out = remove_small(mask, min_volume_mm3=100.0, voxel_volume_mm3=zoom**3)
    assert not out[1:3, 1:3, 1:3].any()
    assert out.sum() * zoom**3 == pytest.approx(216.0)


def test_remove_small_keeps_objects_exactly_at_the_limit_and_uses_18_connectivity():
    mask = np.zeros((10, 10, 10), bool)
    mask[1:3, 1:3, 1:3] = True  # 8 voxels
    assert remove_small(mask, 8.0, 1.0).sum() == 8  # not strictly smaller: kept
    assert remove_small(mask, 8.5, 1.0).sum() == 0
    edge = np.zeros((5, 5, 5), bool)
    edge[1, 1, 1] = edge[2, 2, 1] = True  # touch by an edge: one 18-connected object of 2 mm³
    assert remove_small(edge, 2.0, 1.0).sum() == 2
    corner = np.zeros((5, 5, 5), bool)
    corner[1, 1, 1] = corner[2, 2, 2] = True  # touch by a corner only: two objects of 1 mm³
    assert remove_small(corner, 2.0, 1.0).sum() == 0


def test_postprocess_order_binarize_fill_then_remove():
    prob = np.zeros((12, 12, 12), np.float32)
    prob[2:9, 2:9, 2:9] = 0.9
    prob[4:7, 4:7, 4:7] = 0.1  # hole below threshold: filled after binarization
    out = postprocess(prob, ClassPost(0.5, True, 0.3), voxel_volume_mm3=1.0)  # 343 mm³ >= 300 mm³
    assert out.dtype == np.uint8 and out.sum() == 343
    assert postprocess(prob, ClassPost(0.5, False, 0.3), 1.0).sum() == 343 - 27  # unfilled 316 mm³: kept
    assert postprocess(prob, ClassPost(0.5, False, 0.32), 1.0).sum() == 0


def _walled_case(seed: int) -> np.ndarray:
    """A solid block with a cavity (speckled, sometimes tunnelled to the outside) and stray specks."""
    rng = np.random.default_rng(seed)
    shape = (24, 20, 16)
    prob = np.zeros(shape, np.float32)
    lo = rng.integers(1, 8, 3)
    hi = np.minimum(lo + rng.integers(5, 12, 3), shape)
    prob[tuple(slice(a, b) for a, b in zip(lo, hi))] = 0.9
    cavity = tuple(slice(a + 1, b - 1) for a, b in zip(lo, hi))
    prob[cavity] = np.where(rng.random(prob[cavity].shape) < 0.1, 0.9, 0.3).astype(np.float32)
    if rng.random() < 0.5:  # a tunnel from the cavity out through the low face along axis 0
        prob[: lo[0] + 2, (lo[1] + hi[1]) // 2, (lo[2] + hi[2]) // 2] = 0.1
    for _ in range(int(rng.integers(0, 6))):
        prob[tuple(int(rng.integers(0, n)) for n in shape)] = 0.8
    return prob


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    margin=st.integers(0, 2),
    fill=st.booleans(),
    min_voxels=st.sampled_from([0.0, 3.0, 40.0]),
)
def test_post_processing_on_the_bounding_box_equals_the_whole_volume(seed, margin, fill, min_voxels):
    """Outside the mask's bounding box everything is background connected to the border, so the
    box's border acts as the volume's: filling and removal on the box give the whole-volume result."""
    prob = _walled_case(seed)
    post = ClassPost(0.5, fill, min_voxels / 1000)
    expected = postprocess(prob, post, voxel_volume_mm3=1.0)
    start, size = bounding_box(prob >= 0.5, margin=margin)
    got = uncrop(postprocess(crop(prob, start, size), post, 1.0), start, prob.shape)
    np.testing.assert_array_equal(got, expected)


def test_fill_holes_on_empty_and_full_arrays():
    assert fill_holes(np.zeros((0, 3, 3), bool)).shape == (0, 3, 3)
    assert fill_holes(np.ones((3, 3, 3), bool)).all()
    assert not fill_holes(np.zeros((3, 3, 3), bool)).any()


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Two label maps name the same components (a one-to-one map between their label values)."""
    pairs = set(zip(a.ravel().tolist(), b.ravel().tolist()))
    return len(pairs) == len(np.unique(a)) == len(np.unique(b)) and np.array_equal(a == 0, b == 0)


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("connectivity", [1, 2, 3])
def test_connected_components_match_skimage_label(connectivity, order):
    from skimage.measure import label

    mask = np.asarray(np.random.default_rng(connectivity).random((17, 13, 9)) < 0.15, order=order)
    labels, count = connected_components(mask, connectivity)
    want, want_count = label(mask, connectivity=connectivity, return_num=True)
    assert count == want_count > 10
    assert _same_partition(labels, want)


def test_connected_components_fall_back_to_the_public_labeller(monkeypatch):
    import sys

    mask = np.random.default_rng(0).random((9, 8, 7)) < 0.4
    fast = connected_components(mask, 2)
    monkeypatch.setitem(sys.modules, "skimage.measure._ccomp", None)  # the import now raises ImportError
    slow = connected_components(mask, 2)
    assert slow[1] == fast[1] and _same_partition(slow[0], fast[0])


def _exclusive_probs() -> dict[str, np.ndarray]:
    """20^3 maps: a 10^3 lesion, tumor on its left half, edema on its right; one lone cavity voxel."""
    shape = (20, 20, 20)
    p = {c: np.zeros(shape, np.float32) for c in ("tumor", "edema", "cavity", "whole-tumor")}
    p["tumor"][5:15, 5:15, 5:10], p["edema"][5:15, 5:15, 5:10] = 0.6, 0.3
    p["tumor"][5:15, 5:15, 10:15], p["edema"][5:15, 5:15, 10:15] = 0.3, 0.6
    p["tumor"][9, 9, 7] = 0.35  # inside the tumor half: most probable class tumor, below its threshold
    p["edema"][9, 9, 7] = 0.3
    p["cavity"][2, 2, 2] = 0.9  # one voxel: below the cavity's minimum volume
    p["whole-tumor"] = p["tumor"] + p["edema"] + p["cavity"]
    return p


@pytest.mark.parametrize("fill", [True, False])
def test_exclusive_classes_split_the_union_and_the_union_is_exactly_theirs(fill):
    p = _exclusive_probs()
    post = {"tumor": ClassPost(0.5, fill, 0.0), "edema": ClassPost(0.5, fill, 0.0),
            "cavity": ClassPost(0.5, fill, 0.002), "whole-tumor": ClassPost(0.5, True, 0.0)}
    m = {c: v.astype(bool) for c, v in postprocess_exclusive(p, post, "whole-tumor", 1.0).items()}
    expect_tumor = np.zeros((20, 20, 20), bool)
    expect_tumor[5:15, 5:15, 5:10] = True  # (9, 9, 7) too: most probable tumor though under 0.5
    assert np.array_equal(m["tumor"], expect_tumor)
    assert m["edema"].sum() == 500 and m["edema"][5:15, 5:15, 10:15].all()
    assert not m["cavity"].any()  # 1 mm3 < 2 mm3: removed, from the union too
    assert np.array_equal(m["whole-tumor"], m["tumor"] | m["edema"] | m["cavity"])
    assert (m["tumor"].astype(int) + m["edema"] + m["cavity"]).max() == 1


def test_exclusive_split_of_an_uncertain_lesion_no_class_reaches_its_threshold():
    """A softmax unsure between classes: p(whole) 0.9 spread as tumor 0.35, edema 0.3, cavity 0.25.
    Every voxel of the union still goes to a class (the most probable), none is dropped; a class's
    threshold weighs it: edema at 0.25 beats tumor at 0.5 (0.3/0.25 > 0.35/0.5)."""
    shape = (8, 8, 8)
    p = {"tumor": np.full(shape, 0.35, np.float32), "edema": np.full(shape, 0.3, np.float32),
         "cavity": np.full(shape, 0.25, np.float32), "whole-tumor": np.full(shape, 0.9, np.float32)}
    post = {c: ClassPost(0.5, True, 0.0) for c in p}
    m = postprocess_exclusive(p, post, "whole-tumor", 1.0)
    assert m["tumor"].all() and not m["edema"].any() and m["whole-tumor"].all()
    m = postprocess_exclusive(p, post | {"edema": ClassPost(0.25, True, 0.0)}, "whole-tumor", 1.0)
    assert m["edema"].all() and not m["tumor"].any() and m["whole-tumor"].all()


def test_exclusive_union_threshold_and_minimum_volume_decide_where_the_lesion_is():
    p = _exclusive_probs()
    post = {c: ClassPost(0.0, False, 0.0) for c in p}
    m = postprocess_exclusive(p, post | {"whole-tumor": ClassPost(0.95, True, 0.0)}, "whole-tumor", 1.0)
    assert not any(v.any() for v in m.values())  # nothing reaches the union's threshold
    m = postprocess_exclusive(p, post | {"whole-tumor": ClassPost(0.5, True, 0.002)}, "whole-tumor", 1.0)
    assert m["whole-tumor"].sum() == 1000 and not m["cavity"].any()  # the lone voxel is below 2 mm3
