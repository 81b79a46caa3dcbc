"""Tests of the synthetic IMSCT phantom generator (training side: imsct_train.phantoms).

Images are generated at reduced size (``render_scale``) to keep the file fast.
"""
from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training"))

from imsct_train.phantoms import (LABEL_KEYS, SPLITS, case_paths, generate_case, sample_case_params,  # noqa: E402
                                  split_of, split_seeds, write_dataset)
from imsct_train.phantoms.lesions import hard_case_flags  # noqa: E402
from imsct_train.phantoms.reference import builtin_reference, load_reference  # noqa: E402

FAST = {"render_scale": 0.3, "n_slices": 10}
SHARED = Path(os.environ.get("IMSCT_SHARED_DATA", REPO / ".." / "shared" / "data")).resolve()
needs_shared = pytest.mark.skipif(not (SHARED / "labels" / "pam50").is_dir(),
                                  reason=f"shared data not found at {SHARED} (set IMSCT_SHARED_DATA)")


def _arr(img: nib.Nifti1Image) -> np.ndarray:
    return np.asarray(img.dataobj)


@pytest.fixture(scope="module")
def lesion_cases():
    """One case per tumor type with cavity and edema forced, plus a healthy case."""
    out = {}
    for seed, ttype in ((11, "ependymoma"), (12, "astrocytoma"), (13, "hemangioblastoma")):
        out[ttype] = generate_case(seed, tumor_type=ttype, has_cavity=True, has_edema=True, n_lesions=1,
                                   lesion_overrides={"length": 40.0}, **FAST)
    out["none"] = generate_case(14, tumor_type="none", **FAST)
    return out


# --------------------------------------------------------------------------------------- seeds


def test_split_ranges_disjoint_and_split_seeds():
    ranges = [SPLITS[s] for s in ("train", "val", "test", "custom")]
    for i, (a0, a1) in enumerate(ranges):
        for b0, b1 in ranges[i + 1:]:
            assert a1 <= b0 or b1 <= a0
    tr, va, te = split_seeds("train", 50), split_seeds("val", 50), split_seeds("test", 50)
    assert not (set(tr) & set(va) or set(tr) & set(te) or set(va) & set(te))
    assert {split_of(s) for s in tr} == {"train"} and {split_of(s) for s in te} == {"test"}
    assert split_seeds("val", 3, first=100_005) == [100_005, 100_006, 100_007]
    with pytest.raises(ValueError):
        split_seeds("val", 20_000)
    with pytest.raises(ValueError):
        split_seeds("test", 5, first=5)


# ------------------------------------------------------------------------------- determinism


def test_deterministic_by_seed():
    a = generate_case(5, **FAST)
    b = generate_case(5, **FAST)
    c = generate_case(6, **FAST)
    for x, y in ((a.t2w, b.t2w), (a.t1w, b.t1w)):
        np.testing.assert_array_equal(_arr(x), _arr(y))
        np.testing.assert_array_equal(x.affine, y.affine)
    for k in LABEL_KEYS:
        np.testing.assert_array_equal(_arr(a.labels[k]), _arr(b.labels[k]))
    assert a.meta["tumor_type"] == b.meta["tumor_type"]
    assert _arr(a.t2w).shape != _arr(c.t2w).shape or not np.array_equal(_arr(a.t2w), _arr(c.t2w))


def test_params_deterministic_and_overrides_do_not_shift_other_draws():
    p1, p2 = sample_case_params(77), sample_case_params(77)
    assert p1.to_dict() == p2.to_dict()
    p3 = sample_case_params(77, n_slices=12)
    assert p3.t2.n_slices == 12
    assert p3.tumor_type == p1.tumor_type and p3.anatomy == p1.anatomy and p3.contrast == p1.contrast


# ------------------------------------------------------------------------------------ labels


