"""The FSLeyes plugin with real FSLeyes objects.

- No display: the action's steps with a real OverlayList/DisplayContext and the real pipeline
  (analytic models; the trained ones on testing_data/ when both are present).
- Under Xvfb (started here): a real FSLeyesFrame; the Tools-menu item found by its label and
  fired, the form answered, the overlays and files checked; Cancel and errors.

Skips when wx or FSLeyes is missing (.ci/gui-setup.sh installs them). Set
IMSCT_GUI_SCREENSHOTS=<folder> to save the docs' screenshots (gui_menu.png, gui_result.png).
"""
from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

wx = pytest.importorskip("wx", reason="wxPython is not installed: apt-get install python3-wxgtk4.0 and use a venv made "
                         "with /usr/bin/python3 -m venv --system-site-packages (see .ci/gui-setup.sh)")
pytest.importorskip("fsleyes", reason="FSLeyes is not installed: pip install '.[fsleyes]' (see .ci/gui-setup.sh)")

from onnx_models import CLASSES
from test_pipeline import write_case

from deepseg_imsct.gui import dialog, logic
from deepseg_imsct.gui.runner import Status

REPO = Path(__file__).resolve().parents[1]
TUMOR_MM = (0.0, 0.0, 10.0)  # synthetic.TUMOR_CENTRE_MM


