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
from typing import Callable, Sequence

from . import __version__
from .errors import DeepsegError

log = logging.getLogger("deepseg_imsct")
PROG = "imsct_deepseg"
DEFAULT_TASK = "seg_tumor-edema-cavity_t1-t2"
VOLUME = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(cm3|mm3)?\s*$")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Segment intramedullary spinal cord tumor, edema and cavity on a sagittal T2w and a "
        "gadolinium-enhanced T1w (NIfTI). Writes <T2w name>_seg-{tumor,edema,cavity,whole-tumor}.nii.gz "
        "next to the T2w (or in -o), on the T2w's grid.",
        epilog="Per-class values (-thr, -fill-holes, -remove-small) take one value for every class, one per class "
        "in the order tumor edema cavity whole-tumor, or CLASS=VALUE pairs (e.g. -remove-small edema=1cm3).",
    )
    p.add_argument("task", nargs="?", default=DEFAULT_TASK, help=f"task name or alias (default: {DEFAULT_TASK})")
    p.add_argument("-i", nargs="+", metavar="FILE", help="input images: the T2w then the T1w (see -c)")
    p.add_argument("-c", nargs="+", metavar="CONTRAST", choices=["t2", "t1"], help="contrasts of the -i files, in their order (default: t2 t1)")
    p.add_argument("-o", metavar="FOLDER", help="output folder (default: the T2w's folder; created if missing)")
    p.add_argument("-thr", nargs="+", metavar="P", help="binarization threshold(s), probabilities in [0, 1] (default: each class's value in the model's registry entry)")
    p.add_argument("-fill-holes", nargs="+", metavar="0|1", help="fill 3D holes, per class (default: 1)")
    p.add_argument("-remove-small", nargs="+", metavar="VOL", help="remove components smaller than VOL in cm3 (suffix cm3 or mm3 allowed; default tumor 0.2, edema 0.5, cavity 0.5, whole-tumor 0.2 cm3)")
    p.add_argument("-soft", action="store_true", help="write probabilities (float32) instead of binary masks; thresholds are then ignored")
    p.add_argument("-qc", action="store_true", help="also write the localizer's cord mask (_seg-cord) and the crop box (_cropbox)")
    p.add_argument("-list-tasks", action="store_true", help="list the tasks, their models and whether they are installed, then exit")
    p.add_argument("-install", action="store_true", help="install the task's models (download, or --from a local file/folder), then exit")
    p.add_argument("--from", dest="source", metavar="PATH", help="with -install: import the weights from this file or folder (offline)")
    p.add_argument("-localizer-version", metavar="V", help="pin the localizer model version (default: the registry's)")
    p.add_argument("-segmenter-version", metavar="V", help="pin the segmenter model version (default: the registry's)")
    p.add_argument("-offline", action="store_true", help="never use the network (models must be bundled or installed)")
    p.add_argument("-threads", type=int, default=0, metavar="N", help="CPU threads for ONNX Runtime (default 0: physical cores)")
    p.add_argument("-v", type=int, choices=[0, 1, 2], default=1, help="verbosity: 0 warnings, 1 info (default), 2 debug")
    p.add_argument("-version", action="version", version=f"%(prog)s {__version__}")
    return p


def per_class(values: Sequence[str] | None, classes: Sequence[str], convert: Callable[[str], object], option: str) -> dict | None:
    """Parse one value, one per class in order, or CLASS=VALUE pairs, into {class: value}."""
    if not values:
        return None
    try:
        if all("=" in v for v in values):
            pairs = dict(v.split("=", 1) for v in values)
            unknown = set(pairs) - set(classes)
            if unknown:
                raise DeepsegError(f"{option}: unknown class {', '.join(sorted(unknown))} (classes: {' '.join(classes)})")
            return {c: convert(v) for c, v in pairs.items()}
        if len(values) == 1:
            return {c: convert(values[0]) for c in classes}
        if len(values) == len(classes):
            return {c: convert(v) for c, v in zip(classes, values)}
    except ValueError as exc:
        raise DeepsegError(f"{option}: {exc}") from None
    raise DeepsegError(f"{option} takes 1 value, {len(classes)} values ({' '.join(classes)}) or CLASS=VALUE pairs; got {len(values)}")


def volume_cm3(text: str) -> float:
    match = VOLUME.match(text)
    if not match:
        raise ValueError(f"'{text}' is not a volume (examples: 0.2, 0.2cm3, 200mm3)")
    value = float(match.group(1))
    return value / 1000.0 if match.group(2) == "mm3" else value


def probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")  # refused below with the same message
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"threshold {text} is not a probability in [0, 1] (use -soft for probabilities)")
    return value


def flag(text: str) -> bool:
    if text not in ("0", "1"):
        raise ValueError(f"'{text}' is not 0 or 1")
    return text == "1"


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
    from .registry import load_registry

    reg = load_registry()
    lines = []
    for task in reg.tasks.values():
        lines.append(f"{task.name} (alias: {', '.join(task.aliases)})  inputs: {' '.join(task.contrasts)}")
        lines.append(f"    {task.description}")
        for model in (task.localizer, task.segmenter):
            spec = reg.model(model)
            state = "installed" if is_installed(spec) else "not installed"
            lines.append(f"    model {spec.name} {spec.version} [{state}] versions: {', '.join(reg.versions(model))}")
    return "\n".join(lines)


def install(task_name: str, source: str | None, offline: bool, versions: dict) -> list[Path]:
    """Install the task's models: download them, or import from a folder holding them or one model file."""
    from .download import ensure_model, import_model, sha256sum
    from .registry import load_registry

    reg = load_registry()
    task = reg.task(task_name)
    specs = [reg.model(m, versions.get(m)) for m in (task.localizer, task.segmenter)]
    if not source:
        return [ensure_model(spec, offline=offline, progress=True) for spec in specs]
    path = Path(source)
    if not path.exists():
        raise DeepsegError(f"--from {path} does not exist: give the downloaded model file or the folder that holds the task's models")
    if path.is_dir():
        return [import_model(spec, path) for spec in specs]
    digest = sha256sum(path) if path.is_file() else None
    matching = [spec for spec in specs if spec.sha256 == digest]
    if not matching:
        expected = ", ".join(f"{s.key} ({s.file}, sha256 {s.sha256[:12]}...)" for s in specs)
        raise DeepsegError(f"{path} is none of this task's model files ({expected}): give the right file or a folder holding them")
    return [import_model(spec, path) for spec in matching]


def viewer_command(t2: str, t1: str, outputs: dict) -> str:
    colours = {"seg-tumor": "red", "seg-edema": "green", "seg-cavity": "blue", "seg-whole-tumor": "yellow", "seg-cord": "copper"}
    parts = ["fsleyes", shlex.quote(t2), shlex.quote(t1)]
    for key, path in outputs.items():
        if key in colours:
            parts += [shlex.quote(str(path)), "-cm", colours[key], "-a", "70"]
    return " ".join(parts)


def run(args: argparse.Namespace) -> int:
    from .registry import load_registry

    reg = load_registry()
    task = reg.task(args.task)
    versions = {m: v for m, v in ((task.localizer, args.localizer_version), (task.segmenter, args.segmenter_version)) if v}
    if args.list_tasks:
        print(list_tasks())
        return 0
    if args.install:
        for path in install(task.name, args.source, args.offline, versions):
            log.info("installed %s", path)
        return 0
    t2, t1 = order_inputs(args.i, args.c, task.contrasts)
    from .inference import RuntimeOptions
    from .io import check_input_file

    check_input_file(t2, "T2w")
    check_input_file(t1, "T1w")
    from .pipeline import Predictor

    if args.threads < 0:
        raise DeepsegError("-threads must be >= 0 (0 lets ONNX Runtime use the physical cores)")
    seg_spec = reg.model(task.segmenter, versions.get(task.segmenter))
    classes = seg_spec.classes
    from .postprocess import PostprocessConfig

    post = PostprocessConfig.from_defaults(seg_spec.postprocessing).with_overrides(
        per_class(args.thr, classes, probability, "-thr"),
        per_class(args.fill_holes, classes, flag, "-fill-holes"),
        per_class(args.remove_small, classes, volume_cm3, "-remove-small"),
        soft=args.soft,
    )
    predictor = Predictor(task.name, versions=versions, runtime=RuntimeOptions(threads=args.threads), registry=reg,
                          offline=args.offline, progress=args.v > 0)
    outputs = predictor.run_files(t2, t1, args.o, post, qc=args.qc, command=args.command_line)
    for key, path in outputs.items():
        log.info("wrote %s", path)
    log.info("\nTo view the results, type:\n%s", viewer_command(t2, t1, outputs))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.command_line = shlex.join([PROG, *argv])
    handler = configure_logging(args.v)
    try:
        return run(args)
    except DeepsegError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted: no output was written or changed", file=sys.stderr)
        return 130
    finally:
        log.removeHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
