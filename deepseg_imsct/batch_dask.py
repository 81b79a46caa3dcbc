"""The batch on a ``dask.distributed`` cluster (optional extra: ``pip install "deepseg-imsct[dask]"``).

Each subject is one task (:func:`batch.run_job`, the same function as a local run, so the outputs
are the same). :class:`ModelPlugin` loads the models once per worker process when it joins (and
when a killed worker is restarted); every task on that worker reuses them. A worker that dies
mid-subject loses nothing: the scheduler runs its subjects again elsewhere, and the output
folder's lock and journal (:mod:`transaction`) put back or clean whatever the dead process had
half-written before the retry writes its set.
"""
from __future__ import annotations

import logging
import uuid
from typing import Callable, Sequence

from .batch import Job, ModelSetup, predictor_for, run_job
from .batch_tables import Outcome, Status
from .errors import DeepsegError

log = logging.getLogger(__name__)

PLUGIN_NAME = "deepseg-imsct-models"
CONNECT_TIMEOUT_S = 30


def _distributed():
    try:
        import distributed
    except ImportError:
        raise DeepsegError('--dask needs dask.distributed, which is not installed: pip install "deepseg-imsct[dask]"') from None
    return distributed


def run_on_dask(address: str, setup: ModelSetup, jobs: Sequence[Job], done: Callable[[Outcome], None]) -> None:
    """Run ``jobs`` on the cluster whose scheduler is at ``address`` (``tcp://host:8786``, or a
    scheduler file ``*.json`` as ``dask scheduler --scheduler-file`` writes); ``done`` gets each outcome."""
    distributed = _distributed()
    where = {"scheduler_file": address} if address.endswith(".json") else {"address": address}
    try:
        client = distributed.Client(**where, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, ValueError) as exc:
        raise DeepsegError(f"cannot reach the Dask scheduler at {address} ({exc}): start it (dask scheduler, or dask-jobqueue) "
                           "and give its address, e.g. tcp://host:8786") from None
    with client:
        client.register_plugin(ModelPlugin(setup), name=PLUGIN_NAME)
        futures = {client.submit(run_job, setup, job, key=f"imsct-{job.subject.key}-{uuid.uuid4().hex[:12]}", pure=False): job for job in jobs}
        try:
            for future in distributed.as_completed(futures):
                job = futures[future]
                try:
                    outcome = future.result()
                except Exception as exc:  # noqa: BLE001 - KilledWorker after repeated deaths, a lost scheduler
                    outcome = Outcome(job.subject.subject, job.subject.session, Status.FAILED,
                                      error=f"the Dask cluster could not run it ({type(exc).__name__}: {exc}): run the batch again to retry it")
                done(outcome)
        finally:  # on Ctrl-C, no subject starts any more
            client.cancel(list(futures))


try:  # the plugin must be importable by name on the workers (pickled by reference)
    from distributed import WorkerPlugin as _WorkerPlugin
except ImportError:  # the dask extra is not installed: run_on_dask says so
    _WorkerPlugin = object  # type: ignore[assignment,misc]


class ModelPlugin(_WorkerPlugin):  # type: ignore[misc,valid-type]
    """Loads the models of a :class:`batch.ModelSetup` into each worker process, once."""

    name = PLUGIN_NAME

    def __init__(self, setup: ModelSetup):
        self.model_setup = setup

    def setup(self, worker) -> None:
        predictor_for(self.model_setup)
