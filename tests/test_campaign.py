"""Segmenter 2 recipe: pre-built crops vs the runtime, patches, balanced batches, exclusive
outputs, losses, export and a resumed campaign equal to an uninterrupted one."""
from __future__ import annotations

import importlib.util
import json
import math
import shutil
import time
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
if importlib.util.find_spec("imsct_train") is None:  # not pip-installed: use the checkout's copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))

from imsct_train import campaign as CP
from imsct_train import crops as C
from imsct_train.batches import BatchMaker
from imsct_train.data import StageConfig
from imsct_train.export import export_onnx, parity
from imsct_train.losses import ce_dice_loss, choose_precision
from imsct_train.unet import Modified3DUNet, inference_form

from deepseg_imsct.segment import model_input
from test_training import standin_case

GEOMETRY = {"contrasts": ["t2", "t1"], "classes": ["tumor", "edema", "cavity", "whole-tumor"],
            "spacing_mm": [1.0, 1.0, 2.0], "patch_size": [32, 16, 16], "stride": [16, 16, 16],
            "safety_factor": [1.2, 1.2, 1.0]}
STAGE = StageConfig.from_dict(GEOMETRY)
MARGIN = (4, 4, 2)


@pytest.fixture(scope="module")
def crop_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("crops")
    for seed in (1, 2, 3):
        C.save_crop(folder, *C.build_crop(standin_case(seed), STAGE, MARGIN))
    return folder


def test_crop_holds_the_runtime_input_and_exclusive_labels():
    case = standin_case(1)
    x, y, meta = C.build_crop(case, STAGE, MARGIN)
    box, work = C.runtime_box(case, STAGE)
    runtime = model_input(case.images(STAGE.contrasts), box.on(work))  # what the runtime feeds the net
    inner = tuple(slice(a, a + n) for a, n in zip(meta["inner_start"], meta["inner_size"]))
    assert x.dtype == np.float16 and tuple(meta["inner_size"]) == box.size
    np.testing.assert_allclose(x[(slice(None), *inner)].astype(np.float32), runtime, atol=0.01, rtol=2e-3)
    # a voxel more than half covered by a class carries that class (its share beats all others)
    from deepseg_imsct.grid import resample

    grid = box.on(work)
    for k, name in enumerate(C.LESIONS, start=1):
        frac = resample(case.labels[name].astype(np.float32), case.label_grid, grid, order=1, fill=0.0)
        assert np.array_equal((y[inner] & 3)[frac > 0.5], np.full(int((frac > 0.5).sum()), k, np.uint8))
        assert meta["voxels"][name] == int(((y & 3) == k).sum()) > 0
    cord = resample(case.labels["cord"].astype(np.float32), case.label_grid, grid, order=1, fill=0.0) >= 0.5
    assert np.array_equal((y[inner] & C.CORD_BIT) > 0, cord)


def test_patch_cut_is_a_padded_slice_and_identity_warp_matches_it(crop_dir):
    cc = C.CropCase.load(crop_dir, C.complete_cases(crop_dir)[0], np.random.default_rng(0))
    rng = np.random.default_rng(0)
    centre = np.array([3, 5, 2])  # near the corner: the patch runs off the crop and is zero-padded
    x, y = C.cut_patch(cc, centre, (32, 16, 16), (1, 1, 2), None, rng)
    start = np.round(centre - np.array([16, 8, 8])).astype(int)
    assert x.shape == (2, 32, 16, 16) and (x[:, : -start[0]] == 0).all() and (y[: -start[0]] == 0).all()
    np.testing.assert_array_equal(x[:, -start[0]:, -start[1]:, -start[2]:],
                                  np.asarray(cc.x[:, : 32 + start[0], : 16 + start[1], : 16 + start[2]], np.float32))
    identity = C.PatchAug(p_spatial=1.0, rotation_deg=(0.0, 0.0, 0.0), scale=(1.0, 1.0))
    centre = np.array(cc.inner_start) + 10
    xw, yw = C.cut_patch(cc, centre, (32, 16, 16), (1, 1, 2), identity, rng)
    xs, ys = C.cut_patch(cc, centre, (32, 16, 16), (1, 1, 2), None, rng)
    np.testing.assert_allclose(xw, xs, atol=1e-5)
    np.testing.assert_array_equal(yw, ys)