@pytest.fixture(scope="module")
def fsleyes_home(tmp_path_factory):
    """FSLeyes settings and caches in a temporary folder; FSLeyes and its colour maps initialised."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        for var, sub in (("HOME", ""), ("XDG_CONFIG_HOME", ".config"), ("XDG_CACHE_HOME", ".cache"), ("MPLCONFIGDIR", "mpl")):
            (home / sub).mkdir(exist_ok=True)
            mp.setenv(var, str(home / sub))
        import fsleyes
        import fsleyes.colourmaps

        fsleyes.initialise()
        fsleyes.colourmaps.init()
        yield home


def check_overlays(display_ctx, loaded, soft: bool = False) -> None:
    for image in loaded:
        key = image.name.split("_", 2)[-1]
        display, opts = display_ctx.getDisplay(image), display_ctx.getOpts(image)
        expected = logic.overlay_settings(key, soft)
        assert display.overlayType == expected["overlayType"], key
        assert display.enabled is expected["enabled"], key
        if expected["overlayType"] == "mask":
            assert tuple(opts.colour[:3]) == pytest.approx(expected["colour"]), key


# --- without a display ---------------------------------------------------------------------------

@pytest.fixture
def no_gl(fsleyes_home, monkeypatch):
    """Display options read the GL version (for interpolation choices); no GL without a display."""
    import fsleyes.gl

    monkeypatch.setattr(fsleyes.gl, "GL_COMPATIBILITY", fsleyes.gl.GL_COMPATIBILITY or "2.1")


def action_without_display(paths):
    import fsleyes.displaycontext
    import fsleyes.overlay
    from fsl.data.image import Image

    from deepseg_imsct.gui.fsleyes_action import SegmentTumorAction

    overlays = fsleyes.overlay.OverlayList()
    display_ctx = fsleyes.displaycontext.DisplayContext(overlays)
    overlays.extend([Image(str(p)) for p in paths])
    return SegmentTumorAction(overlays, display_ctx, None), overlays, display_ctx


@pytest.mark.timeout(120)
def test_action_logic_with_real_overlay_list(no_gl, registry, tmp_path):
    t2, t1 = write_case(tmp_path / "in")
    mask = tmp_path / "in" / "old_mask.nii.gz"
    nib.save(nib.Nifti1Image((nib.load(t2).get_fdata() > 300).astype(np.uint8), nib.load(t2).affine), mask)
    action, overlays, display_ctx = action_without_display([mask, t1, t2])
    try:
        assert action.enabled
        infos = [info for _, info in action.candidates()]
        assert infos[0].looks_like_mask and logic.choose_inputs(infos) == (2, 1)
        fields, classes = action.form()
        request = action.request(infos, (2, 1), {"threshold.tumor": 0.4, "qc": str(tmp_path / "qc")}, fields, classes)
        outcome, loaded = action.run_blocking(request, timeout=120)
        assert outcome.status is Status.DONE, outcome
        assert sorted(p.name for p in (tmp_path / "in").glob("sub-01_T2w_*.nii.gz")) == sorted(
            f"sub-01_T2w_{k}.nii.gz" for k in (f"seg-{c}" for c in CLASSES))
        assert sorted(p.name for p in (tmp_path / "qc").glob("*.nii.gz")) == ["sub-01_T2w_cropbox.nii.gz", "sub-01_T2w_seg-cord.nii.gz"]
        names = [o.name for o in overlays]
        assert names[:3] == ["old_mask", "sub-01_T1w", "sub-01_T2w"] and names[-1] == "sub-01_T2w_seg-tumor"
        check_overlays(display_ctx, loaded)
        assert nib.load(outcome.outputs["seg-tumor"]).get_fdata().sum() > 0
        assert action.last_summary.startswith("tumor: ") and "vertebral levels: unknown" in action.last_summary
        again, _ = action.run_blocking(request, timeout=120)  # a second run replaces the overlays
        assert again.status is Status.DONE and [o.name for o in overlays] == names
    finally:
        action.destroy()


def sub_test01_files() -> tuple[Path, Path] | None:
    anat = REPO / "testing_data" / "sub-test01" / "anat"
    t2, t1 = anat / "sub-test01_T2w.nii.gz", anat / "sub-test01_T1w.nii.gz"
    return (t2, t1) if t2.is_file() and t1.is_file() else None


@pytest.mark.timeout(180)
def test_action_on_testing_data_with_the_analytic_models(no_gl, registry, tmp_path):
    case = sub_test01_files()
    if case is None:
        pytest.skip("no testing_data/sub-test01 T2w/T1w")
    action, overlays, display_ctx = action_without_display(reversed(case))
    try:
        infos = [info for _, info in action.candidates()]
        assert logic.choose_inputs(infos) == (1, 0)
        fields, classes = action.form()
        request = action.request(infos, (1, 0), {"out_dir": str(tmp_path), "soft": True}, fields, classes)
        outcome, loaded = action.run_blocking(request, timeout=150)
        assert outcome.status is Status.DONE, outcome
        assert sorted(p.name for p in tmp_path.glob("*.nii.gz")) == sorted(f"sub-test01_T2w_seg-{c}.nii.gz" for c in CLASSES)
        assert [o.name for o in overlays][-1] == "sub-test01_T2w_seg-tumor"
        check_overlays(display_ctx, loaded, soft=True)
        assert nib.load(outcome.outputs["seg-edema"]).shape == nib.load(case[0]).shape
    finally:
        action.destroy()


def real_case() -> tuple[Path, Path] | None:
    from deepseg_imsct.registry import load_registry

    case = sub_test01_files()
    try:
        has_models = bool(load_registry(REPO / "model_registry.json").models)
    except Exception:  # noqa: BLE001 (a registry being written by others)
        has_models = False
    return case if has_models else None


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_action_with_the_trained_models_on_testing_data(no_gl, tmp_path, monkeypatch):
    case = real_case()
    if case is None:
        pytest.skip("no trained models in model_registry.json or no testing_data/sub-test01 T2w/T1w")
    monkeypatch.setenv("DEEPSEG_IMSCT_REGISTRY", str(REPO / "model_registry.json"))
    action, _, display_ctx = action_without_display(case)
    try:
        infos = [info for _, info in action.candidates()]
        assert logic.choose_inputs(infos) == (0, 1)
        fields, classes = action.form()
        request = action.request(infos, (0, 1), {"out_dir": str(tmp_path)}, fields, classes)
        outcome, loaded = action.run_blocking(request, timeout=840)
        assert outcome.status is Status.DONE, outcome
        assert {p.parent for p in outcome.outputs.values()} == {tmp_path}
        check_overlays(display_ctx, loaded)
    finally:
        action.destroy()


# --- under Xvfb ------------------------------------------------------------------------------------

def start_xvfb() -> tuple[subprocess.Popen, str]:
    """Xvfb on a free display number (it writes the number to -displayfd).

    ``-noreset``: by default an X server resets when its last client disconnects, and a client
    connecting during the reset fails; probes like wx.App.IsDisplayAvailable connect and
    disconnect just before wx starts, so without it wx start-up failed in about 1 of 4 runs
    ("wxEntryStart failed"), and a second wx start in the same process does not recover.
    """
    read, write = os.pipe()
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1280x1024x24", "-nolisten", "tcp", "-noreset"],
                            pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    number = b""
    while not number.endswith(b"\n") and select.select([read], [], [], 15)[0]:
        chunk = os.read(read, 16)
        if not chunk:
            break
        number += chunk
    os.close(read)
    if not number.strip():
        proc.kill()
        raise RuntimeError("Xvfb did not start")
    return proc, f":{number.decode().strip()}"


def pump(until: Callable[[], bool] = lambda: False, timeout: float = 5.0) -> bool:
    """Run wx events (timers included) until ``until()`` or the timeout."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        wx.YieldIfNeeded()
        if until():
            return True
        time.sleep(0.02)
    return until()


