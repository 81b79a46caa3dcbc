"""The outputs contract: what a run writes, under which names, and how a viewer shows it.

Every other module asks this one: the command's name and error prefix, the default task, the
output keys (``seg-<class>``, and ``seg-cord`` / ``cropbox`` for quality control) and file names
(``<T2w name>_<key>.nii.gz`` with a ``.json`` sidecar), the temporary names files are written
under before their atomic rename, and the colours and draw order of the overlays.
"""
from __future__ import annotations

import glob
import re
import shlex
from pathlib import Path
from typing import Iterable, Mapping, Sequence

PROG = "imsct_deepseg"
ERROR_PREFIX = f"{PROG}: error: "
DEFAULT_TASK = "tumor_edema_cavity_t1_t2"  # sct_deepseg's name; also the entry-point name in setup.cfg (tested)
OLD_TASK_NAME = "seg_tumor-edema-cavity_t1-t2"  # the name before sct_deepseg renamed its tasks: an alias

IMAGE_SUFFIX, SIDECAR_SUFFIX = ".nii.gz", ".json"
CORD, CROPBOX = "seg-cord", "cropbox"  # the quality-control outputs (-qc)
QC_KEYS = (CORD, CROPBOX)
STATS, STATS_SUFFIX = "stats", ".tsv"  # <stem>_stats.tsv (one row), its sidecar <stem>_stats.json: every statistic
TEMP_SUFFIX = ".part"  # a file being written is '.<final name>.<random>.part' in the output folder
TEMP_RANDOM = 8  # characters of tempfile's random part
# a temporary (or, while a set is replaced, a backup) file of this tool: what a killed run leaves
TEMP_NAME = re.compile(r"^\..+\.(?:nii\.gz|json|tsv|png|html)\.[a-z0-9_]+\.part$")
LOCK_NAME = f".{PROG}.lock"  # in the output folder: one writer at a time
JOURNAL_NAME = f".{PROG}.journal.json"  # in the output folder while a set is being replaced
TOOL_NAME = "deepseg-imsct"  # sidecars name their writer: GeneratedBy[0].Name

# FSLeyes colour map (the printed viewer command, soft outputs) and RGB colour (mask overlays)
COLOUR_MAPS = {"seg-tumor": "red", "seg-edema": "green", "seg-cavity": "blue", "seg-whole-tumor": "yellow",
               CORD: "copper", CROPBOX: "cool"}
COLOURS = {"seg-tumor": (1.0, 0.0, 0.0), "seg-edema": (0.0, 1.0, 0.0), "seg-cavity": (0.0, 0.4, 1.0),
           "seg-whole-tumor": (1.0, 1.0, 0.0), CORD: (0.85, 0.55, 0.25), CROPBOX: (0.0, 1.0, 1.0)}
DRAW_ORDER = (CROPBOX, CORD, "seg-whole-tumor", "seg-edema", "seg-cavity", "seg-tumor")  # last on top


def class_key(cls: str) -> str:
    """The output key of one class: 'tumor' -> 'seg-tumor'."""
    return f"seg-{cls}"


def output_keys(classes: Sequence[str], qc: bool, stats: bool = False) -> list[str]:
    """Keys of the outputs of a run, in the order they are written (classes, QC, statistics)."""
    return [class_key(c) for c in classes] + (list(QC_KEYS) if qc else []) + ([STATS] if stats else [])


def nifti_stem(path: Path) -> str:
    """File name without ``.nii`` / ``.nii.gz``."""
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def is_file_name(out: Path | str) -> bool:
    """Whether ``-o`` names a file (``out/sub.nii.gz``, as sct_deepseg takes it) rather than a folder."""
    return str(out).endswith((".nii", ".nii.gz"))


def output_base(t2: Path | str, out: Path | str | None) -> tuple[Path, str]:
    """(folder, name stem) of a run's outputs: ``out`` as a folder (default: the T2w's folder) with
    the T2w's name, or ``out`` as a file name (``out/sub.nii.gz``: folder ``out``, stem ``sub``)."""
    t2 = Path(t2)
    if out and is_file_name(out):
        return Path(out).parent, nifti_stem(Path(out))
    return (Path(out) if out else t2.parent), nifti_stem(t2)


def output_paths(t2: Path | str, out_dir: Path | str | None, keys: Iterable[str]) -> dict[str, Path]:
    """{key: ``<folder>/<stem>_<key>.nii.gz``} (``_stats.tsv`` for :data:`STATS`); folder and stem
    from :func:`output_base`."""
    folder, stem = output_base(t2, out_dir)
    return {key: folder / f"{stem}_{key}{STATS_SUFFIX if key == STATS else IMAGE_SUFFIX}" for key in keys}


def sidecar_path(output: Path) -> Path:
    """The JSON sidecar of an output: ``x.nii.gz`` -> ``x.json``, ``x_stats.tsv`` -> ``x_stats.json``."""
    if output.name.endswith(IMAGE_SUFFIX):
        return output.with_name(output.name[: -len(IMAGE_SUFFIX)] + SIDECAR_SUFFIX)
    return output.with_suffix(SIDECAR_SUFFIX)


def output_suffixes(classes: Sequence[str]) -> dict[str, str]:
    """{class or QC output: file-name suffix}, e.g. {'tumor': '_seg-tumor', 'cord': '_seg-cord'}."""
    return {**{c: f"_{class_key(c)}" for c in classes}, "cord": f"_{CORD}", "cropbox": f"_{CROPBOX}"}


def name_pattern(labels: Sequence[str]) -> re.Pattern:
    """Matches ``<stem>_seg-<label>.nii[.gz]`` (group ``label``) and ``<stem>_cropbox.nii[.gz]``."""
    alternatives = "|".join(re.escape(label) for label in sorted(labels, key=len, reverse=True))
    return re.compile(rf"^(?P<stem>.+?)(?:_seg-(?P<label>{alternatives})|_(?P<box>{CROPBOX}))\.nii(?:\.gz)?$")


def temp_prefix(final: Path) -> str:
    """The prefix of the temporary name ``final`` is written under (its suffix: :data:`TEMP_SUFFIX`)."""
    return f".{final.name}."


def temp_name_length(final: Path) -> int:
    """Bytes in the longest name a file written as ``final`` takes (its temporary name)."""
    return len(temp_prefix(final).encode()) + TEMP_RANDOM + len(TEMP_SUFFIX)


def temporary_files(outputs: Mapping[str, Path]) -> list[Path]:
    """The temporary files that writing ``outputs`` (and their sidecars) leaves if killed."""
    found: set[Path] = set()
    for path in outputs.values():
        for final in (path, path if path.name.endswith(SIDECAR_SUFFIX) else sidecar_path(path)):
            pattern = glob.escape(str(final.parent / temp_prefix(final))) + "*" + TEMP_SUFFIX
            found.update(Path(p) for p in glob.glob(pattern))
    return sorted(found)


def draw_rank(key: str) -> tuple[int, str]:
    """Sort key: outputs in the order to load them, the last drawn on top (tumor over edema)."""
    return (DRAW_ORDER.index(key) if key in DRAW_ORDER else -1, key)


def viewer_command(t2: str, t1: str, outputs: Mapping[str, Path]) -> str:
    """The FSLeyes command line that shows the inputs and the masks (the crop box left out)."""
    parts = ["fsleyes", shlex.quote(t2), shlex.quote(t1)]
    for key, path in outputs.items():
        if key in COLOUR_MAPS and key != CROPBOX:
            parts += [shlex.quote(str(path)), "-cm", COLOUR_MAPS[key], "-a", "70"]
    return " ".join(parts)