def test_batches_are_deterministic_and_follow_the_category_mix(crop_dir):
    names = C.complete_cases(crop_dir)
    probs = {"tumor": 0.5, "cavity": 0.25, "uniform": 0.25}
    maker = BatchMaker(crop_dir, names, 7, 2, (32, 16, 16), (1.0, 1.0, 2.0), probs, None)
    a, b = maker(5), maker(5)
    assert np.array_equal(a["x"], b["x"]) and np.array_equal(a["y"], b["y"]) and a["categories"] == b["categories"]
    assert not np.array_equal(maker(6)["x"], a["x"])
    drawn = []
    for i in range(150):
        batch = maker(i)
        for cat, y in zip(batch["categories"], batch["y"]):
            if cat == "tumor":  # a centred patch always holds its class (jitter < half a patch, no warp)
                assert (y == 1).any()
            if cat == "cavity":
                assert (y == 3).any()
        drawn += batch["categories"]
    share = drawn.count("tumor") / len(drawn)
    assert 0.4 < share < 0.6, share
    assert batch["y"].max() <= 3  # class indices: the cord bit the patches carry is gone


def test_exclusive_network_outputs_the_union_as_whole_tumor():
    torch.manual_seed(0)
    net = Modified3DUNet(2, 4, 4, 0.0, output="exclusive", head_filters=4).eval()
    with torch.no_grad():
        p = net(torch.randn(2, 2, 32, 16, 16)).numpy()
    assert p.shape == (2, 4, 32, 16, 16) and p.min() >= 0 and p.max() <= 1
    np.testing.assert_allclose(p[:, 3], p[:, :3].sum(1), atol=1e-5)
    masks = CP.exclusive_masks(p[0])
    assert np.array_equal(masks[3], masks[:3].any(0)) and masks[:3].sum(0).max() <= 1
    assert np.array_equal(masks[3], p[0, 3] >= 0.5)


def test_exclusive_export_matches_torch(tmp_path):
    torch.manual_seed(1)
    net = Modified3DUNet(2, 4, 4, 0.0, output="exclusive", head_filters=4).eval()
    path = export_onnx(inference_form(net), tmp_path / "seg.onnx", 2, (32, 16, 16))
    x = np.random.default_rng(0).standard_normal((1, 2, 32, 16, 16)).astype(np.float32)
    assert parity(net, path, x) < 1e-4


def test_ce_dice_loss_known_answers():
    target = torch.zeros(1, 4, 4, 4, dtype=torch.int64)
    target[0, :2] = 1  # 32 tumor voxels
    target[0, 2, :2] = 2  # 8 edema
    target[0, 3, :1] = 3  # 4 cavity
    perfect = torch.nn.functional.one_hot(target, 4).movedim(-1, 1).float() * 40
    assert ce_dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    uniform = torch.zeros(1, 4, 4, 4, 4)
    dice = [2 * 0.25 * n / (0.25 * 64 + n) for n in (32, 8, 4)]
    assert ce_dice_loss(uniform, target).item() == pytest.approx(math.log(4) + 1 - np.mean(dice), rel=1e-5)


def test_precision_is_the_requested_one_unless_auto():
    net = Modified3DUNet(2, 4, 4, 0.0, output="exclusive")
    assert choose_precision(net, torch.zeros(1, 2, 16, 16, 16), torch.zeros(1, 16, 16, 16, dtype=torch.int64), "fp32") == "fp32"


