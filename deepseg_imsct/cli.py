"""``imsct_deepseg``: the command, in the style of ``sct_deepseg``.

Example: ``imsct_deepseg tumor_edema_cavity_t1_t2 -i sub_T2w.nii.gz sub_T1w.nii.gz``.
Errors print one line ``imsct_deepseg: error: ...`` and exit with status 2.
"""
from __future__ import annotations

import argparse
import logging
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from . import __version__
from .console import exit_status, safe_streams, stop_signals_interrupt
from .errors import DeepsegError
from .outputs import DEFAULT_TASK, PROG, viewer_command
from .params import ParamKind, ParamSpec, parameters

log = logging.getLogger("deepseg_imsct")


def task_parameters(task: str = DEFAULT_TASK, version: str | None = None) -> tuple[list[ParamSpec], tuple[str, ...]]:
    """The parameters and classes of ``task``'s segmenter (defaults from the registry)."""
    from .registry import load_registry

    reg = load_registry()
    spec = reg.model(reg.task(task).segmenter, version)
    return parameters(spec.postprocessing), spec.classes


def build_parser(specs: Sequence[ParamSpec] | None = None, classes: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The command's options; the task's parameters are generated from ``specs`` (default: the
    default task's, or without their defaults in the help where the registry cannot be read)."""
    if specs is None:
        try:
            specs, classes = task_parameters()
        except DeepsegError:  # reported, with its fix, when the command runs
            specs = parameters({})
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Segment intramedullary spinal cord tumor, edema and cavity on a sagittal T2w and a "
        "gadolinium-enhanced T1w (NIfTI). Writes <T2w name>_seg-{tumor,edema,cavity,whole-tumor}.nii.gz "
        "next to the T2w (or in -o), on the T2w's grid.",
        epilog=f"Per-class values ({', '.join(s.option for s in specs if s.per_class)}) take one value for every class, "
        f"one per class in the order {' '.join(classes) or 'of the classes'}, or CLASS=VALUE pairs (e.g. -remove-small edema=1cm3).",
    )
    p.add_argument("task", nargs="?", default=DEFAULT_TASK, help=f"task name or alias (default: {DEFAULT_TASK})")
    p.add_argument("-i", nargs="+", metavar="FILE", help="input images: the T2w then the T1w (see -c)")
    p.add_argument("-c", nargs="+", metavar="CONTRAST", choices=["t2", "t1"], help="contrasts of the -i files, in their order (default: t2 t1)")
    for spec in specs:
        _add_parameter(p, spec)
    p.add_argument("-list-tasks", action="store_true", help="list the tasks, their models and whether they are installed, then exit")
    p.add_argument("-install", action="store_true", help="install the task's models (download, or --from a local file/folder), then exit")
    p.add_argument("--from", dest="source", metavar="PATH", help="with -install: import the weights from this file or folder (offline)")
    p.add_argument("-localizer-version", metavar="V", help="pin the localizer model version (default: the registry's)")
    p.add_argument("-segmenter-version", metavar="V", help="pin the segmenter model version (default: the registry's)")
    p.add_argument("-offline", action="store_true", help="never use the network (models must be bundled or installed)")
    p.add_argument("-v", type=int, choices=[0, 1, 2], default=1, help="verbosity: 0 warnings, 1 info (default), 2 debug")
    p.add_argument("-version", action="version", version=f"%(prog)s {__version__}")
    return p


def _add_parameter(p: argparse.ArgumentParser, spec: ParamSpec) -> None:
    """One task parameter as an option: per class (strings, checked by :func:`params.convert_all`),
    a flag, or one value."""
    volume = spec.kind is ParamKind.VOLUME  # its help names the units the command takes
    text = spec.help + (f", in {spec.unit}" if spec.unit and not volume else "")
    dest = spec.option.lstrip("-").replace("-", "_")
    if spec.per_class:
        default = (spec.default_text() + (f" {spec.unit}" if volume else "")) if spec.default else "the model's registry entry"
        p.add_argument(spec.option, dest=dest, nargs="+", metavar=spec.metavar, help=f"{text}, per class (default: {default})")
    elif spec.kind is ParamKind.BOOL:
        p.add_argument(spec.option, dest=dest, action="store_true", help=text)
    else:
        kind = int if spec.kind is ParamKind.INT else str
        p.add_argument(spec.option, dest=dest, type=kind, default=spec.default, metavar=spec.metavar, help=text,
                       choices=spec.choices or None)


def per_class(values: Sequence[str] | None, classes: Sequence[str], option: str) -> dict[str, str] | None:
    """The command's per-class syntax: one value, one per class in order, or CLASS=VALUE pairs ->
    {class: text} (checked and typed by :func:`params.convert_all`)."""
    if not values:
        return None
    if all("=" in v for v in values):
        return dict(v.split("=", 1) for v in values)
    if len(values) == 1:
        return {c: values[0] for c in classes}
    if len(values) == len(classes):
        return dict(zip(classes, values))
    raise DeepsegError(f"{option} takes 1 value, {len(classes)} values ({' '.join(classes)}) or CLASS=VALUE pairs; got {len(values)}")


def user_values(args: argparse.Namespace, specs: Sequence[ParamSpec], classes: Sequence[str]) -> dict[str, Any]:
    """The task's parameters as the command line gives them ({name: value or {class: text}})."""
    values = {}
    for spec in specs:
        given = getattr(args, spec.option.lstrip("-").replace("-", "_"))
        if spec.kind is ParamKind.VOLUME and given:
            given = last_unit(given)
        values[spec.name] = per_class(given, classes, spec.option) if spec.per_class else given
    return values


def last_unit(values: Sequence[str]) -> list[str]:
    """sct_deepseg's ``-remove-small 10 20 30 40mm3``: bare numbers take the last value's unit."""
    unit = re.search(r"(cm3|mm3|vox)\s*$", values[-1])
    if len(values) < 2 or not unit or any("=" in v for v in values):
        return list(values)
    return [v if re.search(r"[a-z]", v) else f"{v}{unit.group(1)}" for v in values]


def order_inputs(files: Sequence[str] | None, contrasts: Sequence[str] | None, required: Sequence[str]) -> list[str]:
    """The -i files in the task's contrast order (T2w first)."""
    if not files or len(files) != len(required):
        raise DeepsegError(f"-i needs {len(required)} files ({' and '.join(c.upper() + 'w' for c in required)}); got {len(files or [])}")
    contrasts = contrasts or list(required)
    if sorted(contrasts) != sorted(required):
        raise DeepsegError(f"-c must name each of {' '.join(required)} once, in the order of the -i files; got {' '.join(contrasts)}")
    by_contrast = dict(zip(contrasts, files))
    return [by_contrast[c] for c in required]


def configure_logging(verbosity: int) -> logging.Handler:
    """Send the package's log records to stderr at the chosen verbosity; returns the handler."""
    level = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}[verbosity]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s" if verbosity < 2 else "%(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(level)
    return handler


def list_tasks() -> str:
    from .download import is_installed
    from .registry import DEFAULT_MODEL_SET, load_registry

    reg = load_registry()
    lines = []
    for task in reg.tasks.values():
        lines.append(f"{task.name} (alias: {', '.join(task.aliases)})  inputs: {' '.join(task.contrasts)}")
        lines.append(f"    {task.description}")
        for model_set in (DEFAULT_MODEL_SET, *task.model_sets):
            for model in task.models(model_set):
                spec = reg.model(model)
                state = "installed" if is_installed(spec) else "not installed"
                lines.append(f"    -model-set {model_set}: model {spec.name} {spec.version} [{state}] "
                             f"versions: {', '.join(reg.versions(model))}")
    return "\n".join(lines)


def install(task_name: str, source: str | None, offline: bool, versions: dict, model_set: str | None = None) -> list[Path]:
    """Install the task's models (of ``model_set``): download them, or import from a folder holding
    them (or the reference toolbox's model folders) or one model file."""
    from .checksums import git_blob_sha1, sha256_file
    from .download import ensure_model, import_model
    from .registry import load_registry

    reg = load_registry()
    task = reg.task(task_name)
    specs = [reg.model(m, versions.get(m)) for m in task.models(model_set)]
    if not source:
        return [ensure_model(spec, offline=offline, progress=True) for spec in specs]
    path = Path(source)
    if not path.exists():
        raise DeepsegError(f"--from {path} does not exist: give the downloaded model file or the folder that holds the task's models")
    if path.is_dir():
        from .toolbox import find_folders, install_folder

        if find_folders(path):  # the reference toolbox's model folders (ONNX + ivadomed JSON)
            return install_folder(path, reg, task.name)
        return [import_model(spec, path) for spec in specs]
    if path.name.lower().endswith(".zip"):  # a published model folder's tag archive
        from .archive import archive_members, member_name

        matching = [spec for spec in specs if spec.blob_sha1 and member_name(archive_members(path), spec.file)]
        if not matching:
            raise DeepsegError(f"{path} holds none of this model set's files ({', '.join(s.file for s in specs)}) in its top "
                               "folder: give the archive of a published model folder (see -model-set)")
        return [import_model(spec, path) for spec in matching]
    digest, blob = (sha256_file(path), git_blob_sha1(path)) if path.is_file() else (None, None)
    matching = [spec for spec in specs if spec.sha256 == digest or (spec.blob_sha1 and spec.blob_sha1 == blob)]
    if not matching:
        expected = ", ".join(f"{s.key} ({s.file}, sha256 {s.sha256[:12]}...)" for s in specs)
        raise DeepsegError(f"{path} is none of this task's model files ({expected}): give the right file or a folder holding them")
    return [import_model(spec, path) for spec in matching]


def run(args: argparse.Namespace) -> int:
    from .registry import load_registry

    reg = load_registry()
    task = reg.task(args.task)
    localizer, segmenter = task.models(args.model_set)
    versions = {m: v for m, v in ((localizer, args.localizer_version), (segmenter, args.segmenter_version)) if v}
    if args.list_tasks:
        print(list_tasks())
        sys.stdout.flush()
        if getattr(sys.stdout, "failed", False):  # the listing is the whole result: say it was lost
            raise DeepsegError("could not write the task list to standard output (closed, or the disk is full)")
        return 0
    if args.install:
        for path in install(task.name, args.source, args.offline, versions, args.model_set):
            log.info("installed %s", path)
        return 0
    t2, t1 = order_inputs(args.i, args.c, task.contrasts)
    from .io import check_input_file
    from .params import configure

    check_input_file(t2, "T2w")
    check_input_file(t1, "T1w")
    seg_spec = reg.model(segmenter, versions.get(segmenter))
    values = user_values(args, parameters(seg_spec.postprocessing), seg_spec.classes)
    settings = configure(seg_spec, values, naming=lambda spec, _cls: spec.option)
    from .outputs import output_keys, output_paths
    from .pipeline import Predictor
    from .transaction import check_outputs

    targets = output_paths(t2, settings.out_dir, output_keys(seg_spec.classes, False, stats=not settings.post.soft))
    check_outputs(targets.values(), {"T2w": t2, "T1w": t1}, settings.overwrite)  # before the models load
    if settings.qc:
        from .qc_report import check_report

        check_report(settings.qc, t2, {"T2w": t2, "T1w": t1}, settings.overwrite)

    predictor = Predictor(task.name, versions=versions, runtime=settings.runtime, registry=reg,
                          offline=args.offline, progress=args.v > 0, model_set=settings.model_set)
    outputs = predictor.run_files(t2, t1, settings.out_dir, settings.post, qc=settings.qc, command=args.command_line,
                                  overwrite=settings.overwrite)
    for key, path in outputs.items():
        log.info("wrote %s", path)
    log.info("\nTo view the results, type:\n%s", viewer_command(t2, t1, outputs))
    return 0


def run_main(prog: str, argv: Sequence[str] | None, build: Callable[[], argparse.ArgumentParser],
             run_args: Callable[[argparse.Namespace], int], interrupted: str) -> int:
    """A command's main (this one's and ``imsct_batch``'s): parse ``argv``, log at ``-v``, run;
    a :class:`DeepsegError` is one line and status 2, Ctrl-C, SIGTERM or SIGHUP print
    ``<prog>: interrupted: <interrupted>`` and return 128 + the signal's number; stdout and stderr
    may be closed or full."""
    with safe_streams():
        parser = build()
        argv = list(sys.argv[1:] if argv is None else argv)
        args = parser.parse_args(argv)
        args.command_line = shlex.join([prog, *argv])
        handler = configure_logging(args.v)
        try:
            with stop_signals_interrupt():
                return run_args(args)
        except DeepsegError as exc:
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as exc:
            print(f"{prog}: interrupted: {interrupted}", file=sys.stderr)
            return exit_status(exc)
        finally:
            log.removeHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    """The command: 0 when done, 2 for an error (one line), 128 + the signal's number when stopped
    by Ctrl-C (130), SIGTERM (143) or SIGHUP (129)."""
    return run_main(PROG, argv, build_parser, run, "no output was written or changed")


if __name__ == "__main__":
    sys.exit(main())