def forget_display_probes() -> None:
    """fslpy/fsleyes-widgets cache 'is a display available?' at first use; the tests without a
    display ran first, so forget the answer once Xvfb is up."""
    import fsl.utils.idle
    import fsl.utils.platform
    import fsleyes_widgets.utils

    for probe in (getattr(fsl.utils.idle, "_canHaveGui", None), getattr(fsleyes_widgets.utils, "canHaveGui", None)):
        if hasattr(probe, "cache_clear"):
            probe.cache_clear()
    if hasattr(fsl.utils.platform.platform, "_Platform__canHaveGui"):
        fsl.utils.platform.platform._Platform__canHaveGui = None


def start_fsleyes():
    """fsleyes.main.embed: the app, a GL context (auto-detected version) and a frame."""
    import fsleyes.main

    assert pump_until_display(), "the X display does not answer"
    return fsleyes.main.embed()


def pump_until_display(timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while not wx.App.IsDisplayAvailable():
        if time.monotonic() > end:
            return False
        time.sleep(0.1)
    return True


@pytest.fixture(scope="module")
def gui(fsleyes_home):
    """One FSLeyes frame for the module (a second app in one process is not supported)."""
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed: apt-get install xvfb xauth (see .ci/gui-setup.sh)")
    xvfb, display = start_xvfb()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISPLAY", display)
        mp.delenv("WAYLAND_DISPLAY", raising=False)
        forget_display_probes()
        overlays, display_ctx, frame = start_fsleyes()
        frame.SetSize((1200, 820))
        frame.Show()
        pump(timeout=0.5)
        try:
            yield overlays, display_ctx, frame
        finally:
            frame.Close(askUnsaved=False, askLayout=False)
            pump(timeout=0.5)
            xvfb.kill()
            xvfb.wait()


def tools_item(frame) -> wx.MenuItem | None:
    bar = frame.GetMenuBar()
    menu = bar.GetMenu(bar.FindMenu("Tools"))
    return next((item for item in menu.GetMenuItems() if item.GetItemLabelText() == logic.MENU_LABEL), None)


def fire(frame, item: wx.MenuItem) -> None:
    event = wx.CommandEvent(wx.wxEVT_MENU, item.GetId())
    event.SetEventObject(frame)
    frame.GetEventHandler().ProcessEvent(event)


CAPTURE = """
import sys, wx
path, x, y, w, h = sys.argv[1], *map(int, sys.argv[2:])
app = wx.App(False)
bitmap = wx.Bitmap(w, h)
memory = wx.MemoryDC(bitmap)
memory.Blit(0, 0, w, h, wx.ScreenDC(), x, y)
memory.SelectObject(wx.NullBitmap)
bitmap.SaveFile(path, wx.BITMAP_TYPE_PNG)
"""


def screenshot(window: wx.Window, path: Path) -> None:
    """What the X server shows in the window's rectangle (GL canvases and open menus included),
    read by another process: a wx.ScreenDC in this one stops later menus from opening."""
    rect = window.GetScreenRect()
    subprocess.run([sys.executable, "-c", CAPTURE, str(path), *map(str, (rect.x, rect.y, rect.width, rect.height))],
                   check=True, timeout=30, capture_output=True)


def tumor_shown(frame, path: Path, pixels: int = 20) -> bool:
    """Take a screenshot; True if the tumor's red shows in every canvas (else ask them to redraw)."""
    screenshot(frame, path)
    image = wx.Image(str(path))
    rgb = np.frombuffer(bytes(image.GetData()), np.uint8).reshape(image.GetHeight(), image.GetWidth(), 3).astype(int)
    red = (rgb[..., 0] > 100) & (rgb[..., 0] > rgb[..., 1] + 50) & (rgb[..., 0] > rgb[..., 2] + 50)
    origin = frame.GetScreenPosition()
    canvases = [c for panel in frame.viewPanels for c in panel.getGLCanvases()]
    shown = []
    for canvas in canvases:
        rect = canvas.GetScreenRect()
        x, y = rect.x - origin.x, rect.y - origin.y
        shown.append(int(red[y:y + rect.height, x:x + rect.width].sum()) >= pixels)
        if not shown[-1]:
            canvas.Refresh()
    return all(shown)


def screenshot_folder() -> Path | None:
    folder = os.environ.get("IMSCT_GUI_SCREENSHOTS")
    return Path(folder) if folder else None


def press(*keys: int) -> None:
    simulator = wx.UIActionSimulator()
    for key in keys:
        simulator.KeyDown(key)
        simulator.KeyUp(key)
        pump(timeout=0.4)


def save_screenshots(frame, display_ctx, folder: Path) -> None:
    """The docs' pictures: the result around the tumor, then the Tools menu opened (a click opens
    the first menu of the bar, Left wraps round to the last one, Tools)."""
    display_ctx.worldLocation = TUMOR_MM
    for panel in frame.viewPanels:
        panel.sceneOpts.zoom = 180
    frame.Raise()
    # FSLeyes draws the overlays once their textures are ready (seconds with software GL)
    assert pump(lambda: tumor_shown(frame, folder / "gui_result.png"), timeout=30)
    simulator = wx.UIActionSimulator()
    simulator.MouseMove(frame.GetScreenPosition() + wx.Point(25, 10))  # the menu bar's first title
    pump(timeout=0.3)
    simulator.MouseClick()
    pump(timeout=1.0)
    press(wx.WXK_LEFT)
    pump(timeout=2.0)
    screenshot(frame, folder / "gui_menu.png")
    press(wx.WXK_ESCAPE, wx.WXK_ESCAPE)


@pytest.fixture
def answered(monkeypatch):
    """The form answered by the test: ``answers`` values (and optional selection), then the next of
    ``replies`` (Segment when none is left)."""
    seen: dict = {"errors": [], "forms": [], "replies": []}

    def show_modal(form):
        seen["forms"].append({"selection": form.selection(), "values": form.values()})
        form.set_values(seen.get("answers", {}))
        if "select" in seen:
            form.select(*seen["select"])
        return seen["replies"].pop(0) if seen["replies"] else wx.ID_OK

    monkeypatch.setattr(dialog.SegmentDialog, "ShowModal", show_modal)
    monkeypatch.setattr(dialog, "show_error", lambda parent, message: seen["errors"].append(message))
    return seen


def command_running() -> bool:
    return any(isinstance(w, dialog.ProgressDialog) and w.run.outcome() is None for w in wx.GetTopLevelWindows())


def progress_shown() -> bool:
    return any(isinstance(w, dialog.ProgressDialog) for w in wx.GetTopLevelWindows())


def load(overlays, paths) -> None:
    from fsl.data.image import Image

    overlays.clear()
    overlays.extend([Image(str(p)) for p in paths])


@pytest.mark.timeout(90, method="thread")
def test_layout_shows_the_tools_menu_item(gui):
    import fsleyes.layouts

    _, _, frame = gui
    assert tools_item(frame) is None, "third-party plugins are hidden until the package's layout is loaded"
    fsleyes.layouts.loadLayout(frame, logic.LAYOUT_NAME)
    assert pump(lambda: tools_item(frame) is not None)


@pytest.mark.timeout(90, method="thread")
def test_menu_item_segments_and_loads_the_overlays(gui, registry, answered, tmp_path):
    import fsleyes.layouts

    overlays, display_ctx, frame = gui
    fsleyes.layouts.loadLayout(frame, logic.LAYOUT_NAME)
    t2, t1 = write_case(tmp_path / "in")
    load(overlays, [t1, t2])
    assert pump(lambda: tools_item(frame) is not None and tools_item(frame).IsEnabled())
    answered["answers"] = {"threshold.tumor": 0.45, "out_dir": str(tmp_path / "out")}
    ticks: list[float] = []
    timer = wx.Timer()
    timer.Bind(wx.EVT_TIMER, lambda _e: command_running() and ticks.append(time.monotonic()))
    timer.Start(50)
    fire(frame, tools_item(frame))
    assert answered["forms"][0]["selection"] == (1, 0), "T2w and T1w preselected by name"
    assert answered["forms"][0]["values"]["threshold.tumor"] == pytest.approx(0.5)
    assert not tools_item(frame).IsEnabled(), "one run at a time"
    assert pump(lambda: len(overlays) == 2 + len(CLASSES), timeout=60), answered["errors"]
    timer.Stop()
    assert answered["errors"] == []
    # the main loop kept running during the command: a blocking run gives no tick at all, and
    # ticks come at the timer's pace however short the run was
    assert ticks, "the main loop served no event while the command ran"
    assert len(ticks) < 2 or np.median(np.diff(ticks)) < 0.2, np.diff(ticks)
    written = sorted(p.name for p in (tmp_path / "out").iterdir() if p.name != ".imsct_deepseg.lock")
    assert written == sorted([f"sub-01_T2w_seg-{c}.{e}" for c in CLASSES for e in ("json", "nii.gz")]
                             + ["sub-01_T2w_stats.json", "sub-01_T2w_stats.tsv"])
    assert [o.name for o in overlays][-1] == "sub-01_T2w_seg-tumor"
    shown = [w for w in wx.GetTopLevelWindows() if w.GetTitle() == "Lesion statistics"]
    assert len(shown) == 1 and shown[0].IsShown(), "the run's statistics in a window that does not block"
    text = next(c for c in shown[0].GetChildren() if isinstance(c, wx.TextCtrl)).GetValue()
    assert "tumor" in text and "cm" in text, text
    shown[0].Destroy()
    check_overlays(display_ctx, list(overlays)[2:])
    side = (tmp_path / "out" / "sub-01_T2w_seg-tumor.json").read_text()
    assert '"threshold": 0.45' in side
    assert pump(lambda: tools_item(frame).IsEnabled())
    assert not progress_shown()
    folder = screenshot_folder()
    if folder:
        save_screenshots(frame, display_ctx, folder)


@pytest.mark.timeout(90, method="thread")
def test_cancel_stops_the_command_and_loads_nothing(gui, registry, answered, tmp_path):
    overlays, _, frame = gui
    t2, t1 = write_case(tmp_path / "in")
    load(overlays, [t2, t1])
    assert pump(lambda: tools_item(frame) is not None and tools_item(frame).IsEnabled())
    fire(frame, tools_item(frame))
    progress = next(w for w in wx.GetTopLevelWindows() if isinstance(w, dialog.ProgressDialog))
    event = wx.CommandEvent(wx.wxEVT_BUTTON, wx.ID_CANCEL)
    event.SetEventObject(progress.cancel_button)
    progress.cancel_button.GetEventHandler().ProcessEvent(event)
    assert pump(lambda: tools_item(frame).IsEnabled(), timeout=30)
    pump(timeout=0.3)
    assert len(overlays) == 2 and answered["errors"] == []
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["sub-01_T1w.nii.gz", "sub-01_T2w.nii.gz"]


@pytest.mark.timeout(90, method="thread")
def test_errors_show_the_commands_one_line_message(gui, registry, answered, tmp_path, capsys):
    from deepseg_imsct import cli, outputs

    overlays, _, frame = gui
    t2, t1 = write_case(tmp_path / "in")
    load(overlays, [t2, t1])
    t1.unlink()  # the file disappeared after loading
    assert pump(lambda: tools_item(frame) is not None and tools_item(frame).IsEnabled())
    fire(frame, tools_item(frame))
    assert pump(lambda: answered["errors"], timeout=30)
    assert cli.main([outputs.DEFAULT_TASK, "-i", str(t2), str(t1)]) == 2
    printed = capsys.readouterr().err.strip().splitlines()[-1]
    assert printed.startswith(f"imsct_deepseg: error: T1w file not found: {t1}")
    assert answered["errors"] == [printed]
    answered["errors"].clear()
    answered["forms"].clear()
    answered["select"], answered["replies"] = (0, 0), [wx.ID_OK, wx.ID_CANCEL]
    fire(frame, tools_item(frame))  # the same image twice: refused before running, the form reopens
    assert len(answered["errors"]) == 1 and answered["errors"][0].startswith("imsct_deepseg: error: the same file")
    assert len(answered["forms"]) == 2 and len(overlays) == 2