class _Bf16Garbage(torch.nn.Module):
    """A network whose bf16 outputs are NaN (as oneDNN's faulty AMX kernels give) and which looks
    faster in bf16: the precision probe must still choose fp32."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def logits_ds(self, x):
        out = x[:, :1].repeat(1, 4, 1, 1, 1) * self.w
        if torch.is_autocast_enabled("cpu"):
            return [out * float("nan")]
        time.sleep(0.05)
        return [out]


def test_precision_probe_refuses_bf16_that_gives_non_finite_losses():
    x, y = torch.rand(1, 2, 8, 8, 8), torch.zeros(1, 8, 8, 8, dtype=torch.int64)
    assert choose_precision(_Bf16Garbage(), x, y, "auto") == "fp32"


def test_a_non_finite_bf16_step_switches_the_campaign_to_fp32(tmp_path, crop_dir):
    cfg = _campaign_config(tmp_path / "crops")
    cfg["training"]["amp"] = "bf16"
    _copy_crops(cfg, crop_dir)
    camp = CP.Campaign(cfg, tmp_path / "run")
    real = camp.model.logits_ds
    calls = []

    def flaky(x):
        calls.append(torch.is_autocast_enabled("cpu"))
        with torch.autocast("cpu", enabled=False):  # fp32 arithmetic: this machine's own bf16 kernels play no part
            outs = real(x)
        return [o * float("nan") for o in outs] if len(calls) == 2 else outs
    camp.model.logits_ds = flaky
    before = {k: v.clone() for k, v in camp.model.state_dict().items()}
    camp.run(stop_at=1)
    assert camp.state["precision"] == "bf16" and calls == [True]
    camp.run(stop_at=2)  # the NaN step: skipped, and bf16 is dropped
    assert camp.state["precision"] == "fp32" and camp.state["bf16_failed_at"] == 2
    camp.run(stop_at=3)
    assert calls[-1] is False  # trained on in fp32
    assert any(not torch.equal(before[k], v) for k, v in camp.model.state_dict().items())


def _campaign_config(crops_dir: Path) -> dict:
    return {"name": "t_seg", "version": "t", "stage": "segmenter", "seed": 5,
            "model": {"base_filters": 4, "dropout": 0.0, "head_filters": 4}, "geometry": GEOMETRY,
            "data": {"crops_dir": str(crops_dir)}, "sampling": {"tumor": 0.5, "uniform": 0.5},
            "augmentation": {"p_spatial": 0.5},
            "training": {"total_steps": 20, "warmup_steps": 2, "batch_size": 2, "lr": 1e-3, "amp": "fp32", "threads": 1,
                         "data_workers": 0, "checkpoint_every": 1, "validate_every": 2, "ema_decay": 0.5}}


def test_a_resumed_campaign_equals_an_uninterrupted_one(tmp_path, crop_dir):
    cfg = _campaign_config(tmp_path / "crops")
    for split in ("train", "val"):
        folder = CP.crop_folder(cfg, split)
        folder.mkdir(parents=True)
        for f in crop_dir.iterdir():
            (folder / f.name).write_bytes(f.read_bytes())
    whole = CP.Campaign(cfg, tmp_path / "whole")
    whole.run(stop_at=4)
    first = CP.Campaign(cfg, tmp_path / "parts")
    first.run(stop_at=2)
    second = CP.Campaign(cfg, tmp_path / "parts")
    second.resume()
    assert second.state["iteration"] == 2
    second.run(stop_at=4)
    for (k, a), b in zip(whole.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), k
    for (k, a), b in zip(whole.ema.state_dict().items(), second.ema.state_dict().values()):
        assert torch.equal(a, b), k  # the weight average too
    assert (tmp_path / "parts" / "best.pt").exists() and second.state["best_iteration"] in (2, 4)


def _copy_crops(cfg, crop_dir):
    for split in ("train", "val"):
        folder = CP.crop_folder(cfg, split)
        folder.mkdir(parents=True)
        for f in crop_dir.iterdir():
            (folder / f.name).write_bytes(f.read_bytes())


def test_a_lost_run_dir_restarts_from_the_snapshot(tmp_path, crop_dir):
    """The snapshot written at each validation holds the averaged weights (float16), the step and
    the learning curve; with run_dir gone, resume starts there with a new warm-up of the rate."""
    from imsct_train.history import rows

    cfg = _campaign_config(tmp_path / "crops")
    cfg["training"]["snapshot"] = str(tmp_path / "snap" / "t.pt")
    _copy_crops(cfg, crop_dir)
    first = CP.Campaign(cfg, tmp_path / "run")
    first.run(stop_at=4)
    curve = rows(tmp_path / "run" / "history.jsonl")
    assert [r["iteration"] for r in curve] == [2, 4]
    average = {k: v.clone() for k, v in first.ema.module.state_dict().items()}
    shutil.rmtree(tmp_path / "run")
    again = CP.Campaign(cfg, tmp_path / "run")
    again.resume()
    assert again.state["iteration"] == 4 and again.state["restarted_at"] == 4 and again.state["precision"] is None
    for k, v in average.items():
        torch.testing.assert_close(again.model.state_dict()[k], v.half().to(v.dtype), rtol=0, atol=0)
        torch.testing.assert_close(again.ema.module.state_dict()[k], v.half().to(v.dtype), rtol=0, atol=0)
    warm = cfg["training"]["warmup_steps"]
    assert again.opt.param_groups[0]["lr"] == pytest.approx(1e-3 * CP.poly_lr(4, 20, warm) / warm)
    again.run(stop_at=6)
    assert again.opt.param_groups[0]["lr"] == pytest.approx(1e-3 * CP.poly_lr(6, 20, warm))
    assert rows(tmp_path / "run" / "history.jsonl")[:2] == curve  # the curve goes on from the snapshot's
    assert [r["iteration"] for r in rows(tmp_path / "run" / "history.jsonl")] == [2, 4, 6]
    other = cfg | {"version": "u"}
    with pytest.raises(SystemExit, match="not t_seg u"):
        CP.Campaign(other, tmp_path / "elsewhere").resume()


def test_weight_average_is_what_is_validated_and_saved(tmp_path, crop_dir):
    """ema_decay 0.5: after steps with weights w1, w2 the average is (w1 + w2) / 2 (the first
    update copies); best.pt holds the average, not the last weights."""
    cfg = _campaign_config(tmp_path / "crops")
    _copy_crops(cfg, crop_dir)
    camp = CP.Campaign(cfg, tmp_path / "run")
    seen = []
    real_step = camp.opt.step

    def step(*args, **kwargs):
        real_step(*args, **kwargs)
        seen.append({k: v.detach().clone() for k, v in camp.model.state_dict().items()})
    camp.opt.step = step
    camp.run(stop_at=2)
    name, average = next((k, v) for k, v in camp.ema.module.state_dict().items() if v.is_floating_point())
    torch.testing.assert_close(average, (seen[0][name] + seen[1][name]) / 2)
    assert not torch.equal(average, seen[1][name])
    best = torch.load(tmp_path / "run" / "best.pt")
    assert torch.equal(best[name], average)


def test_a_new_peak_learning_rate_applies_from_the_resumed_step(tmp_path, crop_dir):
    cfg = _campaign_config(tmp_path / "crops")
    _copy_crops(cfg, crop_dir)
    CP.Campaign(cfg, tmp_path / "run").run(stop_at=3)
    cfg["training"]["lr"] = 4e-4
    camp = CP.Campaign(cfg, tmp_path / "run")
    camp.resume()
    expected = 4e-4 * CP.poly_lr(3, 20, 2)
    assert camp.opt.param_groups[0]["lr"] == pytest.approx(expected) and camp.sched.get_last_lr()[0] == pytest.approx(expected)
    camp.run(stop_at=4)
    assert camp.opt.param_groups[0]["lr"] == pytest.approx(4e-4 * CP.poly_lr(4, 20, 2))


def test_generator_2_cord_brightness_range_and_lesions_relative_to_the_cord():
    from imsct_train.phantoms.lesions import EDEMA_MAX, Lesion, render_lesions
    from imsct_train.phantoms.tissues import CORD_T2_RANGE, T, tissue_tables

    cords = [tissue_tables({"jitter_sd": 0.1}, np.random.default_rng(s))["t2"][T.CORD] for s in range(200)]
    assert CORD_T2_RANGE[0] <= min(cords) and max(cords) <= CORD_T2_RANGE[1]
    assert min(cords) < 0.3 and max(cords) > 0.55  # the whole range is used, not 1.x's 0.25-0.45
    # edema at full weight: ratio x cord, capped at EDEMA_MAX x CSF
    s = np.linspace(0, 60, 61)
    zeros = np.zeros_like(s)
    les = Lesion(kind="astrocytoma", s_center=10, length=6, radius=0.5, off_u=0, off_v=0, end_power=2,
                 margin=0.05, irregular=0, edema_above=0, edema_below=40, edema_radius=1.0, edema_t2=1.8)
    for cord2, expect in ((0.3, 0.54), (0.6, EDEMA_MAX)):
        layer = render_lesions(s, zeros, zeros, [les], {"cord": (cord2, 0.5), "csf": (1.0, 0.1), "fat": (0.8, 1.0)}, zeros)
        core = layer.edema & (s > 25) & (s < 40)
        assert core.any()
        np.testing.assert_allclose(layer.t2[core], expect, rtol=1e-5)


def test_export_writes_an_exclusive_entry_whose_facts_are_in_the_graph(tmp_path):
    import onnx

    from deepseg_imsct.registry import METADATA_KEY, load_registry
    from imsct_train.export import export_trained

    reg = tmp_path / "model_registry.json"
    reg.write_text('{"schema": 1, "tasks": {}, "models": {}}')
    cfg = _campaign_config(tmp_path) | {"export": {"postprocessing": {c: {"threshold": 0.5} for c in GEOMETRY["classes"]},
                                                   "stride": [32, 8, 16]}}
    cfg["model"]["output"] = "exclusive"
    path = export_trained(CP.build_model(cfg).eval(), cfg, registry_path=reg)
    spec = load_registry(reg).model("t_seg", "t")
    assert spec.output == "exclusive" and spec.patch_size == (32, 16, 16)
    assert spec.stride == (32, 8, 16) and cfg["geometry"]["stride"] == GEOMETRY["stride"]  # the run-time stride; config untouched
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta[METADATA_KEY]) == spec.facts()


def test_training_reads_its_geometry_with_the_runtime_parser():
    from deepseg_imsct.errors import DeepsegError

    assert STAGE.patch_size == (32, 16, 16) and STAGE.safety_factor == (1.2, 1.2, 1.0)
    with pytest.raises(DeepsegError, match="patch_size must be 3 positive numbers"):
        StageConfig.from_dict(GEOMETRY | {"patch_size": [32, 16]})
    with pytest.raises(DeepsegError, match="last class must be the union"):
        StageConfig.from_dict(GEOMETRY | {"output": "exclusive", "classes": ["tumor", "edema"]})


def test_learning_curve_counts_a_redone_step_once(tmp_path):
    from imsct_train.history import markdown, rows

    recs = [{"loss": 2.0, "iteration": i, "compute_cpu_s": 3.0, "data_cpu_s": 0.6, "compute_s": 2.0} for i in (1, 2, 3)]
    recs += [{"loss": 1.0, "iteration": 3, "compute_cpu_s": 3.0, "data_cpu_s": 0.6, "compute_s": 2.0}]  # resumed: step 3 again
    recs += [{"iteration": 3, "validation": {"score": 0.5, "dice_tumor": 0.4}}]
    (tmp_path / "h.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    (row,) = rows(tmp_path / "h.jsonl")
    assert row["iteration"] == 3 and row["cpu_hours"] == pytest.approx(3 * 3.6 / 3600) and row["loss"] == pytest.approx(5 / 3)
    assert "| 3 | 0.00 | 1.667 | 2.0 | 3.00 / 0.60 | - | 0.500 | 0.400 | nan |" in markdown(tmp_path / "h.jsonl")
    recs[0]["loss"] = float("nan")  # step 1 non-finite (skipped by the optimizer): counted, not averaged
    (tmp_path / "h.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    (row,) = rows(tmp_path / "h.jsonl")
    assert row["loss"] == pytest.approx(1.5) and row["skipped"] == 1
    assert "| 3 | 0.00 | 1.500 (1 steps non-finite) |" in markdown(tmp_path / "h.jsonl")


def test_a_new_generator_links_the_crops_whose_parameters_did_not_change(tmp_path, crop_dir, monkeypatch):
    """prepare links a case from another generator's folder when its params_sha256 is the case's
    digest now, and builds the others; reuse_crop never links a different digest."""
    from imsct_train.phantoms import params_digest, sample_case_params
    from imsct_train.phantoms import dataset as D

    cfg = _campaign_config(tmp_path / "crops") | {"data": {"crops_dir": str(tmp_path / "crops"), "val_seeds": [100000, 100002]}}
    old = CP.crop_folder(cfg, "val")
    old.mkdir(parents=True)
    for k, seed in enumerate((100000, 100001)):
        x, y, meta = C.build_crop(standin_case(k + 1), STAGE, MARGIN)
        digest = params_digest(sample_case_params(seed)) if seed == 100000 else "stale"
        C.save_crop(old, x, y, meta | {"name": f"phantom-{seed:05d}", "params_sha256": digest})
    monkeypatch.setattr(D, "GENERATOR_VERSION", "9.9")
    pinned = cfg | {"data": cfg["data"] | {"generator": "1.0"}}
    assert CP.crop_folder(pinned, "val").parent.name.startswith("g1.0-")  # what a campaign trains on
    assert CP.crop_folder(cfg, "val").parent.name.startswith("g9.9-")  # default: this checkout's generator
    built = []
    monkeypatch.setattr(CP, "_prepare_one", lambda job: built.append(job[0]))
    new = CP.prepare(pinned, "val", jobs=1)  # prepare builds this checkout's generator's crops
    assert new != old and built == [100001]
    assert (new / "phantom-100000.x.npy").samefile(old / "phantom-100000.x.npy")
    assert json.loads((new / "phantom-100000.json").read_text())["params_sha256"] == params_digest(sample_case_params(100000))
    assert C.reuse_crop(tmp_path / "other", "phantom-100001", "fresh", [old]) is None
    assert not (tmp_path / "other").exists()


def test_scores_on_a_new_validation_set_start_a_new_best(tmp_path, crop_dir, monkeypatch):
    from imsct_train.phantoms import dataset as D

    cfg = _campaign_config(tmp_path / "crops")
    _copy_crops(cfg, crop_dir)
    camp = CP.Campaign(cfg, tmp_path / "run")
    camp.run(stop_at=2)
    first_set = camp.state["validation_set"]
    assert camp.state["best_iteration"] == 2 and first_set.startswith(f"g{D.GENERATOR_VERSION}-")
    camp.state["best_score"] = 2.0  # unbeatable on the old set
    monkeypatch.setattr(D, "GENERATOR_VERSION", "9.9")
    _copy_crops(cfg, crop_dir)
    camp.run(stop_at=4)
    assert camp.state["validation_set"].startswith("g9.9-") and camp.state["best_iteration"] == 4
    assert (tmp_path / "run" / f"best-{first_set}-step2.pt").exists()
    from imsct_train.history import rows

    assert [(r["iteration"], r["set"]) for r in rows(tmp_path / "run" / "history.jsonl")] == [(2, first_set), (4, camp.state["validation_set"])]


def test_a_derived_crop_equals_one_built_for_the_smaller_patch(tmp_path):
    """derive_crop re-boxes and re-z-scores a stored crop for a smaller A-P / R-L patch: the box is
    the runtime's for that geometry (within a voxel) and the channels equal a crop built anew."""
    small = StageConfig.from_dict(GEOMETRY | {"patch_size": [32, 8, 8], "stride": [16, 8, 8]})
    src, dst = tmp_path / "big", tmp_path / "small"
    compared = 0
    for seed in (1, 2, 3):
        case = standin_case(seed)
        x, y, meta = C.build_crop(case, STAGE, MARGIN)
        C.save_crop(src, x, y, meta)
        new = C.derive_crop(src, dst, meta["name"], small, (STAGE.patch_size, STAGE.stride))
        (big_box, _), (small_box, _) = C.runtime_box(case, STAGE), C.runtime_box(case, small)
        origin = np.asarray(big_box.start) - MARGIN  # the stored crop's first voxel on the working grid
        assert new["inner_start"][0] == MARGIN[0] and new["inner_size"][0] == big_box.size[0]  # S-I: unchanged rule
        np.testing.assert_allclose(origin + new["inner_start"], small_box.start, atol=1)
        assert tuple(new["inner_size"]) == small_box.size
        xb, _, mb = C.build_crop(case, small, MARGIN)
        derived = C.CropCase.load(dst, meta["name"], np.random.default_rng(0))
        shift = np.asarray(small_box.start) - MARGIN - origin  # built crop's origin in derived crop voxels
        got = derived.read_x(np.asarray(mb["inner_start"]) + shift, mb["inner_size"])
        want = xb[(slice(None), *(slice(a, a + n) for a, n in zip(mb["inner_start"], mb["inner_size"])))].astype(np.float32)
        if tuple(origin + new["inner_start"]) == small_box.start:
            np.testing.assert_allclose(got, want, atol=0.02)
            compared += 1
        assert (dst / f"{meta['name']}.x.npy").samefile(src / f"{meta['name']}.x.npy")
    assert compared >= 2
    assert derived.read_x((-5, 0, 0), (4, 2, 2)).tolist() == np.zeros((2, 4, 2, 2)).tolist()  # padding stays 0
    with pytest.raises(ValueError, match="derive from a built crop"):
        C.derive_crop(dst, tmp_path / "again", meta["name"], small, (small.patch_size, small.stride))


