"""Training side: U-Net export parity, sample building vs the runtime, a training smoke test."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
if importlib.util.find_spec("imsct_train") is None:  # not pip-installed: use the checkout's copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))

from imsct_train import data as D
from imsct_train.export import export_onnx, parity, registry_entry, update_registry
from imsct_train import train as T
from imsct_train import trainer as TR
from imsct_train.trainer import CaseStore, Trainer, dice_loss
from imsct_train.tune import ValCase, best_value, class_mask, sweep
from imsct_train.unet import Modified3DUNet, _SubpixelUp, count_parameters, inference_form

from deepseg_imsct.grid import Grid, working_grid
from deepseg_imsct.cropbox import box_for_mask
from deepseg_imsct.localize import centred_block
from deepseg_imsct.segment import model_input

LOC = {"contrasts": ["t2"], "classes": ["cord"], "spacing_mm": [2.0, 2.0, 2.0],
       "patch_size": [32, 16, 16], "stride": [32, 16, 16]}
SEG = {"contrasts": ["t2", "t1"], "classes": list(D.SEGMENTER_CLASSES), "spacing_mm": [1.0, 1.0, 2.0],
       "patch_size": [32, 16, 16], "stride": [16, 16, 16], "safety_factor": [1.2, 1.2, 1.0],
       "box_jitter_vox": [2, 2, 1], "lesion_fraction": 0.7}


def standin_case(seed: int) -> D.Case:
    """A bright tube (cord) along S-I in noise with a tumour blob, edema shell and cavity.

    Native arrays are LAS-ordered (axis 0 right->left, 1 posterior->anterior, 2 inferior->superior),
    1 x 1 x 1 mm for T2w; T1w is on a coarser grid (1.5 mm) to exercise per-image grids.
    """
    rng = np.random.default_rng(seed)
    shape = (24, 28, 72)
    affine = np.diag([-1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = (12.0, -14.0, -36.0)
    i, j, k = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    r_cord = np.hypot(i - 12 + rng.uniform(-1, 1), j - 14 + rng.uniform(-1, 1))
    cord = (r_cord <= 3.5) & (k > 4) & (k < 68)
    centre = np.array([12, 14, 36 + rng.integers(-8, 9)])
    dist = np.sqrt(((np.stack([i, j, k], -1) - centre) ** 2).sum(-1))
    tumor = (dist <= 3) & cord
    cavity = (np.abs(k - centre[2] - 7) <= 2) & (r_cord <= 1.5)
    edema = (dist <= 6) & cord & ~tumor & ~cavity
    t2 = 100 + 10 * rng.standard_normal(shape) + 200 * cord + 150 * edema + 300 * cavity + 80 * tumor
    t1_grid = Grid((16, 19, 48), affine @ np.diag([1.5, 1.5, 1.5, 1.0]))
    t1_full = 300 + 10 * rng.standard_normal(shape) + 50 * cord + 400 * tumor - 100 * cavity
    t1 = t1_full[::3, ::3, ::3].repeat(2, 0)[:16, :19, :48]  # crude, only the geometry matters
    labels = {"cord": cord, "tumor": tumor, "edema": edema, "cavity": cavity, "whole-tumor": tumor | edema | cavity}
    return D.Case(f"standin-{seed}", t2.astype(np.float32), Grid(shape, affine),
                  {key: v.astype(np.uint8) for key, v in labels.items()}, t1.astype(np.float32), t1_grid)


def _config(stage: str, geometry: dict, iterations: int = 4) -> dict:
    return {
        "name": f"test_{stage}", "version": "t", "stage": stage, "seed": 3,
        "model": {"base_filters": 4, "dropout": 0.3}, "geometry": geometry,
        "augmentation": {"spatial": {"rotation_deg": 5, "scale": 0.1, "translation": [0.03, 0.03, 0]}, "intensity": {}},
        "training": {"iterations": iterations, "batch_size": 2, "lr": 1e-3, "loss": "dice+bce", "threads": 1,
                     "checkpoint_every": 2, "validate_every": 1000, "patience": 5},
        "data": {},
        "export": {"postprocessing": {c: {"threshold": 0.5} for c in geometry["classes"]}},
    }


def test_parameter_count_matches_ivadomed():
    # ivadomed: 27826 F^2 + 27 Cin F + 14 F K (+ background channel, which this net omits)
    assert count_parameters(Modified3DUNet(1, 1, 8)) == 1_781_192
    assert count_parameters(Modified3DUNet(2, 4, 16)) == 27826 * 256 + 27 * 2 * 16 + 14 * 16 * 4


@pytest.mark.parametrize("fast", [False, True], ids=["as-trained", "inference-form"])
def test_onnx_matches_torch(tmp_path, fast):
    torch.manual_seed(0)
    model = Modified3DUNet(2, 4, 4).eval()
    path = export_onnx(inference_form(model) if fast else model, tmp_path / "m.onnx", 2, (32, 16, 16))
    x = np.random.default_rng(1).standard_normal((2, 2, 32, 16, 16)).astype(np.float32)  # batch 2: dynamic axis
    assert parity(model, path, x) < 1e-4
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert ("Resize" in ops) != fast and ("ConvTranspose" in ops) == fast


def test_inference_form_computes_the_same_function():
    torch.manual_seed(3)
    model = Modified3DUNet(1, 2, 4).eval()
    for p in model.parameters():  # trained-like weights, not the init's
        p.data.normal_(0, 0.3)
    x = torch.randn(1, 1, 48, 32, 16)
    with torch.no_grad():
        want, got = model(x), inference_form(model)(x)
    assert torch.allclose(want, got, atol=1e-5), (want - got).abs().max()
    assert model.l3_up[2].__class__.__name__ == "Upsample", "the trained model is left as it was"


@pytest.mark.parametrize("shape", [(1, 3, 5, 4, 3), (2, 3, 2, 7, 1)], ids=["odd", "flat"])
def test_subpixel_upsampling_equals_nearest_upsampling_then_conv(shape):
    torch.manual_seed(5)
    conv = torch.nn.Conv3d(3, 2, 3, padding=1, bias=False)
    x = torch.randn(*shape)
    with torch.no_grad():
        want = conv(torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest"))
        got = _SubpixelUp(conv)(x)
    assert got.shape == want.shape == (shape[0], 2, 2 * shape[2], 2 * shape[3], 2 * shape[4])
    assert torch.allclose(want, got, atol=1e-5), (want - got).abs().max()


def test_localizer_input_equals_runtime():
    case = standin_case(0)
    stage = D.StageConfig.from_dict(LOC)
    x, y = D.localizer_sample(case, stage)
    block = centred_block(working_grid(case.t2_grid, stage.spacing_mm), stage.patch_size)
    np.testing.assert_array_equal(x, model_input([(case.t2, case.t2_grid)], block))
    assert y.shape == (1, *stage.patch_size) and 0 < (y >= 0.5).sum()


def test_segmenter_input_equals_runtime():
    case = standin_case(1)
    stage = D.StageConfig.from_dict(SEG)
    crop = D.segmenter_crop(case, stage)
    box, work = box_for_mask(case.labels["cord"] > 0, case.t2_grid, case.t2_grid, stage.spacing_mm,
                             stage.safety_factor, stage.patch_size, stage.stride)
    images = [(case.t2, case.t2_grid), (case.t1, case.t1_grid)]
    np.testing.assert_array_equal(D.build_channels(images, crop), model_input(images, box.on(work)))
    x, y = D.segmenter_sample(case, stage)  # no rng: first window, no augmentation
    np.testing.assert_array_equal(x, model_input(images, box.on(work))[:, :32, :16, :16])
    assert y.shape == (4, 32, 16, 16)


def test_augmented_sample_is_consistent():
    case = standin_case(2)
    stage = D.StageConfig.from_dict(SEG)
    rng = np.random.default_rng(0)
    spatial, intensity = D.SpatialAug(), D.IntensityAug(p_gamma=1, p_bias=1, p_noise=1, p_blur=1, p_resolution=1)
    x, y = D.segmenter_sample(case, stage, rng, spatial, intensity)
    assert x.shape == (2, 32, 16, 16) and y.shape == (4, 32, 16, 16)
    assert np.isfinite(x).all() and y.min() >= 0 and y.max() <= 1
    # whole-tumor covers every sub-class after the same spatial transform
    assert np.all(y[3] + 1e-5 >= y[:3].max(axis=0))
    still = D.perturb_grid(crop := D.segmenter_crop(case, stage), D.SpatialAug(0, 0, 0, (0, 0, 0)), rng)
    assert still == crop


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")  # the skipped step
def test_a_step_with_non_finite_gradients_is_skipped(tmp_path, monkeypatch):
    store = CaseStore({"c0": lambda: standin_case(0)})
    trainer = Trainer(_config("localizer", LOC), tmp_path / "run")
    before = [p.detach().clone() for p in trainer.model.parameters()]
    monkeypatch.setattr(TR, "compute_loss", lambda *a: torch.tensor(float("nan"), requires_grad=True) * sum(
        p.sum() for p in trainer.model.parameters()))
    info = trainer.step(trainer.batch(store, 0))
    assert np.isnan(info["loss"]) and trainer.state.iteration == 1
    for a, b in zip(before, trainer.model.parameters()):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)
    monkeypatch.undo()
    trainer.step(trainer.batch(store, 1))  # a finite step moves the weights
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, trainer.model.parameters()))


def test_dice_loss_bounds():
    y = torch.zeros(1, 2, 4, 4, 4)
    y[:, 0, :2] = 1
    assert float(dice_loss(y, y)) == pytest.approx(0.0, abs=1e-6)
    assert float(dice_loss(1 - y, y)) > 0.5


def test_training_smoke_and_resume(tmp_path):
    cfg = _config("segmenter", SEG)
    store = CaseStore({f"c{i}": (lambda i=i: standin_case(i)) for i in range(2)})
    a = Trainer(cfg, tmp_path / "a")
    state = a.run(store, store, iterations=2)
    assert state.iteration == 2 and all(np.isfinite(r["loss"]) for r in _losses(tmp_path / "a"))
    snapshot = tmp_path / "snapshot.pt"
    snapshot.write_bytes((tmp_path / "a" / "checkpoint.pt").read_bytes())
    a.run(store, store)  # on to 4
    b = Trainer(cfg, tmp_path / "b")
    (tmp_path / "b" / "checkpoint.pt").write_bytes(snapshot.read_bytes())
    b.resume()
    assert b.state.iteration == 2
    b.run(store, store)
    for (name, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-6, msg=name)


def test_fine_tuning_starts_from_a_phase(tmp_path, monkeypatch):
    """init_from names a phase config: its best.pt is used, trained first only when missing."""
    monkeypatch.chdir(tmp_path)
    phase = _config("segmenter", SEG)
    phase["run_dir"] = "runs/phase1"
    (tmp_path / "phase1.json").write_text(json.dumps(phase))
    trained: list[list[str]] = []
    monkeypatch.setattr(T, "main", lambda argv: trained.append(argv) or 0)
    args = T.parse_args(["--config", str(tmp_path / "v1.json"), "--device", "cpu"])
    assert T.initial_weights("phase1.json", args) == Path("runs/phase1/best.pt")
    assert trained and trained[0][:2] == ["--config", str(tmp_path / "phase1.json")] and "--resume" in trained[0]
    (tmp_path / "runs" / "phase1").mkdir(parents=True)
    (tmp_path / "runs" / "phase1" / "best.pt").write_bytes(b"")
    trained.clear()
    assert T.initial_weights("phase1.json", args) == Path("runs/phase1/best.pt") and not trained
    assert T.initial_weights("w.pt", args) == Path("w.pt")
    model = Trainer(phase, tmp_path / "ft")
    torch.save(model.model.state_dict(), tmp_path / "w.pt")
    for p in model.model.parameters():
        p.data.zero_()
    model.init_weights(tmp_path / "w.pt")
    assert any(float(p.detach().abs().sum()) > 0 for p in model.model.parameters())


def test_registry_update(tmp_path):
    reg = tmp_path / "model_registry.json"
    reg.write_text('{"schema": 1, "tasks": {}, "models": {}}')
    cfg = _config("segmenter", SEG)
    cfg["export"]["description"] = "d"
    update_registry(reg, "m", "v1", registry_entry(cfg, "m-v1.onnx", "0" * 64, 10))
    from deepseg_imsct.registry import load_registry

    spec = load_registry(reg).model("m")
    assert spec.version == "v1" and spec.sources == ("models/m-v1.onnx",) and spec.safety_factor == (1.2, 1.2, 1.0)
    assert spec.classes == tuple(D.SEGMENTER_CLASSES) and spec.patch_size == (32, 16, 16)


def _losses(run_dir):
    return [r for r in map(json.loads, (run_dir / "history.jsonl").read_text().splitlines()) if "loss" in r]


def test_case_cache_and_bids_roundtrip(tmp_path):
    import nibabel as nib

    case = standin_case(4)
    D.save_case(case, tmp_path / "c.npz")
    back = D.load_case(tmp_path / "c.npz")
    np.testing.assert_array_equal(back.t1, case.t1)
    np.testing.assert_allclose(back.t2_grid.affine, case.t2_grid.affine)
    assert back.labels.keys() == case.labels.keys()
    anat, lab = tmp_path / "bids" / "sub-001" / "anat", tmp_path / "bids" / "derivatives" / "labels" / "sub-001" / "anat"
    anat.mkdir(parents=True)
    lab.mkdir(parents=True)
    nib.save(nib.Nifti1Image(case.t2, case.t2_grid.affine), anat / "sub-001_T2w.nii.gz")
    nib.save(nib.Nifti1Image(case.t1, case.t1_grid.affine), anat / "sub-001_T1w.nii.gz")
    for key, arr in case.labels.items():
        nib.save(nib.Nifti1Image(arr, case.t2_grid.affine), lab / f"sub-001_T2w_seg-{key}.nii.gz")
    (bids,) = D.bids_cases(tmp_path / "bids")
    assert bids.name == "sub-001" and set(bids.labels) == set(case.labels)
    np.testing.assert_array_equal(bids.labels["whole-tumor"], case.labels["whole-tumor"])
    stage = D.StageConfig.from_dict(SEG)
    np.testing.assert_allclose(D.segmenter_sample(bids, stage)[0], D.segmenter_sample(case, stage)[0], atol=1e-5)


def _tuning_case(inside: float, shell: float) -> ValCase:
    """A 4 mm-radius ball of truth with probability ``inside`` and a 2-voxel shell at ``shell``."""
    z, y, x = np.ogrid[:20, :20, :20]
    r = np.sqrt((z - 10.0) ** 2 + (y - 10.0) ** 2 + (x - 10.0) ** 2)
    truth = r <= 4
    prob = np.where(truth, inside, np.where(r <= 6, shell, 0.0)).astype(np.float32)
    return ValCase({"tumor": prob}, {"tumor": truth}, voxel_mm3=1.0)


def test_threshold_tuning_finds_the_band_that_separates_truth_from_the_shell():
    from deepseg_imsct.postprocess import ClassPost

    rows = sweep([_tuning_case(0.6, 0.55)], "tumor", {"tumor": ClassPost(0.5, True, 0.0)})
    by_t = {r["value"]: r["dice"] for r in rows}
    assert by_t[0.6] == 1.0 and by_t[0.55] < 0.5 and by_t[0.65] == 0.0  # prob >= threshold is foreground
    assert best_value(rows, 0.5) == 0.6
    # a plateau of perfect thresholds: the one closest to the default wins
    assert best_value(sweep([_tuning_case(0.9, 0.2)], "tumor", {"tumor": ClassPost(0.5, True, 0.0)}), 0.5) == 0.5


def test_minimum_volume_tuning_drops_specks_and_keeps_the_lesion():
    from deepseg_imsct.postprocess import ClassPost

    case = _tuning_case(0.9, 0.0)  # a ball of 257 voxels = 0.257 cm3, exactly the truth
    for corner in ((0, 0, 0), (0, 19, 0), (19, 0, 19)):  # three 1-voxel false positives
        case.probs["tumor"][corner] = 0.9
    rows = sweep([case], "tumor", {"tumor": ClassPost(0.5, True, 0.0)}, "min_volume_cm3")
    by_v = {r["value"]: r["dice"] for r in rows}
    assert by_v[0.0] < 1.0 and by_v[0.01] == by_v[0.2] == 1.0 and by_v[0.3] == 0.0
    assert best_value(rows, 0.2) == 0.2 and best_value(rows, 0.0) == 0.01


def test_tuning_an_exclusive_model_post_processes_the_classes_together():
    from deepseg_imsct.postprocess import ClassPost

    case = _tuning_case(0.9, 0.0)
    tumor = case.probs["tumor"]
    probs = {"tumor": tumor * 0.7, "edema": tumor * 0.2, "cavity": tumor * 0.0, "whole-tumor": tumor * 0.9}
    exclusive = ValCase(probs, {c: case.truth["tumor"] if c in ("tumor", "whole-tumor") else ~case.truth["tumor"] & False
                                for c in probs}, 1.0)
    config = {c: ClassPost(0.5, True, 0.0) for c in probs}
    assert np.array_equal(class_mask(exclusive, "tumor", config, exclusive=True), case.truth["tumor"])  # 0.63 >= 0.5
    assert not class_mask(exclusive, "edema", config, exclusive=True).any()
    edema_weighted = config | {"edema": ClassPost(0.1, True, 0.0)}  # 0.18 / 0.1 > 0.63 / 0.5: edema takes the lesion
    assert np.array_equal(class_mask(exclusive, "edema", edema_weighted, exclusive=True), case.truth["tumor"])
    assert not class_mask(exclusive, "tumor", edema_weighted, exclusive=True).any()
