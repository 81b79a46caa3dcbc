"""Choosing the model set (-model-set phantom|sct) from the command, the API and the GUI form; the
'sct' set installed from tag archives over HTTP and run with the reference semantics."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import synthetic
from deepseg_imsct import cli, outputs
from deepseg_imsct.gui import logic
from deepseg_imsct.params import ParamKind
from deepseg_imsct.pipeline import Predictor, segment_files
from deepseg_imsct.task import Task
from http_server import FlakyServer, send_bytes
from onnx_models import CLASSES, write_registry
from test_archive import blob, tag_zip


@pytest.fixture
def sct_registry(tmp_path, monkeypatch):
    """The test registry's phantom set, plus an 'sct' set of blob-verified copies of its analytic
    models with the reference semantics, served as tag archives by a local HTTP server."""
    with FlakyServer() as srv:
        folder = tmp_path / "models"
        path = write_registry(folder)
        ref = write_registry(tmp_path / "ref", loc_patch=(128, 128, 32), loc_spacing=(1.0, 1.0, 2.0), seg_patch=(32, 32, 16),
                             seg_stride=(16, 16, 16), semantics={"preset": "ivadomed"}, level=0.5)
        data, ref_data = json.loads(path.read_text()), json.loads(ref.read_text())
        for stage, name in (("loc", "sct_loc"), ("seg", "sct_seg")):
            entry = ref_data["models"][stage]["versions"]["1.0"]
            onnx = (tmp_path / "ref" / entry["file"]).read_bytes()
            url = srv.route(f"/{name}/archive/r1.zip", send_bytes(tag_zip(name, {f"{name}.onnx": onnx, f"{name}.json": b"{}"})))
            for key in ("sha256", "size"):
                entry.pop(key)
            entry |= {"file": f"{name}.onnx", "blob_sha1": blob(onnx), "sources": [url], "model_set": "sct"}
            data["models"][name] = {"default_version": "r1", "versions": {"r1": entry}}
        data["tasks"][outputs.DEFAULT_TASK]["model_sets"] = {"sct": {"localizer": "sct_loc", "segmenter": "sct_seg"}}
        path.write_text(json.dumps(data))
        monkeypatch.setenv("DEEPSEG_IMSCT_REGISTRY", str(path))
        yield srv


def _case(folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    t2, t1, _ = synthetic.case()
    nib.save(t2, folder / "sub-01_T2w.nii.gz")
    nib.save(t1, folder / "sub-01_T1w.nii.gz")
    return folder / "sub-01_T2w.nii.gz", folder / "sub-01_T1w.nii.gz"


def test_the_command_installs_and_runs_the_sct_set_and_the_sidecar_records_it(sct_registry, tmp_path):
    t2, t1 = _case(tmp_path / "in")
    assert cli.main(["-install", "-model-set", "sct"]) == 0
    assert sct_registry.hits == {"/sct_loc/archive/r1.zip": 1, "/sct_seg/archive/r1.zip": 1}
    assert "-model-set sct: model sct_seg r1 [installed]" in cli.list_tasks()
    assert cli.main(["-i", str(t2), str(t1), "-model-set", "sct", "-o", str(tmp_path / "sct"), "-offline"]) == 0
    side = json.loads((tmp_path / "sct" / "sub-01_T2w_seg-tumor.json").read_text())
    made = side["GeneratedBy"][0]
    assert made["ModelSet"] == "sct" and set(made["Models"]) == {"sct_loc", "sct_seg"}
    assert len(made["Models"]["sct_seg"]["sha256"]) == 64 and len(made["Models"]["sct_seg"]["git_blob_sha1"]) == 40
    assert made["Models"]["sct_loc"]["model_set"] == "sct"
    assert side["Postprocessing"]["classes"]["tumor"]["remove_first"] is True  # the reference's order
    assert cli.main(["-i", str(t2), str(t1), "-o", str(tmp_path / "phantom")]) == 0
    made = json.loads((tmp_path / "phantom" / "sub-01_T2w_seg-tumor.json").read_text())["GeneratedBy"][0]
    assert made["ModelSet"] == "phantom" and set(made["Models"]) == {"loc", "seg"}


def test_the_sct_set_installs_offline_from_its_tag_archives(sct_registry, tmp_path):
    from deepseg_imsct import download
    from deepseg_imsct.registry import load_registry

    reg = load_registry()
    for name in ("sct_loc", "sct_seg"):
        spec = reg.model(name)
        onnx = (tmp_path / "ref" / ("loc.onnx" if name == "sct_loc" else "seg.onnx")).read_bytes()
        (tmp_path / f"{name}.zip").write_bytes(tag_zip(name, {spec.file: onnx}))
        assert cli.main(["-install", "-model-set", "sct", "--from", str(tmp_path / f"{name}.zip")]) == 0
        assert download.is_installed(spec)
    assert sct_registry.hits == {}  # no network
    (tmp_path / "other.zip").write_bytes(tag_zip("other", {"other.onnx": b"x"}))
    assert cli.main(["-install", "-model-set", "sct", "--from", str(tmp_path / "other.zip")]) == 2


def test_the_api_chooses_the_set(sct_registry, tmp_path):
    t2, t1 = _case(tmp_path / "in")
    phantom, sct = Predictor(), Predictor(model_set="sct")
    assert (phantom.model_set, sct.model_set) == ("phantom", "sct")
    assert sct.segmenter.spec.semantics.grid.value == "zoom" and phantom.segmenter.spec.semantics.grid.value == "scanner"
    # the same kind of analytic models, normalized per crop or per window: different masks
    a, b = (np.asanyarray(p(str(t2), str(t1)).masks["tumor"].dataobj) > 0 for p in (phantom, sct))
    assert a.sum() > 100 and b.sum() > 100 and not np.array_equal(a, b)
    written = segment_files(t2, t1, tmp_path / "api", model_set="sct")
    assert json.loads(written["seg-tumor"].with_suffix("").with_suffix(".json").read_text())["GeneratedBy"][0]["ModelSet"] == "sct"
    with pytest.raises(Exception, match="has no model set 'nnunet'"):
        Predictor(model_set="nnunet")


def test_the_gui_form_offers_the_model_set_and_passes_it_to_the_command():
    task = Task(outputs.DEFAULT_TASK)
    specs = task.parameters()
    field = next(f for f in logic.form_fields(specs, task.classes()) if f.key == "model_set")
    assert field.kind is ParamKind.CHOICE and field.default == "phantom" and field.spec.choices == ("phantom", "sct")
    params = logic.parse_values(logic.form_fields(specs, task.classes()), {"model_set": "sct"})
    args = logic.command_args(task.name, Path("a.nii.gz"), Path("b.nii.gz"), params, specs)
    assert args[4:] == ["-model-set", "sct"]
    assert cli.build_parser(specs, task.classes()).parse_args(args).model_set == "sct"