@pytest.mark.parametrize("thickness,phase", [(4.0, 0.0), (7.3, 2.1), (17.0, 11.0)])
def test_thick_slabs_average_each_slab_and_interpolate_between_centres(thickness, phase):
    """An axial thick-slab T1w (augmentation): a ramp along S stays the ramp away from the ends,
    a constant stays constant, and an edge is spread over about one slab."""
    n = 64
    ramp = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None], (n, 3, 2)).copy()
    out = C.thick_slabs(ramp, thickness, phase)
    inner = slice(int(phase + thickness) + 1, n - int(thickness) - 2)
    np.testing.assert_allclose(out[inner], ramp[inner], atol=1e-4)
    np.testing.assert_allclose(C.thick_slabs(np.full((n, 2), 3.0, np.float32), thickness, phase), 3.0, atol=1e-6)
    step = (np.arange(n) >= 32).astype(np.float32)[:, None]
    blurred = C.thick_slabs(step, thickness, phase)[:, 0]
    changing = np.flatnonzero((blurred > 1e-6) & (blurred < 1 - 1e-6))
    assert 0 < changing.size <= 2 * thickness + 1 and changing.min() >= 32 - 2 * thickness
    assert np.all(np.diff(blurred) >= -1e-6)  # monotone, no ringing


