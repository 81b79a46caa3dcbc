"""The batch in local worker processes (``--workers N``).

Each process is spawned (not forked: the parent may hold ONNX Runtime threads), loads the models
once at start-up (:func:`batch.predictor_for`) and runs subjects one after the other with
:func:`batch.run_job`, the function every path uses. A worker process that dies (killed, out of
memory, a crash in native code) takes its pool down with it: the subjects it left unfinished are
run again, one at a time (:data:`SOLO_ATTEMPTS` tries each), so that only a subject that kills
its process when it runs alone is reported failed.
"""
from __future__ import annotations

import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Sequence

from . import batch
from .batch_tables import Outcome, Status

log = logging.getLogger(__name__)

SOLO_ATTEMPTS = 2  # a subject left unfinished by a dead worker is run alone this many times at most


def _init_worker(setup: batch.ModelSetup) -> None:
    batch.predictor_for(setup)


def _pool(setup: batch.ModelSetup, workers: int) -> ProcessPoolExecutor:
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(setup,))


def run_in_processes(setup: batch.ModelSetup, jobs: Sequence[batch.Job], workers: int, done: Callable[[Outcome], None]) -> None:
    """Run ``jobs`` in ``workers`` processes; ``done`` gets each outcome as it arrives."""
    lost = _round(setup, jobs, min(workers, len(jobs)), done)
    if lost:
        log.warning("a worker process died: running its %d unfinished subjects again, one at a time", len(lost))
    pool = None
    try:
        for job in lost:  # alone, so that a subject that kills its process is the one to blame
            for _attempt in range(SOLO_ATTEMPTS):
                pool = pool or _pool(setup, 1)
                try:
                    outcome = pool.submit(batch.run_job, setup, job).result()
                    break
                except BrokenProcessPool:
                    pool.shutdown(wait=True)
                    pool = None
            else:
                outcome = Outcome(job.subject.subject, job.subject.session, Status.FAILED,
                                  error=f"its worker process died {SOLO_ATTEMPTS} times while running it alone (killed, out of memory, "
                                  "or a crash): check this subject's files and the machine's memory, then run the batch again")
            done(outcome)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _round(setup: batch.ModelSetup, jobs: Sequence[batch.Job], workers: int, done: Callable[[Outcome], None]) -> list[batch.Job]:
    """Run ``jobs`` in a fresh pool; returns the jobs lost when a worker process died."""
    pool, lost = _pool(setup, workers), []
    try:
        futures = {pool.submit(batch.run_job, setup, job): job for job in jobs}
        for future in as_completed(futures):
            try:
                outcome = future.result()
            except BrokenProcessPool:
                lost.append(futures[future])
                continue
            done(outcome)
    finally:  # on Ctrl-C, no subject starts any more
        pool.shutdown(wait=True, cancel_futures=True)
    return sorted(lost, key=lambda job: job.subject.key)
