"""The one parameter vocabulary: specs, checks, the translator, and what is generated from them."""
from __future__ import annotations

import configparser
from pathlib import Path
from types import SimpleNamespace

import pytest

from deepseg_imsct import cli, outputs
from deepseg_imsct.errors import DeepsegError
from deepseg_imsct.params import ParamKind, configure, convert_all, parameters
from deepseg_imsct.postprocess import ClassPost
from deepseg_imsct.registry import ClassDefaults
from deepseg_imsct.semantics import IVADOMED, NATIVE

CLASSES = ("tumor", "edema", "cavity", "whole-tumor")
MODEL = SimpleNamespace(classes=("tumor", "edema"), semantics=NATIVE,
                        postprocessing={"tumor": ClassDefaults(0.7, True, 0.2), "edema": ClassDefaults(0.3, True, 0.5)})


def test_defaults_come_from_the_registry_entry():
    settings = configure(MODEL, {})
    assert settings.post.classes == {"tumor": ClassPost(0.7, True, 0.2), "edema": ClassPost(0.3, True, 0.5)}
    assert not settings.post.soft and not settings.qc and settings.out_dir is None and settings.runtime.threads == 0


def test_reference_semantics_reach_the_post_processing_and_a_user_volume_replaces_the_voxel_count():
    """A model with the reference's semantics: remove small (100 native voxels) before filling
    holes (26-connected background); a -remove-small given for a class replaces its voxel count."""
    model = SimpleNamespace(classes=("tumor", "edema"), semantics=IVADOMED,
                            postprocessing={c: ClassDefaults(0.5, True, 0.0, 100) for c in ("tumor", "edema")})
    assert configure(model, {}).post.classes["tumor"] == ClassPost(0.5, True, 0.0, 100, True, 3)
    post = configure(model, {"min_volume_cm3": {"edema": 0.2}}).post.classes
    assert post["tumor"].min_voxels == 100 and post["edema"] == ClassPost(0.5, True, 0.2, 0, True, 3)


def test_the_model_set_is_one_of_the_named_sets():
    assert configure(MODEL, {}).model_set == "phantom" and configure(MODEL, {"model_set": "sct"}).model_set == "sct"
    with pytest.raises(DeepsegError, match=r"model_set: 'nnunet' is not one of phantom, sct"):
        configure(MODEL, {"model_set": "nnunet"})


def test_overrides_one_value_or_per_class():
    settings = configure(MODEL, {"threshold": 0.4, "min_volume_cm3": {"edema": 1.0}, "fill_holes": {"tumor": False},
                                 "soft": True, "qc": "qc", "out_dir": " out ", "threads": 3})
    assert settings.post.classes == {"tumor": ClassPost(0.4, False, 0.2), "edema": ClassPost(0.4, True, 1.0)}
    assert settings.post.soft and settings.qc == Path("qc") and settings.out_dir == Path("out") and settings.runtime.threads == 3


@pytest.mark.parametrize(
    "values,message",
    [({"threshold": {"cavity": 0.5}}, r"threshold: unknown class cavity \(classes: tumor edema\)"),
     ({"threshold": 1.5}, r"threshold of tumor: threshold 1.5 is not a probability in \[0, 1\]"),
     ({"threshold": float("nan")}, "not a probability"),
     ({"min_volume_cm3": -1}, r"min_volume_cm3 of tumor: -1 is not a volume from 0 to 1000 cm³"),
     ({"min_volume_cm3": "0.2vox"}, "'0.2vox' is not a whole number of voxels"),
     ({"min_volume_cm3": "0.2"}, "'0.2' has no unit: write 0.2cm3, 0.2mm3 or 0.2vox"),
     ({"min_volume_cm3": "0.2 litres"}, r"'0.2 litres' is not a volume \(write it with a unit: 0.2cm3, 200mm3 or 100vox\)"),
     ({"threshold": {"edema": 0}}, "threshold: threshold 0 .* applies to every class, not only edema: give 0 alone"),
     ({"fill_holes": "yes"}, "'yes' is not 0 or 1"),
     ({"threads": -1}, r"threads must be from 0 to 1024 \(0 lets ONNX Runtime use the physical cores\)"),
     ({"threads": "many"}, "threads: 'many' is not a whole number"),
     ({"thresholds": 0.5}, "unknown parameter thresholds")],
)
def test_bad_values_are_refused_with_the_fix(values, message):
    with pytest.raises(DeepsegError, match=message):
        configure(MODEL, values)


