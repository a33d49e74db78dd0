"""Several runs of a study trained at once on this machine, within a time limit.

``ssdstudy study train`` is for a machine held for a limited time (a batch job's wall
time, a GPU lent for minutes). One run at the default batch of 16 leaves a large GPU
mostly idle while it waits for its data loader: on an NVIDIA H200 one VGG16-BN-SSD300
run kept the GPU 35-45 % busy with 12 loader workers (about 7.4 s per epoch of 2,000
images, 270 images/s), while five such runs at once, 3 loader workers each, took about
13 s per epoch each, about 750 images/s together. So the runs are trained side
by side, each in its own ``ssdstudy train`` process (the run's lock, resumption from its
last epoch, its result files as a serial study writes them), the CPUs divided between
them.

It trains, scores and times the runs but executes no notebook, so the machine needs no
jupyter: where the book is built, ``ssdstudy study run`` finds the runs trained and
executes their notebooks without training them. With ``pack``, each finished run's
files, its checkpoint left out, are packed into ``PACK/<run id>.tar.gz`` as soon as it
finishes, so that a run finished is not lost when the machine is taken back. At the time
limit the runs still going are stopped (SIGTERM): they resume from their last finished
epoch when trained again on a machine that kept their folders.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ssdstudy.errors import UserError



@dataclass
class Outcome:
    """What became of one run: ``finished`` (exit status 0), ``failed`` or ``stopped``
    (at the time limit), with its exit status and wall time."""

    run_id: str
    state: str
    returncode: int | None
    seconds: float
    log: Path


@dataclass
class Batch:
    """Commands run at most ``at_once`` at a time, in the order given, until ``until``
    seconds after :meth:`run` starts; ``on_done(run_id, outcome)`` is called as each ends."""

    commands: Mapping[str, Sequence[str]]
    at_once: int
    until: float | None = None
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    #: where each command's output goes (``<run id>.log``; a temporary folder if None)
    logs: Path | None = None
    on_done: Callable[[str, Outcome], None] | None = None
    poll: float = 1.0
    outcomes: dict[str, Outcome] = field(default_factory=dict)

    def run(self) -> dict[str, Outcome]:
        if self.at_once < 1:
            raise UserError(f"--at-once must be at least 1, got {self.at_once}")
        logs = self.logs or Path(tempfile.mkdtemp(prefix="ssdstudy-batch-"))
        logs.mkdir(parents=True, exist_ok=True)
        waiting = list(self.commands)
        running: dict[str, tuple[subprocess.Popen, float, Path]] = {}
        start = time.monotonic()
        try:
            while waiting or running:
                late = self.until is not None and time.monotonic() - start >= self.until
                while waiting and len(running) < self.at_once and not late:
                    run_id = waiting.pop(0)
                    log = logs / f"{run_id}.log"
                    with open(log, "w") as out:  # the child keeps its own descriptor
                        proc = subprocess.Popen(
                            list(self.commands[run_id]), cwd=self.cwd, env=dict(self.env or os.environ),
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                        )
                    running[run_id] = (proc, time.monotonic(), log)
                if late:  # every run still going is told at once, then each is waited for
                    for proc, _, _ in running.values():
                        _signal(proc, signal.SIGTERM)
                for run_id, (proc, began, log) in list(running.items()):
                    code = proc.poll()
                    if code is None and not late:
                        continue
                    if code is None:
                        code = _stop(proc)
                        state = "stopped"
                    else:
                        state = "finished" if code == 0 else ("stopped" if late else "failed")
                    del running[run_id]
                    self._done(Outcome(run_id, state, code, time.monotonic() - began, log))
                if late:
                    for run_id in waiting:
                        self._done(Outcome(run_id, "stopped", None, 0.0, logs / f"{run_id}.log"))
                    waiting = []
                if running:
                    time.sleep(self.poll)
        finally:  # interrupted: no run process outlives the batch
            for proc, _, _ in running.values():
                _stop(proc)
        return self.outcomes

    def _done(self, outcome: Outcome) -> None:
        self.outcomes[outcome.run_id] = outcome
        if self.on_done is not None:
            self.on_done(outcome.run_id, outcome)


def _signal(proc: subprocess.Popen, sig: int) -> None:
    """``sig`` to the process and its children (its session: loader workers, timing children)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _stop(proc: subprocess.Popen, grace: float = 20.0) -> int | None:
    """SIGTERM to the process and its children, then SIGKILL after ``grace`` s."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        _signal(proc, sig)
        try:
            return proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    return proc.poll()


def pack_run(run_dir: Path, archive: Path) -> Path:
    """``archive`` (a .tar.gz) of the files of ``run_dir`` under ``<run id>/``, its checkpoint,
    locks and temporary files left out; written beside and moved into place."""
    from ssdstudy.files import TMP_SUFFIX
    from ssdstudy.runs import LOCK_NAME, RunPaths

    paths = RunPaths(run_dir)
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_name(archive.name + ".partial")
    with tarfile.open(partial, "w:gz") as tar:
        for path in sorted(run_dir.rglob("*")):
            # the checkpoint (large, never published), locks and half-written files stay out
            if path.is_file() and path != paths.checkpoint and not path.name.endswith((LOCK_NAME, TMP_SUFFIX)):
                tar.add(path, arcname=f"{run_dir.name}/{path.relative_to(run_dir).as_posix()}")
    os.replace(partial, archive)
    return archive


def train_runs(profile: str, run_ids: Sequence[str], *, at_once: int, until: float | None = None,
               pack: Path | None = None, logs: Path | None = None, loader_workers: int | None = None,
               device: str | None = None, results: Path | None = None,
               report: Callable[[str], None] = print) -> dict[str, Outcome]:
    """Train ``run_ids`` of ``profile``'s plan, ``at_once`` at a time, each by ``ssdstudy
    train`` in its own process; see the module's description.

    Each run's ``config.yaml`` records how it was trained here (loader workers, threads,
    device: fields that do not change its id). ``loader_workers`` defaults to the CPUs
    each run gets, less one for its own process; the CPU threads of each run are the CPUs
    divided between the runs at once. ``results``: the results folder (default: the
    project's).
    """
    from ssdstudy.paths import PROJECT
    from ssdstudy.runs import write_config
    from ssdstudy.study import Study

    if at_once < 1:
        raise UserError(f"--at-once must be at least 1, got {at_once}")
    study = Study(profile, results=results, progress=False)
    plan = study.plan
    unknown = [r for r in run_ids if r not in plan.runs]
    if unknown:
        raise UserError(f"parameters/profiles/{profile}.yaml: no run {', '.join(unknown)} in this profile's plan "
                        "(`ssdstudy study run --dry-run` lists its runs)")
    threads = max(1, (os.cpu_count() or 1) // at_once)
    workers = max(0, threads - 1) if loader_workers is None else loader_workers
    commands = {}
    with study.exclusive():
        study.prepare_data()
        for run_id in run_ids:
            state = plan.status(run_id)
            if state in ("found", "to finish"):
                report(f"{run_id}: already trained")
                continue
            paths = plan.paths(run_id)
            if state == "stale":  # never mix results of other code with this code's
                paths.clear()
            cfg = plan.runs[run_id]
            cfg.train.workers, cfg.train.threads = workers, threads
            if device:
                cfg.train.device = device
            paths.root.mkdir(parents=True, exist_ok=True)
            write_config(paths.config, cfg)
            commands[run_id] = [sys.executable, "-m", "ssdstudy", "train", str(paths.config),
                                "--run-dir", str(paths.root), "--resume", "--no-progress"]

        def done(run_id: str, outcome: Outcome) -> None:
            line = f"{run_id}: {outcome.state} after {outcome.seconds / 60:.1f} min"
            if outcome.state == "finished" and pack is not None:
                line += f", packed into {pack_run(plan.paths(run_id).root, pack / f'{run_id}.tar.gz')}"
            elif outcome.state != "finished" and outcome.log.is_file():
                tail = outcome.log.read_text(errors="replace").strip().splitlines()[-3:]
                line += f" (exit {outcome.returncode}; log {outcome.log}" + (f": {' / '.join(tail)}" if tail else "") + ")"
            report(line)

        env = dict(os.environ, OMP_NUM_THREADS=str(threads), SSDSTUDY_ROOT=str(PROJECT))
        report(f"training {len(commands)} runs, {at_once} at once ({threads} threads and {workers} loader "
               f"workers each)" + (f", until {until / 60:.1f} min" if until else ""))
        return Batch(commands, at_once, until, env=env, cwd=PROJECT, logs=logs, on_done=done).run()


__all__ = ["Batch", "Outcome", "pack_run", "train_runs"]