@pytest.mark.parametrize("ttype", ["ependymoma", "astrocytoma", "hemangioblastoma", "none"])
def test_label_consistency(lesion_cases, ttype):
    case = lesion_cases[ttype]
    lab = {k: _arr(case.labels[k]).astype(bool) for k in LABEL_KEYS}
    for k in LABEL_KEYS:
        assert case.labels[k].get_data_dtype() == np.uint8
        assert case.labels[k].shape == case.t2w.shape
        np.testing.assert_allclose(case.labels[k].affine, case.t2w.affine)
    np.testing.assert_array_equal(lab["whole-tumor"], lab["tumor"] | lab["edema"] | lab["cavity"])
    assert not (lab["tumor"] & lab["edema"]).any()
    assert not (lab["tumor"] & lab["cavity"]).any()
    assert not (lab["edema"] & lab["cavity"]).any()
    assert not (lab["whole-tumor"] & ~lab["cord"]).any(), "lesions must lie inside the cord"
    assert lab["cord"].sum() > 100
    if ttype == "none":
        assert not lab["whole-tumor"].any()
    else:
        assert lab["tumor"].any() and lab["cavity"].any() and lab["edema"].any()


def test_lesion_signal_follows_its_type(lesion_cases):
    """Ependymoma: T2 above the cord; cavity: T2 brighter than the tumor core (on average)."""
    case = lesion_cases["ependymoma"]
    t2 = _arr(case.t2w).astype(float)
    lab = {k: _arr(case.labels[k]).astype(bool) for k in LABEL_KEYS}
    cord_only = lab["cord"] & ~lab["whole-tumor"]
    assert t2[lab["tumor"]].mean() > t2[cord_only].mean()
    assert t2[lab["edema"]].mean() > t2[cord_only].mean()


# ---------------------------------------------------------------------------------- geometry


def _check_affine(img: nib.Nifti1Image) -> None:
    aff = img.affine
    assert np.isfinite(aff).all() and abs(np.linalg.det(aff[:3, :3])) > 1e-3
    q, qc = img.get_qform(coded=True)
    s, sc = img.get_sform(coded=True)
    assert qc == 1 and sc == 1
    np.testing.assert_allclose(q, s, atol=1e-4)
    np.testing.assert_allclose(s, aff, atol=1e-4)


def _world(img: nib.Nifti1Image, mask: np.ndarray) -> np.ndarray:
    ijk = np.argwhere(mask)
    return ijk @ img.affine[:3, :3].T + img.affine[:3, 3]


def _inside_grid(img: nib.Nifti1Image, pts: np.ndarray) -> np.ndarray:
    ijk = (pts - img.affine[:3, 3]) @ np.linalg.inv(img.affine[:3, :3]).T
    return np.all((ijk > -0.5) & (ijk < np.asarray(img.shape) - 0.5), axis=1)


@pytest.mark.parametrize("own", [False, True])
def test_geometry_and_t1_t2_overlap(own):
    case = generate_case(21, t1_own_grid=own, tumor_type="ependymoma", **FAST)
    for img in (case.t2w, case.t1w):
        _check_affine(img)
        assert img.get_data_dtype() == np.int16
        assert _arr(img).max() > 100
    if own:
        assert case.t1w.shape != case.t2w.shape or not np.allclose(case.t1w.affine, case.t2w.affine)
    else:
        np.testing.assert_allclose(case.t1w.affine, case.t2w.affine)
    cord = _world(case.t2w, _arr(case.labels["cord"]) > 0)
    assert _inside_grid(case.t1w, cord).mean() > 0.8, "T1w must cover the T2w cord in scanner space"
    # the cord fits the inference working block (512 SI x 256 AP x 64 RL mm)
    ext = cord.max(axis=0) - cord.min(axis=0)
    assert ext[2] < 512 and ext[1] < 256 and ext[0] < 64


def test_orientations_vary():
    codes = {sample_case_params(s).t2.orientation for s in range(60)}
    assert len(codes) > 10
    case = generate_case(3, orientation="PSR", **FAST)
    assert "".join(nib.aff2axcodes(case.t2w.affine)) == "PSR"


