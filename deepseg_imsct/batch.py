"""Cohorts: the task over every subject of a BIDS dataset, into a BIDS derivatives dataset.

:func:`run_batch` reads top to bottom: discover (:mod:`bids`) -> keep this part's share
(:func:`shard`) -> skip subjects whose outputs are up to date (:func:`up_to_date`) -> run the
others (one process, ``workers`` processes, or a Dask cluster: :mod:`batch_dask`), each worker
process loading the models once (:func:`predictor_for`) -> one status row per subject
(:data:`batch_tables.STATUS_COLUMNS`) -> the cohort's statistics table (:func:`collect_statistics`).
A failed subject is reported with its one-line error; the others go on.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .batch_tables import Outcome, Status, StatusWriter, collect_statistics
from .bids import Patterns, Problem, Subject, discover, write_description
from .errors import DeepsegError
from .inference import RuntimeOptions
from .outputs import DEFAULT_TASK, JOURNAL_NAME, TOOL_NAME, output_keys, output_paths, sidecar_path
from .postprocess import PostprocessConfig
from .registry import ENV_REGISTRY
from .checksums import sha256_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSetup:
    """What a worker process needs to build its :class:`pipeline.Predictor` (picklable; one
    predictor per process and setup, :func:`predictor_for`)."""

    task: str = DEFAULT_TASK
    versions: tuple[tuple[str, str], ...] = ()
    threads: int = 0  # ONNX Runtime intra-op threads per worker process
    registry: str | None = None  # registry path (None: $DEEPSEG_IMSCT_REGISTRY or the shipped one)
    offline: bool = False
    model_set: str | None = None  # None: the task's default set (-model-set)


@dataclass(frozen=True)
class Job:
    """One subject to segment into ``out_dir``."""

    subject: Subject
    out_dir: Path
    post: PostprocessConfig
    qc: Path | None = None  # the cohort's QC report folder: every subject adds itself to its index
    command: str | None = None
    overwrite: bool = False


@dataclass
class BatchResult:
    outcomes: list[Outcome]
    status_file: Path
    stats_file: Path | None = None
    counts: dict[str, int] = field(default_factory=dict)


# ----------------------------------------------------------------------------- one subject, in a worker

_PREDICTORS: dict[ModelSetup, Any] = {}  # per process: the models of each setup, loaded once
_PREDICTORS_LOCK = threading.Lock()  # a Dask worker runs tasks in threads


def predictor_for(setup: ModelSetup):
    """This process's :class:`pipeline.Predictor` for ``setup``, built on first use."""
    with _PREDICTORS_LOCK:
        if setup not in _PREDICTORS:
            from .pipeline import Predictor
            from .registry import load_registry

            _PREDICTORS[setup] = Predictor(setup.task, versions=dict(setup.versions), runtime=RuntimeOptions(threads=setup.threads),
                                           registry=load_registry(setup.registry), offline=setup.offline,
                                           model_set=setup.model_set)
        return _PREDICTORS[setup]


def run_job(setup: ModelSetup, job: Job) -> Outcome:
    """Segment one subject; any error becomes a failed :class:`Outcome` with one line."""
    t0 = time.perf_counter()
    subject = job.subject
    try:
        predictor_for(setup).run_files(subject.t2, subject.t1, job.out_dir, job.post, job.qc, job.command, job.overwrite)
    except DeepsegError as exc:
        return Outcome(subject.subject, subject.session, Status.FAILED, time.perf_counter() - t0, str(exc))
    except Exception as exc:  # noqa: BLE001 - one subject's bug must not stop the cohort
        log.debug("%s failed", subject.key, exc_info=True)
        return Outcome(subject.subject, subject.session, Status.FAILED, time.perf_counter() - t0,
                       f"{type(exc).__name__}: {exc}".replace("\n", " "))
    return Outcome(subject.subject, subject.session, Status.DONE, time.perf_counter() - t0)


# ----------------------------------------------------------------------------- planning


def shard(items: Sequence, num_parts: int, part_id: int) -> list:
    """Part ``part_id`` (0-based) of ``num_parts``: every ``num_parts``-th item of the sorted
    list, from ``part_id``. Deterministic; the parts are disjoint and cover every item."""
    if num_parts < 1:
        raise DeepsegError(f"--num-parts {num_parts}: give 1 or more parts")
    if not 0 <= part_id < num_parts:
        raise DeepsegError(f"--part-id {part_id} is not in [0, {num_parts - 1}] for --num-parts {num_parts}: "
                           "give 0 <= part id < number of parts (a job array's index, from 0)")
    return list(items)[part_id::num_parts]


def up_to_date(job: Job, models: Mapping[str, Any]) -> bool:
    """Whether every output of ``job`` is there, unchanged, written by this tool from this
    subject's T2w and T1w with the same task, models (version and sha256) and post-processing."""
    post = json.loads(json.dumps(job.post.as_dict()))
    if (job.out_dir / JOURNAL_NAME).exists():  # a killed writer's set: rolled back at the next write
        return False
    for image in output_paths(job.subject.t2, job.out_dir, output_keys(models["classes"], False)).values():
        try:
            data = json.loads(sidecar_path(image).read_text(encoding="utf-8"))
            made = data["GeneratedBy"][0]
            same = (made["Name"] == TOOL_NAME and made["Task"] == models["task"] and made["Models"] == models["models"]
                    and data["Postprocessing"] == post and _same(data["Sources"]["T2w"], job.subject.t2)
                    and _same(data["Sources"]["T1w"], job.subject.t1) and sha256_file(image) == data["OutputSha256"])
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            return False
        if not same:
            return False
    return True


