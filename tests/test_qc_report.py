"""The QC report (-qc FOLDER): pictures, records, the index gathering every run, flags (qc_report.py, qc_pictures.py)."""
from __future__ import annotations

import json
import re

import imageio.v3 as iio
import numpy as np
import pytest

from deepseg_imsct import cli, outputs, qc_pictures, qc_report
from deepseg_imsct.errors import DeepsegError
from deepseg_imsct.pipeline import segment_files

from test_pipeline import write_case


def rows(index) -> list[str]:
    return re.findall(r'<td id="([^"]+)">', index.read_text())


def test_a_run_writes_the_report_and_its_qc_masks_into_the_folder(registry, tmp_path):
    t2, t1 = write_case(tmp_path / "in")
    written = segment_files(t2, t1, tmp_path / "out", qc=tmp_path / "qc")
    qc = tmp_path / "qc"
    assert written[outputs.CORD] == qc / "sub-01_T2w_seg-cord.nii.gz" and written[outputs.CROPBOX].parent == qc
    assert not list((tmp_path / "out").glob("*cord*")) and not list((tmp_path / "out").glob("*cropbox*"))
    index = qc / "index.html"
    assert written["index"] == index and qc_report.GENERATOR in index.read_text() and rows(index) == ["sub-01_T2w"]
    record = json.loads((qc / "sub-01_T2w_qc.json").read_text())
    assert record["Statistics"] == written.stats and record["Sources"]["T2w"] == str(t2)
    assert [p["name"] for p in record["Pictures"]] == ["sagittal", "axial", "cord"]
    for picture in record["Pictures"]:
        rgb = iio.imread(qc / picture["file"])
        assert rgb.shape == (picture["height"], picture["width"], 3) and 100 <= picture["width"] <= 4000, picture
        assert rgb.std() > 10, f"{picture['file']} is blank"
        assert f'src="{picture["file"]}" width="{picture["width"]}" height="{picture["height"]}"' in index.read_text()
    sagittal = iio.imread(qc / record["Pictures"][0]["file"]).reshape(-1, 3)
    for key in ("seg-tumor", outputs.CROPBOX):  # the classes and the crop box outlined in their colours
        colour = (np.array(outputs.COLOURS[key]) * 255).astype(np.uint8)
        assert (sagittal == colour).all(axis=1).sum() > 20, key


def test_runs_add_rows_and_a_rerun_replaces_its_own(registry, tmp_path):
    qc = tmp_path / "qc"
    a = write_case(tmp_path / "a")
    b = [p.rename(p.with_name(p.name.replace("sub-01", "sub-02"))) for p in write_case(tmp_path / "b")]
    segment_files(*a, qc=qc)
    segment_files(*b, qc=qc)
    assert rows(qc / "index.html") == ["sub-01_T2w", "sub-02_T2w"]
    segment_files(*a, qc=qc, threshold=0.9)
    assert rows(qc / "index.html") == ["sub-01_T2w", "sub-02_T2w"]
    assert not [p for p in qc.iterdir() if p.name.endswith(outputs.TEMP_SUFFIX)]
    assert qc_report.index_html(qc_report.records(qc)) == (qc / "index.html").read_text()  # rebuilt from the records


def test_an_index_not_written_here_is_refused_before_any_work(registry, tmp_path, capsys):
    t2, t1 = write_case(tmp_path / "in")
    qc = tmp_path / "qc"
    qc.mkdir()
    (qc / "index.html").write_text("<html>the reference toolbox's report</html>")
    assert cli.main(["-i", str(t2), str(t1), "-qc", str(qc)]) == 2
    assert "index.html was not written by imsct_deepseg: choose another -qc folder" in capsys.readouterr().err
    assert not (tmp_path / "in" / "sub-01_T2w_seg-tumor.nii.gz").exists()
    assert cli.main(["-i", str(t2), str(t1), "-qc", str(qc), "-overwrite"]) == 0
    assert rows(qc / "index.html") == ["sub-01_T2w"]


