"""The task object a toolbox discovers through the entry point, and its parameter specs."""
from __future__ import annotations

import nibabel as nib
import pytest

from deepseg_imsct.params import ParamKind
from deepseg_imsct.task import TUMOR_EDEMA_CAVITY, Task, discover_tasks

from onnx_models import CLASSES, write_registry
from test_pipeline import write_case


def test_the_task_is_discoverable_through_its_entry_point():
    tasks = discover_tasks()
    assert tasks["tumor_edema_cavity_t1_t2"] == TUMOR_EDEMA_CAVITY  # sct_deepseg's current name
    assert tasks["seg_tumor-edema-cavity_t1-t2"] == TUMOR_EDEMA_CAVITY  # the older name, an alias


@pytest.fixture
def task(tmp_path) -> Task:
    seg_post = {c: {"threshold": 0.5, "fill_holes": True, "min_volume_cm3": v} for c, v in zip(CLASSES, [0.2, 0.5, 0.5, 0.2])}
    return Task("tumor_edema_cavity_t1_t2", write_registry(tmp_path / "models", seg_post=seg_post))


def test_task_describes_itself_from_the_registry(task):
    assert task.aliases == ("seg_tumor-edema-cavity_t1-t2",)
    assert task.contrasts == ("t2", "t1")
    assert task.models == ("loc", "seg")
    assert task.output_suffixes()["whole-tumor"] == "_seg-whole-tumor"
    params = {p.name: p for p in task.parameters()}
    assert params["min_volume_cm3"].default == {"tumor": 0.2, "edema": 0.5, "cavity": 0.5, "whole-tumor": 0.2}
    assert params["min_volume_cm3"].per_class and params["min_volume_cm3"].unit == "cm³"
    assert params["threshold"].kind is ParamKind.FLOAT and params["threshold"].maximum == 1.0
    assert params["soft"].default is False and params["out_dir"].kind is ParamKind.PATH


def test_task_run_uses_form_values(task, tmp_path):
    t2, t1 = write_case(tmp_path / "in")
    paths = task.run({"t2": t2, "t1": t1}, {"out_dir": tmp_path / "out", "soft": True, "threads": 1})
    assert set(paths) == {f"seg-{c}" for c in CLASSES}
    assert nib.load(paths["seg-tumor"]).get_data_dtype() == "float32"
