"""``imsct_batch``: the task over a BIDS dataset, into a BIDS derivatives dataset.

Example: ``imsct_batch /data/bids -o /data/bids/derivatives/deepseg-imsct --workers 2``.
The task's parameters are the ones of ``imsct_deepseg`` (generated from :mod:`params`). Errors
print one line ``imsct_batch: error: ...`` and exit with status 2; a run where some subject
failed exits with status 1 (the status table says which, and why).
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from . import __version__
from .cli import _add_parameter, run_main, task_parameters, user_values
from .errors import DeepsegError
from .outputs import DEFAULT_TASK
from .params import ParamSpec, configure, parameters

PROG = "imsct_batch"
BATCH_ONLY = ("out_dir",)  # the derivatives folder is the batch's own -o


def build_parser(specs: Sequence[ParamSpec] | None = None, classes: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The command's options: the batch's own, then the task's parameters (as ``imsct_deepseg``'s)."""
    from .bids import T1W_PATTERN, T2W_PATTERN

    if specs is None:
        try:
            specs, classes = task_parameters()
        except DeepsegError:  # reported when the command runs
            specs = parameters({})
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Segment intramedullary spinal cord tumor, edema and cavity in every subject and session of a BIDS "
        "dataset that has a T2w and a gadolinium T1w; writes a BIDS derivatives dataset (masks and JSON sidecars under "
        "sub-*/[ses-*/]anat/), status.tsv (one row per subject) and the cohort's statistics. Subjects whose outputs "
        "are up to date (same parameters and models) are skipped.",
        epilog=f"Per-class values take one value, one per class ({' '.join(classes) or 'in order'}) or CLASS=VALUE pairs. "
        "Exit status: 0 all done, 1 some subject failed (see status.tsv), 2 error.",
    )
    p.add_argument("bids_root", metavar="BIDS_ROOT", help="the BIDS dataset (the folder holding sub-*)")
    p.add_argument("-o", dest="out", required=True, metavar="DERIVATIVES_DIR",
                   help="the derivatives dataset to write (e.g. BIDS_ROOT/derivatives/deepseg-imsct; created if missing)")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="local worker processes, each loading the models once (default 1)")
    p.add_argument("--num-parts", type=int, default=1, metavar="K", help="split the subjects into K parts (job arrays; default 1)")
    p.add_argument("--part-id", type=int, default=0, metavar="I", help="run part I of K, from 0 (e.g. $SLURM_ARRAY_TASK_ID)")
    p.add_argument("--dask", metavar="ADDRESS", help="run on a dask.distributed cluster whose scheduler is at ADDRESS (tcp://host:8786, or a scheduler file .json)")
    p.add_argument("--t2-pattern", default=T2W_PATTERN, metavar="REGEX", help=f"T2w file names (regex searched in the name; default {T2W_PATTERN})")
    p.add_argument("--t1-pattern", default=T1W_PATTERN, metavar="REGEX", help="gadolinium T1w file names (default: _ce-<gd, gadolinium, ...>_..._T1w.nii[.gz])")
    for spec in specs:
        if spec.name not in BATCH_ONLY:
            _add_parameter(p, spec)
    p.add_argument("-localizer-version", metavar="V", help="pin the localizer model version (default: the registry's)")
    p.add_argument("-segmenter-version", metavar="V", help="pin the segmenter model version (default: the registry's)")
    p.add_argument("-offline", action="store_true", help="never use the network (models must be bundled or installed)")
    p.add_argument("-v", type=int, choices=[0, 1, 2], default=1, help="verbosity: 0 warnings, 1 info and progress bar (default), 2 debug")
    p.add_argument("-version", action="version", version=f"%(prog)s {__version__}")
    return p


def run(args: argparse.Namespace) -> int:
    from .batch import BatchOptions, ModelSetup, run_batch
    from .bids import Patterns
    from .registry import load_registry

    if args.workers < 1:
        raise DeepsegError(f"--workers {args.workers}: give 1 or more worker processes")
    reg = load_registry()
    task = reg.task(DEFAULT_TASK)
    versions = tuple((m, v) for m, v in ((task.localizer, args.localizer_version), (task.segmenter, args.segmenter_version)) if v)
    seg_spec = reg.model(task.segmenter, dict(versions).get(task.segmenter))
    specs = [s for s in parameters(seg_spec.postprocessing) if s.name not in BATCH_ONLY]
    values = user_values(args, specs, seg_spec.classes)
    configure(seg_spec, values, naming=lambda spec, _cls: spec.option)  # errors named by option, before any work
    options = BatchOptions(workers=args.workers, num_parts=args.num_parts, part_id=args.part_id, dask=args.dask,
                           progress=args.v > 0, command=args.command_line)
    result = run_batch(args.bids_root, args.out, values, patterns=Patterns(args.t2_pattern, args.t1_pattern), options=options,
                       setup=ModelSetup(task.name, versions, offline=args.offline))
    counts = ", ".join(f"{n} {status}" for status, n in result.counts.items())
    print(f"{counts}: {result.status_file}" + (f"; statistics: {result.stats_file}" if result.stats_file else ""))
    return 1 if result.counts.get("failed") else 0


def main(argv: Sequence[str] | None = None) -> int:
    """The command: 0 when every subject is done (or up to date), 1 when some failed, 2 for an
    error (one line), 128 + the signal's number when stopped."""
    return run_main(PROG, argv, build_parser, run,
                    "subjects already written are complete; run the same command again to go on")


if __name__ == "__main__":
    sys.exit(main())
