"""The reference toolbox's model folders: ivadomed configs mapped onto registry entries, and
`-install --from FOLDER` (verified by the git blob SHA-1 where known, custom models with a notice).

The configs in tests/fixtures/ivadomed are the r20201215 configs of the two published models as
../shared/reference/ivadomed-cascade.md describes them (training-only fields trimmed)."""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from deepseg_imsct import cache, cli, download
from deepseg_imsct.errors import DeepsegError
from deepseg_imsct.registry import load_registry, parse_entry
from deepseg_imsct.semantics import IVADOMED, LocalizerKeep
from deepseg_imsct.toolbox import entry_from_config, install_folder

FIXTURES = Path(__file__).parent / "fixtures" / "ivadomed"
LOC = "findcord_tumor"
SEG = "model_seg_sctumor-edema-cavity_t2-t1_unet3d-multichannel"


def config(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def test_the_localizer_config_maps_onto_the_shipped_entry():
    entry, notes = entry_from_config(config(LOC), f"{LOC}.onnx")
    shipped = load_registry().model(LOC)
    spec = parse_entry(LOC, "x", entry | {"sha256": "0" * 64, "size": 1, "sources": ["x"]}, Path("/r.json"))
    for field in ("contrasts", "spacing_mm", "patch_size", "stride", "classes", "postprocessing", "input_name"):
        assert getattr(spec, field) == getattr(shipped, field), field
    assert spec.semantics == IVADOMED and spec.semantics.localizer_keep is LocalizerKeep.LARGEST
    assert notes == ["the reference applies its RandomAffine at inference too (random each run); here it is the identity"]


def test_the_segmenter_config_maps_onto_the_shipped_entry():
    entry, notes = entry_from_config(config(SEG), f"{SEG}.onnx")
    assert entry["contrasts"] == ["t2", "t1"] and entry["classes"] == ["tumor", "edema", "cavity", "whole-tumor"]
    assert entry["patch_size"] == [128, 128, 32] and entry["stride"] == [64, 64, 32] and entry["spacing_mm"] == [1.0, 1.0, 2.0]
    assert entry["safety_factor"] == [1.2, 1.2, 1.0] and notes == []
    assert entry["postprocessing"]["cavity"] == {"threshold": 0.5, "fill_holes": True, "min_volume_cm3": 0.0, "min_voxels": 100}
    spec = parse_entry(SEG, "x", entry | {"sha256": "0" * 64, "size": 1, "sources": ["x"]}, Path("/r.json"))
    shipped = load_registry().model(SEG)
    for field in ("contrasts", "spacing_mm", "patch_size", "stride", "classes", "postprocessing", "safety_factor", "semantics"):
        assert getattr(spec, field) == getattr(shipped, field), field


def test_mapping_variants_per_class_voxels_mm3_order_and_no_keep_largest():
    cfg = config(SEG)
    cfg["postprocessing"] = {"binarize_prediction": {"thr": 0.4}, "fill_holes": {}, "remove_small": {"thr": [100, 250, 250, 100], "unit": "vox"}}
    entry, _ = entry_from_config(cfg, "m.onnx")
    assert [p["min_voxels"] for p in entry["postprocessing"].values()] == [100, 250, 250, 100]
    assert entry["postprocessing"]["edema"]["threshold"] == 0.4 and entry["semantics"]["postprocess_order"] == "fill_then_remove"
    cfg["postprocessing"] = {"remove_small": {"thr": 200, "unit": "mm3"}}
    entry, _ = entry_from_config(cfg, "m.onnx")
    assert entry["postprocessing"]["tumor"] == {"threshold": 0.5, "fill_holes": False, "min_volume_cm3": 0.2, "min_voxels": 0}
    loc = config(LOC)
    del loc["postprocessing"]["keep_largest"]  # the toolbox >= 7.0 drops it
    assert entry_from_config(loc, "l.onnx")[0]["semantics"]["localizer_keep"] == "all"


@pytest.mark.parametrize("change,message", [
    (lambda c: c["transformation"].pop("NormalizeInstance"), "only instance-normalized models"),
    (lambda c: c["transformation"].pop("Resample"), "spacing is unknown"),
    (lambda c: c["loader_parameters"].update(slice_axis="axial"), "only sagittal models"),
    (lambda c: c.pop("Modified3DUNet"), "no 3D model parameters"),
    (lambda c: c["postprocessing"].update(remove_small={"thr": [1, 2], "unit": "vox"}), "2 thresholds for 4 classes"),
    (lambda c: c["default_model"].update(final_activation="softmax"), "only sigmoid models"),
])
def test_configs_this_package_cannot_run_are_refused(change, message):
    cfg = copy.deepcopy(config(SEG))
    change(cfg)
    with pytest.raises(ValueError, match=message):
        entry_from_config(cfg, "m.onnx")


def _toolbox(tmp_path: Path, blobs_match: bool) -> tuple[Path, dict]:
    """$SCT_DIR/data/deepseg_models with the two model folders (random-weight graphs of the
    published signature); a registry whose entries carry these files' blobs when ``blobs_match``."""
    from test_archive import blob, random_onnx

    root = tmp_path / "deepseg_models"
    files = {}
    for name, (c, k) in ((LOC, (1, 1)), (SEG, (2, 4))):
        (root / name).mkdir(parents=True)
        files[name] = random_onnx(root / name / f"{name}.onnx", c, k)
        shutil.copy(FIXTURES / f"{name}.json", root / name / f"{name}.json")
    data = json.loads((Path(load_registry().path)).read_text())
    for name in (LOC, SEG):
        data["models"][name]["versions"]["r20201215"]["blob_sha1"] = blob(files[name]) if blobs_match else "0" * 40
    path = tmp_path / "registry" / "model_registry.json"
    path.parent.mkdir()
    path.write_text(json.dumps(data))
    return root, files


def test_install_from_a_toolbox_folder_verifies_each_file_by_its_blob(tmp_path, monkeypatch):
    root, files = _toolbox(tmp_path, blobs_match=True)
    monkeypatch.setenv("DEEPSEG_IMSCT_REGISTRY", str(tmp_path / "registry" / "model_registry.json"))
    assert cli.main(["-install", "--from", str(root)]) == 0
    reg = load_registry()
    for name in (LOC, SEG):
        spec = download.verified_spec(reg.model(name))
        assert spec.sha256 == hashlib.sha256(files[name]).hexdigest() and download.is_installed(spec)


def test_a_custom_model_folder_is_accepted_with_a_notice_into_a_registry_of_its_own(tmp_path, monkeypatch, caplog):
    root, files = _toolbox(tmp_path, blobs_match=False)
    shutil.rmtree(root / LOC)
    monkeypatch.setenv("DEEPSEG_IMSCT_REGISTRY", str(tmp_path / "registry" / "model_registry.json"))
    with caplog.at_level(logging.WARNING, logger="deepseg_imsct"):
        installed = install_folder(root, load_registry(), "tumor_edema_cavity_t1_t2")
    custom = cache.cache_dir() / "custom" / "model_registry.json"
    assert installed == [cache.cache_dir() / "custom" / f"custom_{SEG}" / f"{SEG}.onnx"]
    assert "accepted unverified" in caplog.text and str(custom) in caplog.text
    reg = load_registry(custom)
    task = reg.task("tumor_edema_cavity_t1_t2")
    assert (task.localizer, task.segmenter) == (LOC, f"custom_{SEG}")
    spec = reg.model(task.segmenter)
    assert spec.semantics == IVADOMED and spec.model_set == "custom" and download.ensure_model(spec, offline=True) == installed[0]
    assert reg.model(LOC).blob_sha1 == "0" * 40  # the published localizer, still to be verified when installed


def test_a_folder_without_model_folders_or_with_a_bad_config_is_refused(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"x")
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(DeepsegError, match=r"m.json cannot be mapped onto a model of this package"):
        install_folder(tmp_path, load_registry(), "tumor_edema_cavity_t1_t2")


def test_the_shipped_sct_entries_run_the_cascade_once_installed_from_a_toolbox_folder(tmp_path, monkeypatch):
    """The shipped entries (blobs pointed at random-weight graphs of the published signature):
    installed from a toolbox folder, then run offline on a phantom with their 512x256x32 block."""
    import numpy as np
    import synthetic

    from deepseg_imsct.pipeline import Predictor

    root, _ = _toolbox(tmp_path, blobs_match=True)
    monkeypatch.setenv("DEEPSEG_IMSCT_REGISTRY", str(tmp_path / "registry" / "model_registry.json"))
    assert cli.main(["-install", "--from", str(root)]) == 0
    predictor = Predictor(model_set="sct", offline=True)
    assert predictor.localizer.spec.patch_size == (512, 256, 32) and predictor.segmenter.spec.semantics == IVADOMED
    t2, t1, _ = synthetic.case()
    result = predictor(t2, t1)
    assert set(result.masks) == {"tumor", "edema", "cavity", "whole-tumor"}
    assert all(m.shape == t2.shape and set(np.unique(np.asanyarray(m.dataobj))) <= {0, 1} for m in result.masks.values())
    assert predictor.provenance()["ModelSet"] == "sct"