def test_slab_augmentation_changes_only_its_channel():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 32, 8, 8)).astype(np.float32)
    y = rng.integers(0, 4, (32, 8, 8)).astype(np.uint8)
    aug = C.PatchAug(p_gamma=0, p_contrast=0, p_brightness=0, p_noise=0, p_blur=0, p_lowres=0, p_mirror=(0, 0, 0), p_slab=1.0)
    xa, ya = C.augment_patch(x.copy(), y.copy(), aug, np.random.default_rng(1))
    np.testing.assert_array_equal(xa[0], x[0])
    np.testing.assert_array_equal(ya, y)
    assert not np.allclose(xa[1], x[1]) and xa[1].std() < 0.6 * x[1].std()  # slabs average the noise out


def test_gibbs_ringing_truncates_k_space_and_rings_at_an_edge():
    """Keeping all of k-space changes nothing; keeping half of it leaves a band-limited profile
    that overshoots a step (the ringing next to CSF on real 1 mm scans) and keeps its mean."""
    step = np.zeros((8, 64), np.float32)
    step[:, 24:40] = 1.0
    np.testing.assert_allclose(C.gibbs_ringing(step, 1, 1.0), step, atol=1e-5)
    rung = C.gibbs_ringing(step, 1, 0.5)
    spectrum = np.abs(np.fft.fft(rung, axis=1))[0]
    assert spectrum[np.abs(np.fft.fftfreq(64)) > 0.25].max() < 1e-4
    assert rung.max() > 1.05 and rung.min() < -0.05  # overshoot inside, undershoot outside
    np.testing.assert_allclose(rung.mean(1), step.mean(1), atol=1e-5)
    np.testing.assert_array_equal(rung[0], rung[5])  # only along the axis


