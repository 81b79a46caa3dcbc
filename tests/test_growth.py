"""Growth between visits on phantom pairs of known growth (growth.py, growth_cli.py)."""
from __future__ import annotations

import datetime
import json
import math

import nibabel as nib
import numpy as np
import pytest

from deepseg_imsct import growth_cli
from deepseg_imsct.errors import DeepsegError
from deepseg_imsct.growth import DAYS_PER_YEAR, growth, match_lesions, table
from deepseg_imsct.stats import lesion_stats

from test_stats import AFFINE, SHAPE, rotation_x

D1, D2 = datetime.date(2024, 1, 1), datetime.date(2025, 1, 1)  # 366 days
YEARS = 366 / DAYS_PER_YEAR


def visit(tumor_rows: tuple[int, int], cord_rows=(40, 440), edema_rows=None):
    """Masks of one visit on the test grid: a tumor box (rows along the cord: 0.5 mm each, 6 x 6 mm
    cross-section: 18 mm³ per row), optionally an edema box far from it."""
    i, j, k = np.indices(SHAPE)
    cross = (j >= 24) & (j < 36) & (k >= 6) & (k < 9)
    cord = (i >= cord_rows[0]) & (i < cord_rows[1]) & (((j - 30) * 0.5) ** 2 + ((k - 7) * 2.0) ** 2 <= 16)
    tumor = (i >= tumor_rows[0]) & (i < tumor_rows[1]) & cross
    edema = (i >= edema_rows[0]) & (i < edema_rows[1]) & cross if edema_rows else np.zeros(SHAPE, bool)
    return {"tumor": tumor, "edema": edema, "whole-tumor": tumor | edema}, cord


def stats_of(masks_cord, affine=AFFINE):
    return lesion_stats(*masks_cord, affine)


def test_doubling_in_a_year_on_another_scanner_position():
    first = stats_of(visit((100, 120)))  # 360 mm³
    moved = rotation_x(12) @ AFFINE
    moved[:3, 3] += [3.0, -20.0, 37.0]  # the second session's scanner coordinates differ
    second = stats_of(visit((100, 140)), moved)  # 720 mm³, grown superiorly
    report = growth(first, second, D1, D2)
    tumor = report.classes["tumor"]
    assert (tumor.volume1_mm3, tumor.volume2_mm3, tumor.change_mm3) == pytest.approx((360, 720, 360))
    assert tumor.percent_change == pytest.approx(100)
    assert tumor.doubling_time_years == pytest.approx(YEARS)
    assert tumor.growth_percent_per_year == pytest.approx((2 ** (1 / YEARS) - 1) * 100)
    assert tumor.growth_mm3_per_year == pytest.approx(360 / YEARS)
    (lesion,) = [les for les in report.lesions if les.cls == "tumor"]
    assert lesion.status == "matched" and lesion.position1_mm - lesion.position2_mm == pytest.approx(5.0)
    assert report.classes["edema"].percent_change is None and report.classes["edema"].doubling_time_years is None
    assert report.warnings == [] and report.days == 366


def test_shrinking_new_and_gone_lesions_and_a_shorter_cord():
    first = stats_of(visit((100, 140), edema_rows=(300, 320)))
    second = stats_of(visit((100, 120), cord_rows=(40, 380), edema_rows=(150, 160)))
    report = growth(first, second, D1, D2)
    tumor = report.classes["tumor"]
    assert tumor.percent_change == pytest.approx(-50) and tumor.doubling_time_years == pytest.approx(-YEARS)  # halving time
    edema = sorted((les.status, les.change.volume1_mm3, les.change.volume2_mm3) for les in report.lesions if les.cls == "edema")
    assert edema == [("gone", pytest.approx(360), 0.0), ("new", 0.0, pytest.approx(180))]  # 40 mm apart along the cord: not matched
    assert len(report.warnings) == 1 and "different lengths of cord (200 mm and 170 mm)" in report.warnings[0]
    text = table(report)
    assert "tumor" in text and "-50.0" in text and "warning: the visits cover different lengths" in text


def test_matching_prefers_overlap_then_nearness():
    def comp(top, extent):
        return {"from_top_mm": top, "extent_along_cord_mm": extent, "centre_from_top_mm": top + extent / 2}

    first = [comp(10, 10), comp(50, 5)]
    second = [comp(52, 5), comp(12, 10), comp(150, 5)]
    assert match_lesions(first, second) == [(0, 1), (1, 0), (None, 2)]


def test_dates_out_of_order_are_refused():
    s = stats_of(visit((100, 120)))
    with pytest.raises(DeepsegError, match="the second visit .* must come after the first"):
        growth(s, s, D2, D1)


def test_the_command_from_stats_files(tmp_path, capsys):
    paths = []
    for n, rows in enumerate([(100, 120), (100, 140)]):
        path = tmp_path / f"v{n}_stats.json"
        path.write_text(json.dumps({"Statistics": stats_of(visit(rows))}))
        paths.append(str(path))
    assert growth_cli.main([*paths, "-dates", "2024-01-01", "2025-01-01", "-o", str(tmp_path / "growth.tsv")]) == 0
    out = capsys.readouterr().out
    assert "interval: 366 days" in out and "tumor" in out
    header, *rows = (tmp_path / "growth.tsv").read_text().splitlines()
    cells = {tuple(r.split("\t")[:2]): dict(zip(header.split("\t"), r.split("\t"))) for r in rows}
    assert float(cells[("tumor", "all")]["percent_change"]) == 100.0
    assert float(cells[("tumor", "matched")]["doubling_time_years"]) == pytest.approx(YEARS, abs=1e-3)
    assert growth_cli.main([*paths, "-dates", "2024-01-01", "2025-01-01", "-o", str(tmp_path / "growth.tsv")]) == 2
    assert "growth.tsv exists: choose another name, or add -overwrite" in capsys.readouterr().err


def test_the_command_from_masks_and_their_t2w(tmp_path, capsys):
    visits = []
    for n, rows in enumerate([(100, 120), (100, 130)]):
        folder = tmp_path / f"v{n}"
        folder.mkdir()
        masks, cord = visit(rows)
        affine = AFFINE.copy()
        affine[2, 3] += 25.0 * n
        nib.save(nib.Nifti1Image(np.where(cord, 2.0, 1.0).astype(np.float32), affine), folder / "sub_T2w.nii.gz")
        for cls, mask in {**masks, "cord": cord}.items():
            nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), folder / f"sub_T2w_seg-{cls}.nii.gz")
        visits.append(str(folder / "sub_T2w.nii.gz"))
    assert growth_cli.main([*visits, "-dates", "2024-01-01", "2024-07-01", "-o", str(tmp_path / "g.json")]) == 0
    report = json.loads((tmp_path / "g.json").read_text())
    assert report["classes"]["tumor"]["percent_change"] == pytest.approx(50.0)
    assert report["classes"]["tumor"]["doubling_time_years"] == pytest.approx(182 / DAYS_PER_YEAR * math.log(2) / math.log(1.5))


@pytest.mark.parametrize("argv,message", [
    (["a.json", "b.json", "-dates", "2024-01-01", "2024-13-01"], "-dates: '2024-13-01' is not a date: write it as YYYY-MM-DD"),
    (["missing.json", "b.json", "-dates", "2024-01-01", "2025-01-01"], "visit missing.json does not exist"),
    (["a.json", "b.json", "-dates", "2024-01-01", "2025-01-01", "-o", "x.csv"], "-o x.csv: give a .json or .tsv file name"),
])
def test_command_errors_are_one_line(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "b.json").write_text("{}")
    assert growth_cli.main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("imsct_growth: error: " + message)
