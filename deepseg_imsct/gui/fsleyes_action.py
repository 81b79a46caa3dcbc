"""The FSLeyes Tools-menu action (entry point ``fsleyes_tools``): form, background run, overlays.

Flow: :meth:`SegmentTumorAction.ask` (modal form) -> :meth:`~SegmentTumorAction.start` (the command
in a child process, a modeless progress dialog with Cancel; the viewer stays usable) ->
:meth:`~SegmentTumorAction.complete` (masks loaded on the T2w with per-class colours). The
non-wx steps (:meth:`candidates`, :meth:`request`, :meth:`run_blocking`, :meth:`complete`) work
with a real OverlayList/DisplayContext and no display (``frame=None``).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import wx
from fsl.data.image import Image
from fsleyes.actions.base import Action

from ..errors import DeepsegError
from ..outputs import DEFAULT_TASK, ERROR_PREFIX
from ..task import Task
from . import dialog
from .logic import (
    Field,
    ImageInfo,
    Request,
    choose_inputs,
    form_fields,
    load_order,
    overlay_settings,
    parse_values,
    read_stats,
    stats_summary,
)
from .runner import CommandRun, Outcome, Status

log = logging.getLogger(__name__)


def image_info(image: Image) -> ImageInfo:
    """What :func:`.logic.choose_inputs` needs to know about a loaded image."""
    low, high = (float(v) for v in image.dataRange)
    descrip = image.header.get("descrip") if image.header is not None else None
    descrip = descrip.item().decode("latin-1", "replace") if isinstance(descrip, np.ndarray) else str(descrip or "")
    return ImageInfo(
        name=image.name,
        path=Path(image.dataSource),
        description=descrip,
        volumes=int(np.prod(image.shape[3:])) if image.ndim > 3 else 1,
        looks_like_mask=np.issubdtype(image.dtype, np.integer) and 0.0 <= low and high <= 1.0,
    )


class SegmentTumorAction(Action):
    """Tools → 'Segment spinal cord tumor (T2w + T1w)…'; enabled with two images loaded from files."""

    def __init__(self, overlayList, displayCtx, frame=None):
        super().__init__(overlayList, displayCtx, self._segment, name="segmentSpinalCordTumor")
        self._frame = frame
        self._run: CommandRun | None = None
        self.last_summary = ""  # the last run's statistics as text (gui.logic.stats_summary)
        overlayList.addListener("overlays", self.name, self._update_enabled)
        self._update_enabled()

    def destroy(self) -> None:
        if self._run is not None:
            self._run.cancel()
        self.overlayList.removeListener("overlays", self.name)
        super().destroy()

    @property
    def running(self) -> CommandRun | None:
        return self._run

    def _update_enabled(self, *_args: Any) -> None:
        self.enabled = self._run is None and len(self.candidates()) >= 2

    # --- steps that need no display ------------------------------------------------------------

    def candidates(self) -> list[tuple[Image, ImageInfo]]:
        """The loaded images that are files (the command reads files), with what the chooser needs."""
        return [(o, image_info(o)) for o in self.overlayList if isinstance(o, Image) and o.dataSource]

    @staticmethod
    def form() -> tuple[list[Field], tuple[str, ...]]:
        """The form fields and classes, from the task's own parameter specs (DeepsegError if the
        task's models are not in the registry)."""
        task = Task(DEFAULT_TASK)
        classes = task.classes()
        return form_fields(task.parameters(), classes), classes

    @staticmethod
    def request(infos: Sequence[ImageInfo], selection: tuple[int, int], values: Mapping[str, Any],
                fields: Sequence[Field], classes: Sequence[str]) -> Request:
        """The run the form's answers ask for; raises DeepsegError with the command's wording."""
        t2, t1 = selection
        if t2 < 0 or t1 < 0:
            raise DeepsegError("choose the T2w and the T1w")
        specs = list({field.param: field.spec for field in fields}.values())
        request = Request(infos[t2].path, infos[t1].path, parse_values(fields, values), specs, tuple(classes))
        request.check()
        return request

    def run_blocking(self, request: Request, timeout: float | None = None) -> tuple[Outcome | None, list[Image]]:
        """Run and load the result without any dialog (tests, scripts): (outcome, loaded overlays)."""
        run = CommandRun(request.args(), request.outputs()).start()
        outcome = run.wait(timeout)
        if outcome is None:
            run.cancel()
            return run.wait(), []
        return outcome, self.complete(request, outcome)

    def complete(self, request: Request, outcome: Outcome) -> list[Image]:
        """Load the outputs of a successful run on top of the T2w (replacing earlier copies)."""
        if outcome.status is not Status.DONE:
            return []
        targets = {p.resolve() for p in outcome.outputs.values()}
        for overlay in list(self.overlayList):
            if getattr(overlay, "dataSource", None) and Path(overlay.dataSource).resolve() in targets:
                self.overlayList.remove(overlay)
        loaded = []
        for key in load_order(list(outcome.outputs)):
            image = Image(str(outcome.outputs[key]))
            self.overlayList.append(image, **overlay_settings(key, request.soft))
            loaded.append(image)
        log.info("loaded %d overlays: %s", len(loaded), ", ".join(i.name for i in loaded))
        self.last_summary = stats_summary(read_stats(request.stats_file()))
        log.info("%s", self.last_summary)
        return loaded

    # --- the GUI ------------------------------------------------------------------------------

    def _segment(self) -> None:
        candidates = self.candidates()
        try:
            if len(candidates) < 2:
                raise DeepsegError("load the T2w and the gadolinium T1w (two NIfTI files) first")
            fields, classes = self.form()
        except DeepsegError as exc:
            dialog.show_error(self._frame, f"{ERROR_PREFIX}{exc}")
            return
        request = self.ask([info for _, info in candidates], fields, classes)
        if request is not None:
            self.start(request)

    def ask(self, infos: Sequence[ImageInfo], fields: Sequence[Field], classes: Sequence[str]) -> Request | None:
        """Show the form until its answers make a valid request (None: the user cancelled)."""
        names = [info.name for info in infos]
        tooltips = [str(info.path) for info in infos]
        form = dialog.SegmentDialog(self._frame, names, tooltips, choose_inputs(infos), fields, classes)
        try:
            while form.ShowModal() == wx.ID_OK:
                try:
                    return self.request(infos, form.selection(), form.values(), fields, classes)
                except DeepsegError as exc:
                    dialog.show_error(form, f"{ERROR_PREFIX}{exc}")
            return None
        finally:
            form.Destroy()

    def start(self, request: Request) -> CommandRun:
        """Start the command in the background and show the progress dialog."""
        self._run = CommandRun(request.args(), request.outputs()).start()
        self._update_enabled()
        dialog.ProgressDialog(self._frame, self._run, partial(self._finished, request)).Show()
        return self._run

    def _finished(self, request: Request, outcome: Outcome) -> None:
        self._run = None
        if self.destroyed:
            return
        self._update_enabled()
        if outcome.status is Status.FAILED:
            dialog.show_error(self._frame, outcome.message)
        elif outcome.status is Status.CANCELLED:
            log.info("%s", outcome.message)
        if self.complete(request, outcome):
            dialog.show_info(self._frame, "Lesion statistics", self.last_summary)
