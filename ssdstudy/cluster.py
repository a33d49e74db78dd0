"""A study's runs on a Dask cluster: many runs at once, each on one worker.

The runs of a study are independent: ``ssdstudy study run --workers N`` hands each
missing run to a Dask worker of a :class:`~dask.distributed.LocalCluster` on this
machine, ``--scheduler ADDRESS`` to the workers of an existing cluster (one started by
dask-jobqueue on Slurm, PBS or LSF, say). A worker computes one run at a time, exactly
as the serial study does (:meth:`ssdstudy.study.Study.run_runs`: the run's folder lock,
its notebook executed by papermill, resumption from its last checkpoint), in the same
``results/`` folder, which the workers of a cluster must share through a shared file
system. The study that hands the runs out holds the results folder's lock; the chapters
are executed by it once every run is done.

On a local cluster the CPU threads are divided between the workers (``OMP_NUM_THREADS``
of each worker's process, which the run's kernel inherits), and every worker takes this
project's folder (``SSDSTUDY_ROOT``); the workers of another cluster must be started in
the same project folder, at the same path, or with ``SSDSTUDY_ROOT`` set to it. Each run
is timed where it was trained, while the other workers train: its timings are then
measured with fewer threads on a busy machine (and flagged busy, see
:func:`ssdstudy.timing.busy_reasons`); ``ssdstudy bench`` times the models again on a
quiet machine for the hardware chapter. A task that fails is
reported with its run's notebook, and the other runs go on; a worker that dies is
replaced and its run handed out again (Dask retries the task), and the run resumes
from its last finished epoch, so nothing finished is lost.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ssdstudy.errors import UserError

if TYPE_CHECKING:
    from distributed import Client

    from ssdstudy.study import Study

#: How many times a run whose worker died is handed out again.
RETRIES = 2


def compute_run(profile: str, run_id: str, root: str, results: str) -> tuple[list[str], dict[str, str], list[tuple[str, str, str]]]:
    """On a worker: compute one run of ``profile`` as the serial study does; returns the
    runs finished, what was done to each, and the failures ``(what, notebook, error)``."""
    from ssdstudy.study import Study

    study = Study(profile, root=Path(root), results=Path(results), progress=False)
    done = study.run_runs([run_id])
    return done, study.computed, [(f.what, str(f.notebook), f.error) for f in study.failures]


def threads_per_worker(workers: int) -> int:
    """The CPU threads each of ``workers`` local workers gets (at least one)."""
    return max(1, (os.cpu_count() or 1) // workers)


@contextlib.contextmanager
def client(workers: int | None = None, scheduler: str | None = None) -> Iterator[Client]:
    """A Dask client: of the cluster at ``scheduler``, or of a local cluster of
    ``workers`` single-task worker processes with the CPU threads divided among them."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:  # pragma: no cover - a dependency of the package
        raise UserError("running runs on a cluster needs dask.distributed: pip install 'dask[distributed]'") from None
    if scheduler:
        with Client(scheduler) as c:
            yield c
        return
    if not workers or workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    from ssdstudy.paths import PROJECT

    threads = str(threads_per_worker(workers))
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "SSDSTUDY_ROOT": str(PROJECT)}
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      env=env) as cluster, Client(cluster) as c:
        yield c


def run_runs_on(study: Study, dask_client: Client, run_ids: list[str] | None = None) -> list[str]:
    """Compute ``run_ids`` (default: every missing run of the study's plan) on the
    cluster of ``dask_client``; failures go to ``study.failures``, what was done to
    ``study.computed``. Returns the runs finished."""
    from distributed import as_completed
    from tqdm.auto import tqdm

    from ssdstudy.study import Failure

    missing = study.plan.missing() if run_ids is None else list(run_ids)
    futures = {
        dask_client.submit(compute_run, study.profile, run_id, str(study.root), str(study.plan.results),
                           key=f"ssdstudy-run-{run_id}", retries=RETRIES, pure=False): run_id
        for run_id in missing
    }
    done: list[str] = []
    with tqdm(total=len(futures), disable=not study.progress, desc="runs", unit="run") as bar:
        for future in as_completed(futures):
            run_id = futures[future]
            try:
                finished, computed, failures = future.result()
            except Exception as err:  # noqa: BLE001 - a lost worker or task: reported, the rest go on
                paths = study.plan.paths(run_id)
                study.failures.append(Failure(f"run {run_id}", paths.root / "run.failed.ipynb",
                                              f"on the cluster: {type(err).__name__}: {err}"))
            else:
                done += finished
                study.computed.update(computed)
                study.failures += [Failure(what, Path(notebook), error) for what, notebook, error in failures]
            bar.update()
    return done


__all__ = ["RETRIES", "client", "compute_run", "run_runs_on", "threads_per_worker"]
