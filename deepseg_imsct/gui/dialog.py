"""wx dialogs of the FSLeyes plugin: the form (inputs + the task's parameters) and the progress.

Imports wx: loaded only inside FSLeyes. The form is built from :class:`.logic.Field` objects,
so a parameter added to the task's specs appears here without a change.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import wx

from ..params import ParamKind
from .logic import MENU_LABEL, Field
from .runner import CommandRun, Outcome, Progress

log = logging.getLogger(__name__)

TITLE = MENU_LABEL.rstrip("…")
POLL_MS = 100
GAUGE_RANGE = 1000
MAX_VOLUME_CM3 = 1000.0


def show_error(parent: wx.Window | None, message: str) -> None:
    """The command's one-line error in a modal message box."""
    log.error("%s", message)
    wx.MessageBox(message, TITLE, wx.OK | wx.ICON_ERROR, parent)


def show_info(parent: wx.Window | None, title: str, message: str) -> wx.Dialog:
    """The run's statistics in a window that does not block FSLeyes (the user closes it)."""
    box = wx.Dialog(parent, title=title, style=wx.DEFAULT_DIALOG_STYLE | wx.RESIZE_BORDER)
    text = wx.TextCtrl(box, value=message, style=wx.TE_MULTILINE | wx.TE_READONLY | wx.HSCROLL, size=(560, 260))
    text.SetFont(wx.Font(wx.FontInfo(9).Family(wx.FONTFAMILY_TELETYPE)))
    close = wx.Button(box, wx.ID_CLOSE)
    close.Bind(wx.EVT_BUTTON, lambda _event: box.Destroy())
    box.Bind(wx.EVT_CLOSE, lambda _event: box.Destroy())
    sizer = wx.BoxSizer(wx.VERTICAL)
    sizer.Add(text, 1, wx.EXPAND | wx.ALL, 8)
    sizer.Add(close, 0, wx.ALIGN_RIGHT | wx.LEFT | wx.RIGHT | wx.BOTTOM, 8)
    box.SetSizerAndFit(sizer)
    box.Show()
    return box


def _number_widget(parent: wx.Window, field: Field) -> wx.Window:
    if field.kind is ParamKind.INT:
        high = int(field.maximum) if field.maximum is not None else 1024
        widget = wx.SpinCtrl(parent, min=int(field.minimum or 0), max=high, initial=int(field.default or 0))
    else:
        high = field.maximum if field.maximum is not None else MAX_VOLUME_CM3
        step = 0.05 if high <= 1.0 else 0.1
        widget = wx.SpinCtrlDouble(parent, min=field.minimum or 0.0, max=high, initial=float(field.default or 0.0), inc=step)
        widget.SetDigits(3)
    return widget


class _PathWidget(wx.Panel):
    """A folder field: text (empty: the default) and a Browse… button."""

    def __init__(self, parent: wx.Window, field: Field):
        super().__init__(parent)
        self.text = wx.TextCtrl(self, value=str(field.default or ""), size=(320, -1))
        self.text.SetHint("default: the T2w's folder" if field.param == "out_dir" else "empty: none")
        self.title = field.label
        browse = wx.Button(self, label="Browse…")
        browse.Bind(wx.EVT_BUTTON, self._browse)
        sizer = wx.BoxSizer(wx.HORIZONTAL)
        sizer.Add(self.text, 1, wx.EXPAND | wx.RIGHT, 4)
        sizer.Add(browse, 0)
        self.SetSizer(sizer)

    def _browse(self, _event: wx.CommandEvent) -> None:
        with wx.DirDialog(self, self.title, self.text.GetValue()) as chooser:
            if chooser.ShowModal() == wx.ID_OK:
                self.text.SetValue(chooser.GetPath())

    def GetValue(self) -> str:
        return self.text.GetValue()

    def SetValue(self, value: Any) -> None:
        self.text.SetValue("" if value is None else str(value))