@pytest.mark.parametrize("text,cm3", [("200mm3", 0.2), ("1cm3", 1.0), (" 5e2 mm3 ", 0.5), (".5cm3", 0.5), (0.3, 0.3)])
def test_volumes_as_text_take_units(text, cm3):
    spec = next(s for s in parameters(MODEL.postprocessing) if s.name == "min_volume_cm3")
    assert spec.kind is ParamKind.VOLUME and spec.convert(text, "-remove-small") == pytest.approx(cm3)


def test_volumes_in_voxels_are_kept_as_voxels():
    settings = configure(MODEL, {"min_volume_cm3": {"edema": "100vox"}})
    assert settings.post.classes["edema"] == ClassPost(0.3, True, 0.0, 100)
    assert settings.post.classes["edema"].min_volume_mm3(0.5) == 50.0
    assert settings.post.classes["tumor"].min_volume_mm3(0.5) == pytest.approx(200.0)  # 0.2 cm³ from the registry


def test_threshold_zero_for_every_class_means_soft_output():
    assert configure(MODEL, {"threshold": 0}).post.soft
    assert configure(MODEL, {"threshold": {"tumor": 0, "edema": 0.0}}).post.soft
    assert not configure(MODEL, {"threshold": 0.01}).post.soft


def test_every_parameter_is_a_command_option_and_a_form_label():
    specs = parameters(MODEL.postprocessing)
    parser = cli.build_parser(specs, MODEL.classes)
    options = {o for action in parser._actions for o in action.option_strings}
    assert all(spec.option in options and spec.label and spec.help for spec in specs)
    assert len({s.name for s in specs}) == len(specs)


def test_help_shows_the_registry_defaults_per_class():
    help_text = " ".join(cli.build_parser(parameters(MODEL.postprocessing), MODEL.classes).format_help().split())
    assert "(default: tumor 0.7, edema 0.3)" in help_text and "(default: tumor 0.2, edema 0.5 cm³)" in help_text
    assert "(default: 1)" in help_text  # fill holes: the same for every class


@pytest.mark.parametrize(
    "values,expected",
    [(["0.2"], {c: "0.2" for c in CLASSES}), (["1", "2", "3", "4"], dict(zip(CLASSES, "1234"))),
     (["cavity=5e2mm3"], {"cavity": "5e2mm3"})],
)
def test_the_command_per_class_syntax(values, expected):
    assert cli.per_class(values, CLASSES, "-remove-small") == expected


def test_the_command_per_class_syntax_counts_values():
    with pytest.raises(DeepsegError, match=r"-remove-small takes 1 value, 4 values \(tumor edema cavity whole-tumor\)"):
        cli.per_class(["1", "2"], CLASSES, "-remove-small")


def test_command_text_goes_through_the_same_translator():
    args = cli.build_parser(parameters(MODEL.postprocessing), MODEL.classes).parse_args(
        ["-thr", "edema=0.45", "-remove-small", "300mm3", "-fill-holes", "0", "1", "-threads", "2", "-model-set", "sct"])
    values = cli.user_values(args, parameters(MODEL.postprocessing), MODEL.classes)
    assert convert_all(parameters(MODEL.postprocessing), MODEL.classes, values) == {
        "threshold": {"tumor": 0.7, "edema": 0.45}, "fill_holes": {"tumor": False, "edema": True},
        "min_volume_cm3": {"tumor": 0.3, "edema": 0.3}, "soft": False, "qc": None, "out_dir": None, "overwrite": False,
        "threads": 2, "model_set": "sct"}


def test_the_default_task_is_the_registered_entry_point():
    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).parent.parent / "setup.cfg")
    names = [line.split("=")[0].strip() for line in cfg["options.entry_points"]["deepseg_imsct.tasks"].splitlines() if line.strip()]
    assert names == [outputs.DEFAULT_TASK]