def _same(recorded: str, path: Path) -> bool:
    try:
        return os.path.samefile(recorded, path)
    except OSError:
        return False


# ----------------------------------------------------------------------------- the batch


@dataclass(frozen=True)
class BatchOptions:
    """How to run a cohort: parallelism, sharding, the cluster, reports."""

    workers: int = 1  # local processes (each loads the models once)
    num_parts: int = 1
    part_id: int = 0
    dask: str | None = None  # a dask.distributed scheduler address
    progress: bool = True
    command: str | None = None


def status_path(out: Path, options: BatchOptions) -> Path:
    """``status.tsv``, or ``status_part-<I>-of-<K>.tsv`` for one part of a sharded run."""
    if options.num_parts == 1:
        return out / "status.tsv"
    return out / f"status_part-{options.part_id}-of-{options.num_parts}.tsv"


def default_threads(workers: int) -> int:
    """ONNX Runtime threads per local worker so that workers x threads = this process's cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, workers))


def run_batch(root: Path | str, out: Path | str, values: Mapping[str, Any] | None = None, *,
              patterns: Patterns = Patterns(), options: BatchOptions = BatchOptions(),
              setup: ModelSetup | None = None) -> BatchResult:
    """Segment every subject/session of the BIDS dataset ``root`` into the derivatives dataset
    ``out``. ``values``: parameters named as in :func:`params.parameters` (``threshold``,
    ``min_volume_cm3``, ``qc``, ``threads``...; ``out_dir`` is ``out``). Returns every outcome."""
    root, out = Path(root), Path(out)
    if options.dask and options.workers > 1:
        raise DeepsegError(f"--workers {options.workers} and --dask: choose one (on a Dask cluster, its workers run the subjects)")
    setup = setup or ModelSetup()
    settings, models = _settings(setup, values or {})
    threads = settings.runtime.threads or (1 if options.dask else default_threads(options.workers))
    setup = replace(setup, threads=threads, registry=setup.registry or os.environ.get(ENV_REGISTRY) or None,
                    model_set=settings.model_set)
    found = discover(root, patterns)
    entries = shard([*found.subjects, *found.problems], options.num_parts, options.part_id)
    write_description(out, root)
    status_file = status_path(out, options)
    with StatusWriter(status_file) as status:
        for problem in (e for e in entries if isinstance(e, Problem)):
            log.warning("%s not run: %s", problem.key, problem.reason)
            status.add(Outcome(problem.subject, problem.session, Status.MISSING, error=problem.reason))
        jobs = []
        for subject in (e for e in entries if isinstance(e, Subject)):
            job = Job(subject, subject.anat(out), settings.post, settings.qc, options.command, settings.overwrite)
            if up_to_date(job, models):
                status.add(Outcome(subject.subject, subject.session, Status.SKIPPED))
            else:
                jobs.append(job)
        log.info("%d subjects to segment, %d up to date, %d with a contrast missing", len(jobs),
                 status.count(Status.SKIPPED), status.count(Status.MISSING))
        execute(setup, jobs, options, status.add)
    stats = collect_statistics(out, found.subjects)
    return BatchResult(status.outcomes, status_file, stats, {s.value: status.count(s) for s in Status})


def _settings(setup: ModelSetup, values: Mapping[str, Any]) -> tuple[Any, dict]:
    """The run's :class:`params.Settings` from ``values``, and what the sidecars of up-to-date
    outputs record about the models: {task, classes, models: {name: {version, sha256}}} (read from
    the registry; no model is loaded)."""
    from .params import configure
    from .registry import load_registry

    if values.get("out_dir") is not None:
        raise DeepsegError("out_dir is the batch's derivatives folder: give it as the output folder (-o), not as a parameter")
    reg = load_registry(setup.registry)
    task = reg.task(setup.task)
    versions = dict(setup.versions)
    localizer, segmenter = (reg.model(m, versions.get(m)) for m in task.models(values.get("model_set")))
    models = {"task": task.name, "classes": segmenter.classes,
              "models": {s.name: s.provenance() for s in (localizer, segmenter)}}
    return configure(segmenter, values), models


def execute(setup: ModelSetup, jobs: Sequence[Job], options: BatchOptions, done: Callable[[Outcome], None]) -> None:
    """Run ``jobs`` here, in local worker processes, or on a Dask cluster; ``done`` gets each
    outcome as it arrives (in completion order). One progress bar over subjects."""
    if not jobs:
        return
    from tqdm import tqdm

    with tqdm(total=len(jobs), unit="subject", desc="subjects", disable=not options.progress) as bar:
        def report(outcome: Outcome) -> None:
            done(outcome)
            bar.update()
        if options.dask:
            from .batch_dask import run_on_dask

            run_on_dask(options.dask, setup, jobs, report)
        elif options.workers > 1:
            from .batch_local import run_in_processes

            run_in_processes(setup, jobs, options.workers, report)
        else:
            for job in jobs:
                report(run_job(setup, job))
