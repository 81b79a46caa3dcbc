"""The outputs contract: names, sidecars, temporary files, evaluation names and colours agree."""
from __future__ import annotations

from pathlib import Path

from deepseg_imsct import io, outputs
from deepseg_imsct.evaluate_files import LABELS, parse_name

CLASSES = ("tumor", "edema", "cavity", "whole-tumor")


def test_output_names_and_sidecars():
    paths = outputs.output_paths(Path("in/sub-01_T2w.nii.gz"), None, outputs.output_keys(CLASSES, qc=True))
    assert [p.name for p in paths.values()] == [f"sub-01_T2w_seg-{c}.nii.gz" for c in CLASSES] + \
        ["sub-01_T2w_seg-cord.nii.gz", "sub-01_T2w_cropbox.nii.gz"]
    assert all(p.parent == Path("in") for p in paths.values())
    assert outputs.sidecar_path(paths["seg-edema"]) == Path("in/sub-01_T2w_seg-edema.json")
    assert outputs.output_paths("a/x_T2w.nii", "out", ["seg-tumor"])["seg-tumor"] == Path("out/x_T2w_seg-tumor.nii.gz")


def test_the_evaluation_reads_every_name_the_command_writes():
    paths = outputs.output_paths(Path("sub-01_T2w.nii.gz"), None, outputs.output_keys(CLASSES, qc=True))
    parsed = {key: parse_name(p.name) for key, p in paths.items()}
    assert parsed == {**{f"seg-{c}": ("sub-01_T2w", c) for c in CLASSES}, "seg-cord": ("sub-01_T2w", "cord"),
                      "cropbox": ("sub-01_T2w", "cropbox")}
    assert set(LABELS) == {*CLASSES, "cord"}
    assert parse_name("sub-01_T2w_seg-brain.nii.gz") is None and parse_name("sub-01_T2w.nii.gz") is None


def test_the_temporary_files_written_are_the_ones_found(tmp_path):
    image = tmp_path / "sub-01_T2w_seg-tumor.nii.gz"
    other = tmp_path / "sub-01_T2w_seg-tumor-extra.nii.gz"
    with io._temporary(image) as tmp, io._temporary(outputs.sidecar_path(image)) as side, io._temporary(other):
        assert outputs.temporary_files({"seg-tumor": image}) == sorted([tmp, side])  # not the other output's
    assert outputs.temporary_files({"seg-tumor": image}) == []


def test_every_output_has_a_colour_and_a_place_in_the_draw_order():
    keys = outputs.output_keys(CLASSES, qc=True)
    assert set(keys) == set(outputs.COLOURS) == set(outputs.COLOUR_MAPS) == set(outputs.DRAW_ORDER)
    assert sorted(keys, key=outputs.draw_rank)[-1] == "seg-tumor"  # drawn on top
    assert len(set(outputs.COLOURS.values())) == len(keys)


def test_o_as_a_file_name_names_the_outputs_as_sct_deepseg_does():
    assert outputs.output_paths("in/x_T2w.nii.gz", "out/lesion.nii.gz", ["seg-tumor", outputs.STATS]) == {
        "seg-tumor": Path("out/lesion_seg-tumor.nii.gz"), outputs.STATS: Path("out/lesion_stats.tsv")}
    assert outputs.output_paths("in/x_T2w.nii.gz", "out/lesion.nii", ["seg-edema"])["seg-edema"] == Path("out/lesion_seg-edema.nii.gz")
    assert outputs.output_paths("in/x_T2w.nii.gz", "out/v1.0", ["seg-edema"])["seg-edema"] == Path("out/v1.0/x_T2w_seg-edema.nii.gz")


def test_the_statistics_table_has_its_json_as_sidecar():
    assert outputs.sidecar_path(Path("o/x_T2w_stats.tsv")) == Path("o/x_T2w_stats.json")
    assert outputs.sidecar_path(Path("o/x_T2w_seg-tumor.nii.gz")) == Path("o/x_T2w_seg-tumor.json")