class _ChoiceWidget(wx.Choice):
    """A choice field (e.g. the model set) whose value is the chosen text."""

    def __init__(self, parent: wx.Window, field: Field):
        super().__init__(parent, choices=list(field.spec.choices))
        self.SetStringSelection(str(field.default))

    def GetValue(self) -> str:
        return self.GetStringSelection()

    def SetValue(self, value: Any) -> None:
        self.SetStringSelection(str(value))


def _widget(parent: wx.Window, field: Field) -> wx.Window:
    if field.kind is ParamKind.CHOICE:
        return _ChoiceWidget(parent, field)
    if field.kind is ParamKind.BOOL:
        box = wx.CheckBox(parent, label="" if field.cls else field.label)
        box.SetValue(bool(field.default))
        return box
    if field.kind is ParamKind.PATH:
        return _PathWidget(parent, field)
    return _number_widget(parent, field)


class SegmentDialog(wx.Dialog):
    """Inputs (preselected T2w/T1w) and the task's parameters; per-class ones in a class table."""

    def __init__(self, parent: wx.Window | None, names: Sequence[str], tooltips: Sequence[str],
                 preselect: tuple[int | None, int | None], fields: Sequence[Field], classes: Sequence[str]):
        super().__init__(parent, title=TITLE, style=wx.DEFAULT_DIALOG_STYLE | wx.RESIZE_BORDER)
        self.fields = list(fields)
        self.widgets: dict[str, wx.Window] = {}
        self.t2 = self._choice(names, tooltips, preselect[0])
        self.t1 = self._choice(names, tooltips, preselect[1])
        sizer = wx.BoxSizer(wx.VERTICAL)
        sizer.Add(self._inputs_box(), 0, wx.EXPAND | wx.ALL, 8)
        sizer.Add(self._class_box(classes), 0, wx.EXPAND | wx.LEFT | wx.RIGHT, 8)
        sizer.Add(self._options_box(), 0, wx.EXPAND | wx.ALL, 8)
        buttons = self.CreateStdDialogButtonSizer(wx.OK | wx.CANCEL)
        self.FindWindowById(wx.ID_OK).SetLabel("Segment")
        sizer.Add(buttons, 0, wx.EXPAND | wx.ALL, 8)
        self.SetSizerAndFit(sizer)

    def _choice(self, names: Sequence[str], tooltips: Sequence[str], index: int | None) -> wx.Choice:
        choice = wx.Choice(self, choices=list(names))
        if index is not None:
            choice.SetSelection(index)
        choice.Bind(wx.EVT_CHOICE, lambda _e: choice.SetToolTip(tooltips[choice.GetSelection()]))
        if index is not None:
            choice.SetToolTip(tooltips[index])
        return choice

    def _inputs_box(self) -> wx.Sizer:
        box = wx.StaticBoxSizer(wx.VERTICAL, self, "Inputs")
        grid = wx.FlexGridSizer(2, 8, 8)
        grid.AddGrowableCol(1)
        for label, choice in (("T2w", self.t2), ("T1w (gadolinium)", self.t1)):
            grid.Add(wx.StaticText(self, label=label), 0, wx.ALIGN_CENTER_VERTICAL)
            grid.Add(choice, 1, wx.EXPAND)
        box.Add(grid, 0, wx.EXPAND | wx.ALL, 4)
        return box

    def _class_box(self, classes: Sequence[str]) -> wx.Sizer:
        per_class = [f for f in self.fields if f.cls is not None]
        params = list(dict.fromkeys(f.param for f in per_class))
        box = wx.StaticBoxSizer(wx.VERTICAL, self, "Per class")
        grid = wx.FlexGridSizer(len(params) + 1, 6, 12)
        grid.Add(wx.StaticText(self, label=""))
        for param in params:
            first = next(f for f in per_class if f.param == param)
            header = wx.StaticText(self, label=first.label)
            header.SetToolTip(first.help)
            grid.Add(header, 0, wx.ALIGN_CENTER_HORIZONTAL)
        for cls in classes:
            grid.Add(wx.StaticText(self, label=cls), 0, wx.ALIGN_CENTER_VERTICAL)
            for param in params:
                field = next(f for f in per_class if f.param == param and f.cls == cls)
                grid.Add(self._add(field), 0, wx.ALIGN_CENTER)
        box.Add(grid, 0, wx.ALL, 4)
        return box

    def _options_box(self) -> wx.Sizer:
        box = wx.StaticBoxSizer(wx.VERTICAL, self, "Options")
        grid = wx.FlexGridSizer(2, 6, 8)
        grid.AddGrowableCol(1)
        for field in (f for f in self.fields if f.cls is None):
            label = "" if field.kind is ParamKind.BOOL else field.label
            grid.Add(wx.StaticText(self, label=label), 0, wx.ALIGN_CENTER_VERTICAL)
            grid.Add(self._add(field), 1, wx.EXPAND)
        box.Add(grid, 0, wx.EXPAND | wx.ALL, 4)
        return box

    def _add(self, field: Field) -> wx.Window:
        widget = _widget(self, field)
        widget.SetToolTip(field.help)
        self.widgets[field.key] = widget
        return widget

    def values(self) -> dict[str, Any]:
        """{field key: widget value} (raw: :func:`.logic.parse_values` converts and checks)."""
        return {key: widget.GetValue() for key, widget in self.widgets.items()}

    def set_values(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            self.widgets[key].SetValue(value)

    def selection(self) -> tuple[int, int]:
        """Indices of the chosen (T2w, T1w) in the names given."""
        return self.t2.GetSelection(), self.t1.GetSelection()

    def select(self, t2: int, t1: int) -> None:
        self.t2.SetSelection(t2)
        self.t1.SetSelection(t1)


class ProgressDialog(wx.Dialog):
    """Modeless: a gauge, the command's latest line and Cancel; polls ``run`` on the main loop and
    calls ``on_finished(outcome)`` once (then destroys itself)."""

    def __init__(self, parent: wx.Window | None, run: CommandRun, on_finished: Callable[[Outcome], None]):
        super().__init__(parent, title=TITLE, style=wx.CAPTION | wx.RESIZE_BORDER)
        self.run = run
        self.on_finished = on_finished
        self.gauge = wx.Gauge(self, range=GAUGE_RANGE, size=(360, -1))
        self.text = wx.StaticText(self, label="starting…", style=wx.ST_ELLIPSIZE_END)
        self.cancel_button = wx.Button(self, wx.ID_CANCEL, "Cancel")
        self.cancel_button.Bind(wx.EVT_BUTTON, self.on_cancel)
        self.Bind(wx.EVT_CLOSE, self.on_cancel)
        sizer = wx.BoxSizer(wx.VERTICAL)
        for widget, flags in ((self.gauge, wx.EXPAND), (self.text, wx.EXPAND), (self.cancel_button, wx.ALIGN_RIGHT)):
            sizer.Add(widget, 0, flags | wx.ALL, 8)
        self.SetSizerAndFit(sizer)
        self.timer = wx.Timer(self)
        self.Bind(wx.EVT_TIMER, self.poll, self.timer)
        self.timer.Start(POLL_MS)

    def show_progress(self, progress: Progress) -> None:
        if progress.fraction is None:
            self.gauge.Pulse()
        else:
            self.gauge.SetValue(round(progress.fraction * GAUGE_RANGE))
        if self.text.GetLabel() != progress.text:
            self.text.SetLabel(progress.text)

    def poll(self, _event: wx.TimerEvent | None = None) -> None:
        outcome = self.run.outcome()
        if outcome is None:
            self.show_progress(self.run.progress())
            return
        self.timer.Stop()
        self.Destroy()
        self.on_finished(outcome)

    def on_cancel(self, _event: wx.Event | None = None) -> None:
        """Stop waiting: the command is interrupted, nothing is loaded."""
        self.run.cancel()
        self.cancel_button.Disable()
        self.text.SetLabel("cancelling…")