def test_flags():
    box = np.zeros((10, 10, 10), bool)
    box[2:8, 2:8, 2:8] = True
    inside = np.zeros_like(box)
    inside[4:6, 4:6, 4:6] = True
    edge = np.zeros_like(box)
    edge[2:4, 4:6, 4:6] = True
    empty = np.zeros_like(box)
    assert qc_report.flags({"seg-tumor": inside}, box, True, False, []) == []
    assert qc_report.flags({"seg-tumor": empty}, box, True, False, []) == ["empty"]
    assert qc_report.flags({"seg-tumor": inside, "seg-edema": edge}, box, True, False, []) == ["box_edge"]
    assert qc_report.flags({"seg-tumor": inside}, box, False, True, ["inputs look swapped"]) == ["no_cord", "t1_resampled", "warnings"]


def test_pictures_keep_the_physical_aspect_and_outline_one_pixel():
    plane = np.arange(12.0).reshape(3, 4)
    assert qc_pictures.resize_nearest(plane, (3.5, 0.7), 0.7).shape == (15, 4)  # 3 rows of 3.5 mm -> 15 pixels of 0.7 mm
    mask = np.zeros((6, 6), bool)
    mask[1:5, 1:5] = True
    line = qc_pictures.outline(mask)
    assert line.sum() == 12 and not line[2:4, 2:4].any()
    volume, zooms = qc_pictures.to_ras(np.zeros((2, 3, 4)), np.array([[0, 0, -2.0, 0], [3.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]]))
    assert volume.shape == (4, 2, 3) and zooms.tolist() == [2.0, 3.0, 1.0]


def test_no_lesion_no_axial_picture(registry, tmp_path):
    t2, t1 = write_case(tmp_path / "in")
    written = segment_files(t2, t1, qc=tmp_path / "qc", min_volume_cm3=999)  # every component removed
    record = json.loads(written["record"].read_text())
    assert [p["name"] for p in record["Pictures"]] == ["sagittal", "cord"] and "empty" in record["Flags"]
    with pytest.raises(DeepsegError, match="is not a folder path"):
        segment_files(t2, t1, qc=True)  # -qc was a flag: now the report's folder
    from deepseg_imsct.pipeline import Predictor

    with pytest.raises(DeepsegError, match="qc: True is not a folder path: give the QC report's folder"):
        Predictor().run_files(t2, t1, qc=True)


def test_warnings_of_a_run_are_kept_in_the_result():
    import logging

    from deepseg_imsct.logs import collect_warnings

    kept: list[str] = []
    with collect_warnings(kept):
        logging.getLogger("deepseg_imsct.localize").warning("the inputs look %s", "swapped")
        logging.getLogger("deepseg_imsct.localize").info("not kept")
    logging.getLogger("deepseg_imsct").warning("after: not kept")
    assert kept == ["the inputs look swapped"]


def test_a_run_without_cord_is_flagged(tmp_path, monkeypatch):
    from onnx_models import write_registry

    monkeypatch.setenv("DEEPSEG_IMSCT_REGISTRY", str(write_registry(tmp_path / "models", loc_min_volume_cm3=1000.0)))
    t2, t1 = write_case(tmp_path / "in")
    written = segment_files(t2, t1, qc=tmp_path / "qc")
    assert not written.result.cord_found and any("found no spinal cord" in w for w in written.result.warnings)
    assert not written.stats["Cord"]["found"]  # positions along the scanner's S-I axis
    record = json.loads(written["record"].read_text())
    assert {"no_cord", "warnings"} <= set(record["Flags"]) and record["Warnings"] == written.result.warnings
    assert qc_report.FLAGS["no_cord"] in (tmp_path / "qc" / "index.html").read_text()


def test_soft_output_gets_a_report_without_statistics(registry, tmp_path):
    t2, t1 = write_case(tmp_path / "in")
    written = segment_files(t2, t1, tmp_path / "out", qc=tmp_path / "qc", soft=True)
    assert written.stats is None and outputs.STATS not in written
    record = json.loads(written["record"].read_text())
    assert record["Statistics"] is None and [p["name"] for p in record["Pictures"]] == ["sagittal", "axial", "cord"]
    assert "no statistics (soft output)" in (tmp_path / "qc" / "index.html").read_text()


def test_temporary_files_of_every_kind_written_here_are_recognized():
    for name in ("x_T2w_stats.tsv", "x_T2w_qc-axial.png", "index.html", "x_T2w_seg-tumor.nii.gz", "x_T2w_qc.json"):
        assert outputs.TEMP_NAME.match(f".{name}.k2j4h_9a.part"), name
    assert not outputs.TEMP_NAME.match("notes.txt.abc.part") and not outputs.TEMP_NAME.match("x_T2w_stats.tsv")