def test_acquisition_ranges():
    """2D sagittal stacks over a coverage window, and 3D isotropic voxels (generator 2.5: about 35 %
    of the cases) and small fields of view (about 15 %, generator 2.1)."""
    iso = small = 0
    for s in range(400):
        p = sample_case_params(s)
        g = p.t2
        if g.slice_mm == g.inplane_mm:
            iso += 1
            assert 0.8 <= g.inplane_mm <= 1.2 and g.gap_mm == 0 and 40 <= g.n_slices * g.slice_mm <= 65
        else:
            assert 10 <= g.n_slices <= 24 and 2.0 <= g.slice_mm <= 5.0 and 0.3 <= g.inplane_mm <= 1.0
        if g.fov_si_mm < 250:
            small += 1
            assert 45 <= g.fov_si_mm <= 160 and 45 <= g.fov_ap_mm <= 120
            assert all(abs(les.s_center - p.anatomy["s_center"]) < g.fov_si_mm / 2 for les in p.lesions), \
                "a small field of view is placed on imaged cord, lesions inside it"
        else:
            assert 250 <= g.fov_si_mm <= 450 and 200 <= g.fov_ap_mm <= 300
    assert 110 <= iso <= 170 and 40 <= small <= 80


def test_small_isotropic_case_holds_its_lesion():
    case = generate_case(34)  # 3D isotropic 0.87 mm, 59 mm S-I field of view, ependymoma
    assert np.allclose(case.t2w.header.get_zooms()[:3], case.t2w.header.get_zooms()[0])
    lab = {k: _arr(case.labels[k]).astype(bool) for k in LABEL_KEYS}
    assert lab["tumor"].sum() > 500 and not (lab["whole-tumor"] & ~lab["cord"]).any()


def test_edema_is_visible_and_other_cases_keep_their_draws():
    """Edema drawn on 1.1-2.0 x cord, faint draws reflected above 1.3 (generator 2.1): the draw
    sequence is unchanged, so a case without edema or new acquisition keeps its 2.0 parameters."""
    from imsct_train.phantoms.lesions import visible_edema_ratio

    assert [visible_edema_ratio(v) for v in (1.1, 1.25, 1.3, 1.8)] == pytest.approx([1.5, 1.35, 1.3, 1.8])
    ratios = [les.edema_t2 for s in range(300) for les in sample_case_params(s).lesions if les.edema_above + les.edema_below]
    assert len(ratios) > 50 and min(ratios) >= 1.3 and max(ratios) <= 2.0
    a, b = sample_case_params(0), sample_case_params(0, has_edema=True)
    assert a.t2 == b.t2 and a.anatomy == b.anatomy and a.contrast == b.contrast


# ------------------------------------------------------------------------- rendering internals


@pytest.fixture(scope="module")
def lesion_scene():
    from imsct_train.phantoms.render import build_scene

    p = sample_case_params(11, tumor_type="ependymoma", has_cavity=True, has_edema=True, n_lesions=1,
                           lesion_overrides={"length": 40.0})
    return build_scene(p)


def _cord_plane(sc, n0: int, n1: int, v0: float):
    """A plane of points across the cord at the lesion (cord coordinates, flat, float32)."""
    les = sc.p.lesions[0]
    jj, kk = np.meshgrid(np.arange(n0), np.arange(n1), indexing="ij")
    s = (les.s_center - 0.75 * n0 + 1.5 * jj + 0.03 * kk).ravel().astype(np.float32)
    u = (-0.3 * n1 + 0.6 * kk - 0.02 * jj).ravel().astype(np.float32)
    return s, u, np.full(s.size, v0, np.float32)


