"""Where a run's files live, and how they are written so that nothing is half-written.

``results/<profile>/runs/<run id>/`` holds, for one run:

=====================  ==========================================================
``config.yaml``        the resolved parameters (:class:`~ssdstudy.config.RunConfig`)
``history.csv``        one row per epoch: losses, learning rate, epoch time, speed
``checkpoint.pt``      the last finished epoch (model, optimiser, scheduler, RNG)
``metrics.json``       accuracy on the test split (:func:`ssdstudy.evaluate.evaluate`)
``outcomes.npz``       each detection's VOC outcome and each image's size bin, for
                       bootstrap intervals (:class:`ssdstudy.evaluate.bootstrap.Outcomes`)
``samples.json``       detections on the first test images (the run page draws them
                       without the checkpoint, which is not published)
``timing.json``        inference and prediction times per device
``provenance.json``    code version, software versions, machine, seed, wall time
``run.ipynb``          the executed run notebook (written by the study runner)
=====================  ==========================================================

A run is complete when ``metrics.json``, ``timing.json`` and ``provenance.json`` exist.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from ssdstudy.config import RunConfig, build_config
from ssdstudy.files import atomic_write_text
from ssdstudy.locks import Holder, exclusive
from ssdstudy.paths import PROJECT

RESULTS = PROJECT / "results"
#: The lock file a process computing a run holds in the run's folder.
LOCK_NAME = ".lock"
#: The lock file a study holds in its profile's results folder.
STUDY_LOCK = ".study.lock"


@contextlib.contextmanager
def folder_lock(path: Path) -> Iterator[None]:
    """Wait for and hold an exclusive lock named after ``path`` (``<path>.lock`` beside
    it): one process at a time writes a generated dataset. Says on stderr whom it
    waits for."""
    path = Path(path)

    def tell(holder: Holder) -> None:
        print(f"{path}: waiting for {holder}, which is writing it", file=sys.stderr, flush=True)

    with exclusive(path.with_name(path.name + ".lock"), wait=True, on_wait=tell):
        yield


def locked_workspace(config: RunConfig, *, progress: bool = True):
    """The :class:`~ssdstudy.workspace.Workspace` of ``config``, its generated dataset (if
    it asks for one and it is missing) made by one writer at a time."""
    from ssdstudy.paths import resolve_path
    from ssdstudy.workspace import Workspace

    with folder_lock(resolve_path(config.data.root)):
        return Workspace(config, progress=progress)


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def history(self) -> Path:
        return self.root / "history.csv"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.pt"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def outcomes(self) -> Path:
        return self.root / "outcomes.npz"

    @property
    def timing(self) -> Path:
        return self.root / "timing.json"

    @property
    def provenance(self) -> Path:
        return self.root / "provenance.json"

    @property
    def notebook(self) -> Path:
        return self.root / "run.ipynb"

    @property
    def samples(self) -> Path:
        return self.root / "samples.json"

    def complete(self) -> bool:
        return all(p.is_file() for p in (self.metrics, self.timing, self.provenance))

    def files(self) -> tuple[Path, ...]:
        """Every file a run writes in its folder."""
        return (self.config, self.history, self.checkpoint, self.metrics, self.outcomes, self.samples,
                self.timing, self.provenance, self.notebook)

    def compute_code(self) -> str | None:
        """The compute-code hash the finished run recorded (None: not recorded)."""
        import json

        if not self.provenance.is_file():
            return None
        return json.loads(self.provenance.read_text()).get("compute_code")

    @contextlib.contextmanager
    def locked(self) -> Iterator[Holder | None]:
        """Hold an exclusive lock on the run's folder for the block; yields None while
        this process holds it, or the :class:`~ssdstudy.locks.Holder` of the process
        that computes the run now (and holds nothing). Two studies, or a study and
        ``ssdstudy train``, never write one run at the same time."""
        with exclusive(self.root / LOCK_NAME) as holder:
            yield holder

    def clear(self) -> None:
        """Remove the run's files (a stale run, before it is computed again); a file of
        anyone else's in the folder is left alone."""
        for path in self.files():
            path.unlink(missing_ok=True)


def run_dir(profile: str, config: RunConfig, results: Path | None = None) -> RunPaths:
    return RunPaths((results or RESULTS) / profile / "runs" / config.run_id)


def write_config(path: Path, config: RunConfig) -> None:
    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


def read_config(path: Path) -> RunConfig:
    data = yaml.safe_load(Path(path).read_text())
    return build_config((str(path), data))


