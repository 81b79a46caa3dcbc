"""The FSLeyes plugin's plain logic: input choice, form, command line, outputs, overlays, the
cancellable child process, the launcher's arguments. No wx, no fsleyes: runs everywhere."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from onnx_models import CLASSES
from test_pipeline import write_case

from deepseg_imsct import cli, outputs
from deepseg_imsct.errors import DeepsegError
from deepseg_imsct.gui import launcher, logic, runner, worker
from deepseg_imsct.gui.logic import ImageInfo, Request
from deepseg_imsct.params import ParamKind, convert_all
from deepseg_imsct.task import Task


@pytest.fixture
def task(registry) -> Task:
    return Task(outputs.DEFAULT_TASK)


def info(name: str, **kwargs) -> ImageInfo:
    return ImageInfo(name, Path(f"/data/{name}.nii.gz"), **kwargs)


# --- choosing the T2w and the T1w ---------------------------------------------------------------

@pytest.mark.parametrize(
    "names,expected",
    [
        (["sub-01_T2w", "sub-01_T1w"], (0, 1)),
        (["sub-01_T1w", "sub-01_T2w"], (1, 0)),
        (["sub-01_ce-gd_T1w", "sub-01_T2w", "sub-01_acq-pre_T1w"], (1, 0)),
        (["T1_pre", "T2_TSE_sag", "T1_Gd_sag"], (1, 2)),
        (["sub-01_T2w_seg-tumor", "sub-01_T1w", "sub-01_T2w"], (2, 1)),
        (["t1ce", "mask", "t2"], (2, 0)),
        (["series_3", "series_7"], (0, 1)),  # no evidence: the load order (T2w first, as the printed command)
        (["series_3", "series_7", "T1w"], (0, 2)),
    ],
)
def test_inputs_are_chosen_by_name(names, expected):
    assert logic.choose_inputs([info(n) for n in names]) == expected


def test_masks_and_4d_series_are_not_chosen_and_the_header_counts():
    images = [info("a", looks_like_mask=True), info("b", volumes=30), info("c"), info("d", description="T1 GD SAG")]
    assert logic.choose_inputs(images) == (2, 3)


def test_fewer_than_two_images():
    assert logic.choose_inputs([]) == (None, None)
    assert logic.choose_inputs([info("sub-01_T2w")]) == (0, None)


# --- the form --------------------------------------------------------------------------------------

def test_form_is_built_from_the_task_specs(task):
    fields = logic.form_fields(task.parameters(), task.classes())
    keys = [f.key for f in fields]
    for param in ("threshold", "fill_holes", "min_volume_cm3"):
        assert [k for k in keys if k.startswith(param + ".")] == [f"{param}.{c}" for c in CLASSES]
    assert {"soft", "qc", "out_dir", "threads"} <= set(keys)
    assert all(f.spec.option for f in fields), "every parameter needs its command option"
    volume = next(f for f in fields if f.key == "min_volume_cm3.edema")
    assert volume.label == "Remove smaller than (cm³)" and volume.kind is ParamKind.VOLUME and volume.minimum == 0.0


def test_defaults_parse_to_the_specs_defaults(task):
    fields = logic.form_fields(task.parameters(), task.classes())
    params = logic.parse_values(fields, {})
    assert params["threshold"] == {c: 0.5 for c in CLASSES}
    assert params["fill_holes"] == {c: False for c in CLASSES}
    assert params["soft"] is False and params["out_dir"] is None and params["threads"] == 0


@pytest.mark.parametrize(
    "values,message",
    [({"threshold.tumor": 1.5}, r"Threshold of tumor: threshold 1.5 is not a probability in \[0, 1\]"),
     ({"min_volume_cm3.cavity": -1}, r"Remove smaller than \(cm³\) of cavity: -1 is not a volume from 0 to 1000 cm³"),
     ({"threads": "many"}, "CPU threads: 'many' is not a whole number")],
)
def test_bad_values_are_one_line_errors(task, values, message):
    fields = logic.form_fields(task.parameters(), task.classes())
    with pytest.raises(DeepsegError, match=message):
        logic.parse_values(fields, values)


def test_form_values_become_the_command_line_and_back(task, tmp_path):
    specs = task.parameters()
    fields = logic.form_fields(specs, task.classes())
    defaults = logic.parse_values(fields, {})
    assert logic.command_args(outputs.DEFAULT_TASK, Path("a.nii.gz"), Path("b.nii.gz"), defaults, specs) == \
        [outputs.DEFAULT_TASK, "-i", "a.nii.gz", "b.nii.gz"]
    values = {"threshold.edema": 0.35, "fill_holes.tumor": True, "min_volume_cm3.cavity": 0.125, "soft": True,
              "qc": str(tmp_path / "qc"), "out_dir": f" {tmp_path} ", "threads": 2}
    params = logic.parse_values(fields, values)
    args = logic.command_args(outputs.DEFAULT_TASK, Path("a.nii.gz"), Path("b.nii.gz"), params, specs)
    assert args[4:] == ["-thr", "edema=0.35", "-fill-holes", "tumor=1", "-remove-small", "cavity=0.125cm3", "-soft", "-qc", str(tmp_path / "qc"),
                        "-o", str(tmp_path), "-threads", "2"]
    parsed = cli.build_parser(specs, task.classes()).parse_args(args)
    assert convert_all(specs, task.classes(), cli.user_values(parsed, specs, task.classes())) == params  # the round trip


def test_same_file_twice_is_refused():
    request = Request(Path("x/a_T2w.nii.gz"), Path("x/../x/a_T2w.nii.gz"), {}, [], tuple(CLASSES))
    with pytest.raises(DeepsegError, match="the same file .* was given as T2w and T1w"):
        request.check()


# --- outputs and overlays ------------------------------------------------------------------------

@pytest.mark.parametrize("report", [False, True])
def test_expected_outputs_are_what_the_pipeline_writes(registry, tmp_path, report):
    from deepseg_imsct.pipeline import Predictor

    t2, t1 = write_case(tmp_path / "in")
    qc = tmp_path / "qc" if report else None
    written = Predictor(registry=None).run_files(t2, t1, tmp_path / "out", qc=qc)
    images = {key: path for key, path in written.items() if path.name.endswith(".nii.gz")}  # the overlays
    assert logic.expected_outputs(t2, tmp_path / "out", CLASSES, qc) == images
    assert logic.expected_outputs(t2, None, CLASSES, qc)["seg-tumor"] == tmp_path / "in" / "sub-01_T2w_seg-tumor.nii.gz"


def test_overlay_settings_distinct_colours_and_whole_tumor_hidden():
    masks = {k: logic.overlay_settings(k, soft=False) for k in ("seg-tumor", "seg-edema", "seg-cavity", "seg-whole-tumor")}
    assert all(s["overlayType"] == "mask" for s in masks.values())
    assert len({s["colour"] for s in masks.values()}) == 4
    assert masks["seg-whole-tumor"]["enabled"] is False
    assert all(masks[k]["enabled"] for k in ("seg-tumor", "seg-edema", "seg-cavity"))
    soft = logic.overlay_settings("seg-tumor", soft=True)
    assert soft["overlayType"] == "volume" and soft["cmap"] == "red" and soft["displayRange"] == (0.0, 1.0)
    assert logic.overlay_settings("cropbox", soft=True)["outline"] is True


def test_tumor_is_drawn_last():
    keys = ["seg-tumor", "seg-edema", "seg-cavity", "seg-whole-tumor", "seg-cord", "cropbox"]
    assert logic.load_order(keys) == ["cropbox", "seg-cord", "seg-whole-tumor", "seg-edema", "seg-cavity", "seg-tumor"]


# --- the child process -----------------------------------------------------------------------------

def test_tqdm_lines_and_log_lines_make_the_progress():
    start = runner.Progress()
    bar = runner.parse_progress("segmenting:  40%|████      | 4/10 [00:01<00:01,  3.20patch/s]", start)
    assert bar == runner.Progress(0.4, "segmenting 4/10")
    line = runner.parse_progress("wrote /x/sub_seg-tumor.nii.gz", bar)
    assert line == runner.Progress(0.4, "wrote /x/sub_seg-tumor.nii.gz")
    assert runner.parse_progress("   ", line) == line


def test_the_gui_run_writes_what_the_task_run_writes(registry, task, tmp_path):
    """Same pipeline as the command: non-default form values, child process vs Task.run in-process."""
    t2, t1 = write_case(tmp_path / "in")
    fields = logic.form_fields(task.parameters(), task.classes())
    values = {"threshold.tumor": 0.3, "fill_holes.edema": True, "min_volume_cm3.whole-tumor": 0.05, "out_dir": str(tmp_path / "gui")}
    request = Request(t2, t1, logic.parse_values(fields, values), task.parameters(), task.classes())
    run = runner.CommandRun(request.args(), request.outputs()).start()
    outcome = run.wait(120)
    assert outcome is not None and outcome.status is runner.Status.DONE, outcome
    expected = task.run({"t2": t2, "t1": t1}, {**request.params, "out_dir": tmp_path / "api"})
    assert set(outcome.outputs) == set(expected) - {outputs.STATS}  # the overlays
    for key, path in outcome.outputs.items():
        np.testing.assert_array_equal(nib.load(path).get_fdata(), nib.load(expected[key]).get_fdata())
    sidecar = outputs.sidecar_path(path).read_text()
    assert '"CommandLine": "imsct_deepseg tumor_edema_cavity_t1_t2 -i ' in sidecar
    api = json.loads(outputs.sidecar_path(expected[key]).read_text())
    assert json.loads(sidecar)["Postprocessing"] == api["Postprocessing"]  # the same settings, through both paths
    assert api["Postprocessing"]["classes"]["tumor"]["threshold"] == 0.3
    assert run.progress().text  # the command's last line


def test_errors_are_the_commands_one_line_message(registry, tmp_path, capsys):
    t2, _ = write_case(tmp_path)
    args = [outputs.DEFAULT_TASK, "-i", str(t2), str(tmp_path / "missing_T1w.nii.gz")]
    outcome = runner.CommandRun(args, {}).start().wait(120)
    assert cli.main(args) == 2
    printed = capsys.readouterr().err.strip().splitlines()[-1]
    assert outcome.status is runner.Status.FAILED and outcome.message == printed
    assert printed.startswith("imsct_deepseg: error: T1w file not found")


@pytest.mark.parametrize("sigint", [signal.SIG_DFL, signal.SIG_IGN], ids=["sigint-default", "sigint-ignored"])
def test_cancel_right_away_writes_nothing(registry, tmp_path, sigint):
    """Also when the GUI was started as a background job (SIGINT inherited as ignored)."""
    t2, t1 = write_case(tmp_path / "in")
    previous = signal.signal(signal.SIGINT, sigint)
    try:
        run = runner.CommandRun([outputs.DEFAULT_TASK, "-i", str(t2), str(t1), "-o", str(tmp_path / "out")], {}).start()
    finally:
        signal.signal(signal.SIGINT, previous)
    time.sleep(0.2)  # inside the command's start-up
    run.cancel()
    outcome = run.wait(60)
    assert outcome.status is runner.Status.CANCELLED and "no output was written" in outcome.message, outcome
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


STUBBORN = """
import signal, sys, time
from pathlib import Path
signal.signal(signal.SIGTERM, signal.SIG_IGN)
folder = Path(sys.argv[1])
(folder / ".sub_seg-tumor.nii.gz.abc123.part").write_bytes(b"partial")
(folder / ".sub_seg-tumor.json.abc123.part").write_text("{")
print("segmenting:  50%|#####     | 5/10 [00:01<00:01,  3.2patch/s]", file=sys.stderr, flush=True)
time.sleep(60)
"""


def test_a_command_that_ignores_cancel_is_killed_and_its_temporary_files_removed(tmp_path):
    """SIGKILL after the grace period; the temporary files of the expected outputs are removed."""
    expected = {"seg-tumor": tmp_path / "sub_seg-tumor.nii.gz"}
    unrelated = tmp_path / ".other.nii.gz.x.part"
    unrelated.write_bytes(b"not ours")
    run = runner.CommandRun([], expected, command=[sys.executable, "-c", STUBBORN, str(tmp_path)], grace_s=0.5).start()
    deadline = time.monotonic() + 30
    while run.progress().fraction is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run.progress() == runner.Progress(0.5, "segmenting 5/10")
    run.cancel()
    outcome = run.wait(30)
    assert outcome.status is runner.Status.CANCELLED and outcome.returncode == -signal.SIGKILL
    assert sorted(p.name for p in tmp_path.iterdir()) == [unrelated.name]


def test_the_worker_turns_sigterm_and_sigint_into_keyboard_interrupt(monkeypatch):
    seen = []

    def command(argv):
        seen.append((signal.getsignal(signal.SIGINT), argv))
        signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(cli, "main", command)
    monkeypatch.setattr(sys, "argv", ["worker", "-list-tasks"])
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(KeyboardInterrupt):
            worker.main()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    assert seen == [(signal.default_int_handler, ["-list-tasks"])]


def test_worker_command_uses_this_python():
    assert runner.worker_command(["x"]) == [sys.executable, "-m", "deepseg_imsct.gui.worker", "x"]


# --- the launcher ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "argv,env,expected",
    [
        ([], {}, ["--scene", "imsct", "-S"]),
        (["a.nii.gz"], {"FSLDIR": "/opt/fsl"}, ["--scene", "imsct", "a.nii.gz"]),
        (["-s", "lightbox", "a.nii.gz"], {}, ["--showAllPlugins", "-S", "-s", "lightbox", "a.nii.gz"]),
        (["-sortho"], {"FSLDIR": "/x"}, ["--showAllPlugins", "-sortho"]),
        (["--scene=3d", "-S"], {}, ["--showAllPlugins", "--scene=3d", "-S"]),
        (["-std"], {"FSLDIR": "/x"}, ["--scene", "imsct", "-std"]),  # -std is 'standard', not a scene
        (["--version"], {}, ["--version"]),
    ],
)
def test_launcher_makes_the_plugin_visible(argv, env, expected):
    assert launcher.fsleyes_args(argv, env) == expected


def test_the_gui_package_imports_no_wx():
    code = ("import sys, deepseg_imsct, deepseg_imsct.gui.logic, deepseg_imsct.gui.runner, deepseg_imsct.gui.launcher, "
            "deepseg_imsct.cli; assert not {'wx', 'fsleyes'} & set(sys.modules), sorted(sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True).stderr == ""


# --- statistics shown after a run ----------------------------------------------------------------

def test_the_statistics_of_a_run_are_read_and_summarized(registry, tmp_path, task):
    t2, t1 = write_case(tmp_path / "in")
    fields = logic.form_fields(task.parameters(), task.classes())
    request = Request(t2, t1, logic.parse_values(fields, {"out_dir": str(tmp_path / "out" / "case.nii.gz")}),
                      task.parameters(), task.classes())
    assert request.stats_file() == tmp_path / "out" / "case_stats.json"  # -o as a file name names the outputs
    run = runner.CommandRun(request.args(), request.outputs()).start()
    assert run.wait(120).status is runner.Status.DONE
    stats = logic.read_stats(request.stats_file())
    summary = logic.stats_summary(stats).splitlines()
    tumor = stats["Classes"]["tumor"]
    assert summary[0].startswith(f"tumor: {tumor['volume_cm3']:.3f} cm³ ({tumor['volume_mm3']:.0f} mm³) in 1 component; largest ")
    assert summary[-1].startswith("cord: ") and summary[-1].endswith("vertebral levels: unknown")
    soft = Request(t2, t1, logic.parse_values(fields, {"threshold.tumor": 0, "threshold.edema": 0, "threshold.cavity": 0,
                                                        "threshold.whole-tumor": 0}), task.parameters(), task.classes())
    assert soft.soft and soft.stats_file() is None
    assert logic.stats_summary(logic.read_stats(None)).startswith("No statistics (soft output")


def test_an_absent_class_is_summarized_as_none():
    stats = {"Classes": {"cavity": {"volume_mm3": 0.0, "volume_cm3": 0.0, "n_components": 0, "components": []}},
             "Cord": {"found": False, "length_mm": 120.0}, "VertebralLevels": "unknown"}
    assert logic.stats_summary(stats).splitlines() == [
        "cavity: none", "cord: 120 mm (not found: positions from the top of the image); vertebral levels: unknown"]