@pytest.mark.parametrize("c,v0", [(2, 0.3), (3, 1.7)])
def test_coarse_to_fine_plane_matches_brute_force(lesion_scene, c, v0):
    """classify_plane = its definition: corner keys decide uniform blocks, other points are classified
    one by one (corner voxels reused), whatever the ``need`` mask elsewhere."""
    from imsct_train.phantoms.planes import classify_plane, plane_grid
    from imsct_train.phantoms.render import classify

    sc, (n0, n1) = lesion_scene, (41, 37)
    s, u, v = _cord_plane(sc, n0, n1, v0)
    ref = classify(sc, s, u, v)
    assert ref.les.classed.sum() > 20 and ref.cord.sum() > 200
    key = ref.lab.astype(int) * 2 + ref.cord
    key[ref.les.idx[ref.les.classed]] = -2
    rows, cols = (np.minimum(np.arange(-(-n // c) + 1) * c, n - 1) for n in (n0, n1))
    ck = key.reshape(n0, n1)[rows[:, None], cols[None, :]]
    k0 = ck[:-1, :-1]
    uni = (k0 >= 0) & (k0 == ck[1:, :-1]) & (k0 == ck[:-1, 1:]) & (k0 == ck[1:, 1:])
    jj, kk = np.meshgrid(np.arange(n0) // c, np.arange(n1) // c, indexing="ij")
    block_uni, block_key = uni[jj, kk].ravel(), k0[jj, kk].ravel()
    need = np.random.default_rng(c).random(n0 * n1) < 0.7
    lab, cord = np.full(n0 * n1, 255, np.uint8), np.zeros(n0 * n1, bool)
    les = classify_plane(sc, lambda i: (s[i], u[i], v[i]), need, plane_grid((n0, n1), c), lab, cord)
    want = np.where(block_uni, block_key >> 1, ref.lab)
    np.testing.assert_array_equal(lab[need], want[need])
    np.testing.assert_array_equal(cord[need], np.where(block_uni, block_key & 1, ref.cord)[need])
    assert (lab[~need] == 255).all()
    refined = np.zeros(n0 * n1, bool)
    refined[ref.les.idx] = True
    refined &= need & ~block_uni
    np.testing.assert_array_equal(np.sort(les.idx), np.flatnonzero(refined))
    order = np.argsort(les.idx)
    sel = np.isin(ref.les.idx, les.idx)
    np.testing.assert_array_equal(les.t2[order], ref.les.t2[sel])
    np.testing.assert_array_equal(les.tumor[order], ref.les.tumor[sel])


@pytest.mark.parametrize("n", [2, 3])
def test_accumulator_matches_pointwise_sums(lesion_scene, n):
    """Table-driven slice-profile sums = the per-point weighted sums (float32, same order)."""
    from imsct_train.phantoms.raster import _Accumulator
    from imsct_train.phantoms.render import LesionPoints, no_lesion

    tb, rng, npl = lesion_scene.tables, np.random.default_rng(n), 500
    wts = np.exp(-np.linspace(-1, 1, n) ** 2)
    wts /= wts.sum()
    labs = rng.integers(0, tb["tex"].size, (n, npl)).astype(np.uint8)
    cords = rng.random((n, npl)) < 0.3
    near = rng.random(npl) < 0.6
    labs[:, ~near], cords[:, ~near] = labs[0, ~near], cords[0, ~near]
    les = []
    for j in range(n):
        idx = np.sort(rng.choice(np.flatnonzero(near), 30, replace=False))
        flags = [rng.random(30) < 0.3 for _ in range(3)]
        les.append(LesionPoints(idx, *flags, rng.random(30).astype(np.float32), rng.random(30).astype(np.float32)))
    acc = _Accumulator(tb, ("t2", "t1"), True, wts, (1, 1, npl))
    acc.add(0, labs, cords, les + [no_lesion()], near)
    for c in ("t2", "t1"):
        base, tex = np.zeros(npl, np.float32), np.zeros(npl, np.float32)
        for j, w in enumerate(np.float32(x) for x in wts):
            sig = tb[c][labs[j]].copy()
            sig[les[j].idx] = getattr(les[j], c)
            base, tex = base + w * sig, tex + (w * sig) * tb["tex"][labs[j]]
        sig = tb[c][labs[0]]
        np.testing.assert_array_equal(acc.base[c][0], np.where(near, base, sig))
        np.testing.assert_array_equal(acc.tex[c][0], np.where(near, tex, sig * tb["tex"][labs[0]]))
    for name in ("cord", "tumor"):
        tot = np.zeros(npl, np.float32)
        for j, w in enumerate(np.float32(x) for x in wts):
            m = cords[j] if name == "cord" else np.isin(np.arange(npl), les[j].idx[les[j].tumor])
            tot = tot + w * m
        np.testing.assert_array_equal(acc.frac[name][0], np.where(near, tot, cords[0] if name == "cord" else 0))


# ------------------------------------------------------------------------------------- rates


def test_presence_rates_like_the_paper():
    ps = [sample_case_params(s) for s in range(1200)]
    tumors = [p for p in ps if p.tumor_type != "none"]
    healthy = 1 - len(tumors) / len(ps)
    cav = np.mean([p.has_cavity for p in tumors])
    ede = np.mean([p.has_edema for p in tumors])
    assert 0.05 < healthy < 0.16
    assert 0.60 < cav < 0.73, cav
    assert 0.44 < ede < 0.57, ede
    kinds = {t: np.mean([p.tumor_type == t for p in tumors]) for t in ("astrocytoma", "ependymoma", "hemangioblastoma")}
    assert all(0.15 < v < 0.5 for v in kinds.values()), kinds
    flags = [hard_case_flags(p.lesions) for p in tumors]
    assert np.mean([f["hard_nonenhancing"] for f in flags]) > 0.05
    assert np.mean([f["low_signal_cavity"] for f in flags]) > 0.05
    assert np.mean([p.n_lesions > 1 for p in tumors]) > 0.08
    lengths = [l.length for p in tumors for l in p.lesions]
    assert min(lengths) < 10 and max(lengths) > 100
    assert all(p.has_cavity == any(l.cavity_above + l.cavity_below > 0 for l in p.lesions) for p in tumors)
    assert {p.coverage for p in ps} == {"cervical", "cervical-thoracic", "thoracic", "thoraco-lumbar", "lumbar"}
    assert 0.2 < np.mean([p.t1_own_grid for p in ps]) < 0.4


# ----------------------------------------------------------------------------- shared data


@needs_shared
def test_reference_from_shared_data():
    ref = load_reference(str(SHARED))
    assert ref.source.startswith("pam50")
    assert len(ref.subject_scales) >= 5
    assert 12 < ref.height[2] < 25 and 25 < ref.height[18] < 40  # C3, T12 segment heights (mm)
    assert 10 < ref.cord_rl[4] < 15 and 5 < ref.cord_ap[4] < 9  # cervical enlargement (mm)


def test_generator_works_without_shared_data(tmp_path):
    case = generate_case(9, data_dir=str(tmp_path), tumor_type="astrocytoma", **FAST)
    assert case.meta["reference_source"] == builtin_reference().source == "builtin"
    assert _arr(case.labels["cord"]).any()


# ------------------------------------------------------------------------------ dataset / CLI


def test_write_dataset_bids_and_cli(tmp_path):
    from imsct_train.phantoms.cli import main_montage, main_phantoms

    rows = write_dataset(tmp_path / "ds", [100_000, 100_001], jobs=1, overrides=FAST, progress=False)
    assert [r["participant_id"] for r in rows] == ["sub-0100000", "sub-0100001"]
    rc = main_phantoms(["-o", str(tmp_path / "ds"), "--split", "val", "-n", "2", "--first-seed", "100002",
                        "-j", "2", "--set", "render_scale=0.3", "--set", "n_slices=10"])
    assert rc == 0
    with (tmp_path / "ds" / "participants.tsv").open() as fh:
        table = list(csv.DictReader(fh, delimiter="\t"))
    assert [r["participant_id"] for r in table] == [f"sub-010000{i}" for i in range(4)]
    assert {"tumor_type", "coverage", "seed"} <= set(table[0])
    for r in table:
        for pth in case_paths(tmp_path / "ds", r["participant_id"]).values():
            assert pth.exists(), pth
        assert r["split"] == "val"
    out = tmp_path / "m.png"
    assert main_montage(["-i", str(tmp_path / "ds"), "-o", str(out), "--real"]) == 0
    assert 0 < out.stat().st_size < 500_000


def test_testing_data_case():
    root = REPO / "testing_data"
    paths = case_paths(root, "sub-test01")
    for pth in paths.values():
        assert pth.exists(), pth
    total = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    assert total < 3.2e6
    t2, t1 = nib.load(str(paths["t2w"])), nib.load(str(paths["t1w"]))
    assert t2.get_data_dtype() == np.int16 and t1.get_data_dtype() == np.int16
    assert t1.shape != t2.shape  # T1w on its own grid
    zooms = sorted(t2.header.get_zooms())
    assert zooms[0] == pytest.approx(0.8, abs=0.01) and zooms[2] == pytest.approx(3.5, abs=0.01)
    labs = {k: np.asarray(nib.load(str(paths[k])).dataobj) for k in LABEL_KEYS}
    for k in ("tumor", "edema", "cavity"):
        assert labs[k].dtype == np.uint8 and labs[k].any() and labs[k].shape == t2.shape
    with (root / "participants.tsv").open() as fh:
        row = next(csv.DictReader(fh, delimiter="\t"))
    assert row["participant_id"] == "sub-test01" and row["tumor_type"] == "ependymoma"
    assert row["coverage"] == "cervical-thoracic"


def test_cord_gray_matter_is_an_h_brighter_on_t2w_and_darker_on_t1w(monkeypatch):
    """Generator 2.2: the cord's gray matter (~24 % of the cross-section, symmetric, inside the cord)
    changes the cord's signal and not its labels."""
    from imsct_train.phantoms import tissues
    from imsct_train.phantoms.anatomy import gray_matter
    from imsct_train.phantoms.tissues import GRAY_T1_RATIO, GRAY_T2_RATIO, T, tissue_tables

    axis = np.linspace(-1, 1, 401)
    un, vn = np.meshgrid(axis, (axis - axis[::-1]) / 2, indexing="ij")  # exactly symmetric in vn
    disk = un ** 2 + vn ** 2 < 1
    gm = gray_matter(un, vn)
    assert not (gm & ~disk).any() and 0.20 < gm.sum() / disk.sum() < 0.28
    np.testing.assert_array_equal(gm, gm[:, ::-1])  # left = right
    assert gm[np.abs(un) < 0.05].any() and not gm[(np.abs(vn) > 0.7)].any()  # central bar, horns inside
    for s in range(50):
        tab = tissue_tables({"jitter_sd": 0.1}, np.random.default_rng(s))
        assert GRAY_T2_RATIO[0] <= tab["t2"][T.GRAY] / tab["t2"][T.CORD] <= GRAY_T2_RATIO[1]
        assert GRAY_T1_RATIO[0] <= tab["t1"][T.GRAY] / tab["t1"][T.CORD] <= GRAY_T1_RATIO[1]
    case = generate_case(25, render_scale=0.6)  # healthy, 3D isotropic
    monkeypatch.setattr(tissues, "GRAY_T2_RATIO", (1.0, 1.0))
    monkeypatch.setattr(tissues, "GRAY_T1_RATIO", (1.0, 1.0))
    plain = generate_case(25, render_scale=0.6)
    cord = _arr(case.labels["cord"]) > 0
    np.testing.assert_array_equal(cord, _arr(plain.labels["cord"]) > 0)
    t2, t2_plain = _arr(case.t2w).astype(float), _arr(plain.t2w).astype(float)
    assert t2[cord].mean() > 1.02 * t2_plain[cord].mean()
    from scipy import ndimage

    far = ~ndimage.binary_dilation(cord, iterations=3)  # partial volume, blur, ringing reach the cord's edge only
    assert np.abs(t2 - t2_plain)[far].mean() < 0.05 * np.abs(t2 - t2_plain)[cord].mean()


def test_bright_cord_t1w_tables_and_other_tables_unchanged(monkeypatch):
    """Generator 2.3: ~35 % of T1w tables have a bright cord (0.6-0.95 of fat, CSF 0.2-1.0 of the
    cord); the draws come last, so with the variant off every table is generator 2.2's."""
    from imsct_train.phantoms import tissues
    from imsct_train.phantoms.tissues import BRIGHT_CORD_CSF_T1, BRIGHT_CORD_T1_FAT, T, tissue_tables

    tables = [tissue_tables({"jitter_sd": 0.1}, np.random.default_rng(s)) for s in range(300)]
    monkeypatch.setattr(tissues, "P_BRIGHT_CORD_T1", 0.0)
    plain = [tissue_tables({"jitter_sd": 0.1}, np.random.default_rng(s)) for s in range(300)]
    bright = 0
    for tab, ref in zip(tables, plain):
        np.testing.assert_array_equal(tab["t2"], ref["t2"])
        changed = np.flatnonzero(tab["t1"] != ref["t1"])
        if changed.size == 0:
            assert ref["t1"][T.CSF] <= 0.5 * ref["t1"][T.CORD]  # spin echo: CSF dark
            continue
        bright += 1
        assert set(changed) <= {T.CORD, T.GRAY, T.BRAINSTEM, T.CSF}
        assert BRIGHT_CORD_T1_FAT[0] <= tab["t1"][T.CORD] / tab["t1"][T.FAT] <= BRIGHT_CORD_T1_FAT[1]
        assert BRIGHT_CORD_CSF_T1[0] <= tab["t1"][T.CSF] / tab["t1"][T.CORD] <= BRIGHT_CORD_CSF_T1[1]
        assert tab["t1"][T.GRAY] / tab["t1"][T.CORD] == pytest.approx(ref["t1"][T.GRAY] / ref["t1"][T.CORD], rel=1e-5)
    assert 0.25 < bright / len(tables) < 0.45


@pytest.mark.parametrize("variant", ["fatsat", "bright-cord"])
def test_enhancing_tumor_is_brighter_than_the_cord_on_t1w(monkeypatch, variant):
    """Generator 2.3: enhancement is relative to unsaturated fat and at least 1.25 x the cord's T1w,
    so an avid ependymoma stands out on a fat-saturated or a bright-cord T1w (2.2: darker than the
    cord with fat saturation)."""
    from imsct_train.phantoms import tissues

    monkeypatch.setattr(tissues, "P_BRIGHT_CORD_T1", 1.0 if variant == "bright-cord" else 0.0)
    case = generate_case(11, tumor_type="ependymoma", has_cavity=False, has_edema=False, n_lesions=1, t1_own_grid=False,
                         t1_fatsat=variant == "fatsat", lesion_overrides={"length": 40.0, "enhancement": "avid", "enh_level": 0.8},
                         **FAST)
    t1 = _arr(case.t1w).astype(float)
    lab = {k: _arr(case.labels[k]).astype(bool) for k in LABEL_KEYS}
    from scipy import ndimage

    core = lab["tumor"]
    cord_only = lab["cord"] & ~ndimage.binary_dilation(lab["whole-tumor"], iterations=3)
    assert core.sum() > 20 and cord_only.sum() > 20
    assert np.median(t1[core]) > 1.15 * np.median(t1[cord_only])


def test_tight_sacs_keep_every_other_draw_and_a_rim_of_csf(monkeypatch):
    """Generator 2.4: ~35 % of cases have a thecal sac 0.68-0.9 x the reference's (own random
    stream: every other parameter is the case's 2.3 draw); the sac still keeps >= 1 mm of CSF in
    front of and behind the cord."""
    from imsct_train.phantoms import params
    from imsct_train.phantoms.render import build_scene

    seeds = range(200)
    tight = [sample_case_params(s) for s in seeds]
    monkeypatch.setattr(params, "P_TIGHT_SAC", 0.0)
    plain = [sample_case_params(s) for s in seeds]
    ratios = []
    for a, b in zip(tight, plain):
        assert a.lesions == b.lesions and a.t2 == b.t2 and a.contrast == b.contrast
        assert {k: v for k, v in a.anatomy.items() if k != "sac_scale"} == {k: v for k, v in b.anatomy.items() if k != "sac_scale"}
        ratios.append(a.anatomy["sac_scale"] / b.anatomy["sac_scale"])
    ratios = np.asarray(ratios)
    narrowed = ratios[ratios != 1.0]
    assert 0.25 < narrowed.size / ratios.size < 0.45
    assert narrowed.min() >= params.TIGHT_SAC[0] and narrowed.max() <= params.TIGHT_SAC[1]
    monkeypatch.setattr(params, "TIGHT_SAC", (0.5, 0.5))
    monkeypatch.setattr(params, "P_TIGHT_SAC", 1.0)
    p = sample_case_params(3, tumor_type="ependymoma", lesion_overrides={"swelling": 0.7})
    prof = build_scene(p).prof
    cord = prof.cord_a > 0
    assert (prof.sac_a[cord] - prof.cord_a[cord] >= 1.0 - 1e-3).all()