def test_cord_rim_sharpens_the_cord_surface_and_undershoots_by_the_step():
    """Along A-P only: each surface voxel falls to its inner neighbour less depth x the step to
    the CSF outside; inner voxels, the outside, and a one-voxel-thin cord stay as they were."""
    profile = np.array([2.0, 2.0, 1.2, 0.3, 0.4, 0.3, 1.0, 2.0, 2.0], np.float32)
    cord1d = np.array([0, 0, 1, 1, 1, 1, 1, 0, 0], bool)
    ch = np.tile(profile[None, :, None], (3, 1, 4))
    cord = np.tile(cord1d[None, :, None], (3, 1, 4))
    out = C.cord_rim(ch, cord, 1, 0.1)
    expect = profile.copy()
    expect[2] = 0.3 - 0.1 * (2.0 - 0.3)
    expect[6] = 0.3 - 0.1 * (2.0 - 0.3)
    np.testing.assert_allclose(out[1, :, 2], expect, atol=1e-6)
    np.testing.assert_allclose(C.cord_rim(ch, cord, 1, 0.0)[0, [2, 6], 0], [0.3, 0.3], atol=1e-6)  # just sharp
    np.testing.assert_array_equal(C.cord_rim(ch, cord, 2, 0.1), ch)  # no surface along R-L: unchanged
    thin = np.zeros_like(cord)
    thin[:, 4] = True
    np.testing.assert_array_equal(C.cord_rim(ch, thin, 1, 0.2), ch)  # no inner neighbour: left alone
    dark_out = np.tile(np.array([0.0, 0.0, 0.5, 0.3, 0.3, 0.3, 0.5, 0.0, 0.0], np.float32)[None, :, None], (3, 1, 4))
    np.testing.assert_allclose(C.cord_rim(dark_out, cord, 1, 0.2)[0, :, 0], [0, 0, 0.3, 0.3, 0.3, 0.3, 0.3, 0, 0], atol=1e-6)


def test_rim_augmentation_changes_only_the_t2w_at_the_cord_surface_and_keeps_the_labels():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 16, 12, 6)).astype(np.float32)
    y = np.zeros((16, 12, 6), np.uint8)
    y[:, 3:9] = C.CORD_BIT
    y[4:8, 5:7] |= 1
    off = dict(p_gamma=0, p_contrast=0, p_brightness=0, p_noise=0, p_blur=0, p_lowres=0, p_mirror=(0, 0, 0))
    xa, ya = C.augment_patch(x.copy(), y.copy(), C.PatchAug(**off, p_rim=1.0), np.random.default_rng(1))
    np.testing.assert_array_equal(ya, y)
    np.testing.assert_array_equal(xa[1], x[1])
    changed = np.argwhere(xa[0] != x[0])
    assert len(changed) and set(changed[:, 1]) <= {3, 8}  # the A-P surface rows only
    xb, _ = C.augment_patch(x.copy(), y.copy(), C.PatchAug(**off, p_rim=0.0), np.random.default_rng(1))
    np.testing.assert_array_equal(xb, x)
