"""The study runner: experiments expanded into runs, runs executed as papermill
notebooks, chapters executed over their results, and the book built.

* An experiment (``parameters/experiments/<name>.yaml``) lists runs as layers over the
  profile; a run's id is the hash of its resolved configuration, so experiments that ask
  for the same run share it and it is trained once.
* Each missing run is executed from ``book/templates/run.ipynb`` with papermill into a
  temporary file, moved into the run's folder only on success. A failed run is reported
  with the path of its notebook and the others go on; its checkpoint stays, so the next
  ``study run`` resumes it.
* Each chapter (``book/templates/<chapter>.ipynb``) is executed the same way into
  ``book/chapters/``; the run notebooks are copied to ``book/runs/`` for the appendix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from ssdstudy.config import (
    PARAMETERS,
    ConfigError,
    Profile,
    RunConfig,
    from_dict,
    read_profile,
    read_yaml,
)
from ssdstudy.files import temporary_beside
from ssdstudy.locks import Holder, exclusive
from ssdstudy.provenance import ComputeCodes
from ssdstudy.results import load_runs, run_label
from ssdstudy.runs import RESULTS, STUDY_LOCK, RunPaths, write_config
from ssdstudy.workspace import PROJECT

#: Chapters executed after the experiments' own, in this order.
EXTRA_CHAPTERS = ("default_boxes", "receptive_fields", "runtimes", "conclusions", "reproduce")
#: Per-image training cost on a 2-core CPU at 300x300 (images/s), for --dry-run's estimate
#: when no finished run of the backbone is there to measure it. MobileNetV1's is its
#: published runs' speed; SqueezeNet's is MobileNetV1's times their ratio in one quiet
#: `ssdstudy bench` (24.6 against 16.3 images/s, results/hardware/xeon-2core.json).
TRAIN_SPEED_300 = {"vgg16": 1.9, "vgg16_bn": 3.8, "mobilenet_v1": 22.7, "squeezenet": 34.3}


@dataclass
class ExperimentInfo:
    title: str = ""
    description: str = ""
    #: Chapter template in book/templates/ (default: the experiment's name).
    chapter: str = ""


@dataclass
class Experiment:
    name: str
    info: ExperimentInfo
    runs: list[RunConfig]
    #: Each run's own (unresolved) overrides, for tables and labels.
    layers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def chapter(self) -> str:
        return self.info.chapter or self.name


def experiment_path(name: str) -> Path:
    return PARAMETERS / "experiments" / f"{name}.yaml"


def read_experiment(name: str, profile: Profile) -> Experiment:
    """The runs of experiment ``name`` resolved over ``profile``; errors name the file."""
    path = experiment_path(name)
    if not path.is_file():
        known = sorted(p.stem for p in (PARAMETERS / "experiments").glob("*.yaml"))
        raise ConfigError(f"{path}: unknown experiment {name!r} (known: {', '.join(known)})")
    data = read_yaml(path)
    where = str(path)
    unknown = sorted(set(data) - {"experiment", "base", "runs"})
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]} (allowed: base, experiment, runs)")
    info = from_dict(ExperimentInfo, data.get("experiment"), where, prefix="experiment.")
    base = data.get("base") or {}
    from_dict(RunConfig, base, where, prefix="base.")
    runs_data = data.get("runs")
    if not isinstance(runs_data, list) or not runs_data:
        raise ConfigError(f"{where}: runs must be a non-empty list of run overrides")
    runs, layers = [], []
    for i, layer in enumerate(runs_data):
        layer = layer or {}
        from_dict(RunConfig, layer, where, prefix=f"runs[{i}].")
        stack = [(f"{where} (base)", base), (f"{where} runs[{i}]", layer)]
        extra = profile.study.overrides.get(name)
        if extra:
            stack.append((f"{profile.layer[0]} study.overrides.{name}", extra))
        runs.append(profile.run_config(*stack))
        layers.append(layer)
    return Experiment(name=name, info=info, runs=runs, layers=layers)


def profile_info(profile: str) -> dict[str, str]:
    """The profile's name, description and dataset, for chapters to print."""
    return dataclasses.asdict(read_profile(profile).info)


@dataclass
class Plan:
    profile: Profile
    experiments: list[Experiment]
    #: Unique runs in first-use order: run id -> config.
    runs: dict[str, RunConfig]
    results: Path

    def paths(self, run_id: str) -> RunPaths:
        return RunPaths(self.results / self.profile.name / "runs" / run_id)

    def status(self, run_id: str, codes: ComputeCodes | None = None) -> str:
        """``found``; ``stale`` (finished by other code than the code at hand);
        ``to finish`` (finished, its notebook missing); ``to resume``; ``to train``.

        Args:
            codes: the code at hand's compute codes, shared between calls (made if None).
        """
        paths = self.paths(run_id)
        if paths.complete():
            codes = ComputeCodes() if codes is None else codes
            if paths.compute_code() != codes[self.runs[run_id].model.backbone]:
                return "stale"
            return "found" if paths.notebook.is_file() else "to finish"
        return "to resume" if paths.checkpoint.is_file() else "to train"

    def statuses(self) -> dict[str, str]:
        """Run id -> :meth:`status`, for every run of the plan."""
        codes = ComputeCodes()
        return {run_id: self.status(run_id, codes) for run_id in self.runs}

    def missing(self) -> list[str]:
        """Runs to compute: not finished, finished by other code, or without notebook."""
        return [r for r, state in self.statuses().items() if state != "found"]

    def stale(self) -> list[str]:
        return [r for r, state in self.statuses().items() if state == "stale"]


def make_plan(profile: str, only: list[str] | None = None, results: Path | None = None) -> Plan:
    prof = read_profile(profile)
    names = prof.study.experiments
    if only:
        unknown = [n for n in only if n not in names]
        if unknown:
            raise ConfigError(
                f"{prof.layer[0]}: experiment {unknown[0]!r} is not in study.experiments ({', '.join(names)})"
            )
        names = [n for n in names if n in only]
    experiments = [read_experiment(n, prof) for n in names]
    runs: dict[str, RunConfig] = {}
    for exp in experiments:
        for cfg in exp.runs:
            runs.setdefault(cfg.run_id, cfg)
    return Plan(profile=prof, experiments=experiments, runs=runs, results=results or RESULTS)


def experiment_frame(profile: str, experiment: str, results: Path | None = None) -> pd.DataFrame:
    """The finished runs of one experiment, one row each, in the experiment's order."""
    exp = read_experiment(experiment, read_profile(profile))
    ids = list(dict.fromkeys(cfg.run_id for cfg in exp.runs))
    return load_runs(profile, ids, results=results)


def missing_note(profile: str, experiment: str | None = None, results: Path | None = None) -> str:
    """A Markdown note naming the runs of ``experiment`` that are not finished in the
    profile's results (each with its label and id), which the chapter's figures and
    verdicts leave out; with no experiment, a count over the profile's whole plan (for
    the conclusions). Empty when every run is there."""
    prof = read_profile(profile)
    names = [experiment] if experiment else prof.study.experiments
    runs = {cfg.run_id: cfg for name in names for cfg in read_experiment(name, prof).runs}
    root = (results or RESULTS) / profile / "runs"
    missing = [(run_id, cfg) for run_id, cfg in runs.items() if not RunPaths(root / run_id).complete()]
    if not missing:
        return ""
    verb = "is" if len(missing) == 1 else "are"
    if experiment is None:
        return (f":::{{important}}\n{len(missing)} of the profile's {len(runs)} runs {verb} not computed yet; the "
                "verdicts rest on the others, and each chapter names the runs it lacks.\n:::")
    lines = "\n".join(f"- {run_label(cfg.to_dict())}, {cfg.train.epochs} epochs (`{run_id}`)" for run_id, cfg in missing)
    return (f":::{{important}}\n{len(missing)} of this chapter's {len(runs)} runs {verb} not computed yet; its "
            f"figures, tables and verdicts leave them out:\n\n{lines}\n:::")


def seed_noise(profile: str, results: Path | None = None):
    """The spreads between seeds of a profile's seeds experiment
    (:class:`ssdstudy.seednoise.SeedNoise`; empty when the profile has no seeds
    experiment): what the chapters' verdicts hold their mAP differences against."""
    from ssdstudy.seednoise import SeedNoise

    if "seeds" not in read_profile(profile).study.experiments:
        return SeedNoise(None)
    return SeedNoise(experiment_frame(profile, "seeds", results=results))


def profile_verdicts(profile: str, results: Path | None = None) -> list:
    """The eight claims' verdicts from a profile's results at hand (what the conclusions
    chapter and ``ssdstudy study claims`` show)."""
    from ssdstudy import claims
    from ssdstudy.results import load_hardware

    names = read_profile(profile).study.experiments
    frames = {name: experiment_frame(profile, name, results=results) for name in names}
    hardware_runs = frames.get("hardware", pd.DataFrame())
    run_ids = list(hardware_runs["run_id"]) if len(hardware_runs) else []
    hw = claims.select_hardware(load_hardware(profile, results=results), profile, run_ids)
    return claims.assess_all(frames, hw)


def estimate_seconds(plan: Plan) -> float:
    """A rough training-time estimate of the missing runs (from finished runs' speed)."""
    done = load_runs(plan.profile.name, results=plan.results)
    total = 0.0
    for run_id in plan.missing():
        cfg = plan.runs[run_id]
        speed = None
        if len(done):
            same = done[(done.variant == cfg.model.backbone) & (done.image_size == cfg.model.image_size)
                        & (done.width == cfg.model.width)]
            if len(same):
                speed = float(same["images_per_s"].median())
        if not speed:
            speed = TRAIN_SPEED_300.get(cfg.model.backbone, 5.0) * (300 / cfg.model.image_size) ** 2
        images = cfg.data.max_train_images or ((cfg.data.synth.train if cfg.data.synth else 16551) - cfg.data.val_images)
        total += cfg.train.epochs * images / speed
    return total


def describe(plan: Plan) -> str:
    lines = [f"profile {plan.profile.name}: {plan.profile.info.description}".rstrip(": ")]
    for exp in plan.experiments:
        lines.append(f"  experiment {exp.name}: {len(exp.runs)} runs")
    states = plan.statuses()
    missing = {r for r, state in states.items() if state != "found"}
    for run_id, cfg in plan.runs.items():
        state = states[run_id]
        lines.append(
            f"  {run_id}  {state:9}  {run_label(cfg.to_dict())}, {cfg.model.image_size}px, {cfg.train.epochs} epochs"
        )
    est = estimate_seconds(plan)
    stale = [r for r, state in states.items() if state == "stale"]
    if stale:
        lines.append(f"{len(stale)} runs are stale: computed by other code than this checkout's; "
                     "they are computed again")
    lines.append(
        f"{len(missing)} runs to train, {len(plan.runs) - len(missing)} found; "
        f"estimated training time {est / 60:.0f} min on a 2-core CPU"
    )
    return "\n".join(lines)


# --- executing notebooks -------------------------------------------------------------


@dataclass
class Failure:
    what: str
    #: The failed notebook kept, or the run's folder where no notebook ran (torchrun failed).
    notebook: Path
    error: str


def execute_notebook(template: Path, output: Path, parameters: dict[str, Any], cwd: Path) -> None:
    """Run ``template`` with papermill into a temporary file; move it to ``output`` on
    success. On failure the partial notebook is kept beside, as ``*.failed.ipynb``."""
    import papermill as pm

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_beside(output, ".running.ipynb")
    try:
        pm.execute_notebook(
            str(template), str(tmp), parameters=parameters, cwd=str(cwd),
            kernel_name="python3", progress_bar=False, log_output=False,
        )
    except BaseException:
        if tmp.exists():
            os.replace(tmp, output.with_name(output.stem + ".failed.ipynb"))
        raise
    try:
        hide_parameter_cells(tmp)
        collapse_redraws(tmp)
        scrub_machine_paths(tmp, cwd)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    output.with_name(output.stem + ".failed.ipynb").unlink(missing_ok=True)


def hide_parameter_cells(path: Path) -> None:
    """Tag the parameter cells of an executed notebook ``remove-cell``: the book does not
    show them (their values are in the page's own text where they matter)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if ("parameters" in tags or "injected-parameters" in tags) and "remove-cell" not in tags:
            cell.metadata["tags"] = [*tags, "remove-cell"]
    nbformat.write(nb, path)


#: What moves a terminal's cursor in progress-bar output: newline, carriage return, up one line.
_CURSOR = re.compile(r"(\n|\r|\x1b\[A)")


def final_frames(text: str) -> str:
    """``text`` as a terminal shows it at the end. Progress bars redraw themselves: a
    carriage return goes back to the line's start and the next drawing overwrites it,
    and a nested bar (tqdm's ``position`` 1, a batch bar inside an epoch bar) is drawn
    on the next line and the cursor moved back up (``ESC[A``). Only what is left on each
    line is kept, without trailing blanks (a closed bar that did not stay is blank)."""
    lines, row, col = [""], 0, 0
    for token in _CURSOR.split(text):
        if token == "\n":
            row, col = row + 1, 0
            if row == len(lines):
                lines.append("")
        elif token == "\r":
            col = 0
        elif token == "\x1b[A":
            row = max(row - 1, 0)
        elif token:
            line = lines[row].ljust(col)
            lines[row] = line[:col] + token + line[col + len(token):]
            col += len(token)
    return "\n".join(line.rstrip() for line in lines)


def collapse_redraws(path: Path) -> None:
    """Write the executed notebook with each cell's consecutive stream outputs joined and
    progress bars kept at their last drawing: tqdm redraws a bar a few times a second, and
    a run's notebook held megabytes of redraws; what a reader sees is the final line."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        outputs = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                text = out["text"] if isinstance(out["text"], str) else "".join(out["text"])
                if outputs and outputs[-1].get("output_type") == "stream" and outputs[-1]["name"] == out["name"]:
                    outputs[-1]["text"] += text
                    continue
                out["text"] = text
            outputs.append(out)
        for out in outputs:
            if out.get("output_type") == "stream":
                out["text"] = final_frames(out["text"])
        if "outputs" in cell:
            cell["outputs"] = outputs
    nbformat.write(nb, path)


def scrub_machine_paths(path: Path, root: Path) -> None:
    """Write the executed notebook without the machine's folders: papermill's record of
    its input and output paths relative to ``root``, and in outputs (a warning names the
    file it comes from) the project's root and the Python environment's prefix replaced
    by ``<project>`` and ``<python>``."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    pm = nb.metadata.get("papermill", {})
    for key in ("input_path", "output_path"):
        if pm.get(key):
            pm[key] = relative_to(Path(pm[key]), root)
    prefixes = sorted({str(Path(root).resolve()), str(Path(sys.prefix).resolve()), sys.prefix,
                       str(Path(root))}, key=len, reverse=True)
    names = {p: ("<python>" if p.startswith(sys.prefix) or p == str(Path(sys.prefix).resolve()) else "<project>")
             for p in prefixes}

    def clean(text: str) -> str:
        for prefix in prefixes:
            text = text.replace(prefix, names[prefix])
        return text

    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if "text" in out:
                out["text"] = clean(out["text"] if isinstance(out["text"], str) else "".join(out["text"]))
            for key, value in (out.get("data") or {}).items():
                if key.startswith("text/") and isinstance(value, str):
                    out["data"][key] = clean(value)
    nbformat.write(nb, path)


def relative_to(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when inside it (notebooks run with ``root`` as their
    working folder), so that executed notebooks name no folder of the machine."""
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(path)


def _stop_with_parent() -> None:
    """In a child process before it starts: ask Linux to send it SIGTERM when its parent
    dies (``prctl(PR_SET_PDEATHSIG)``); elsewhere nothing."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1: PR_SET_PDEATHSIG


class Study:
    """Runs a profile's study with the book sources under ``root``."""

    def __init__(self, profile: str, *, root: Path = PROJECT, results: Path | None = None,
                 only: list[str] | None = None, progress: bool = True, processes: int = 1):
        self.root = Path(root)
        self.plan = make_plan(profile, only, results or self.root / "results")
        self.progress = progress
        #: Processes that train each run (torchrun, data parallel); 1: the run's notebook trains it.
        if processes < 1:
            raise ValueError(f"processes must be at least 1, got {processes}")
        self.processes = processes
        self.templates = self.root / "book" / "templates"
        self.failures: list[Failure] = []
        #: Runs of the plan left uncomputed, and published runs of other code (``train=False``).
        self.skipped: list[str] = []
        self.stale: list[str] = []
        #: What this study did to each run it computed: its status before (see Plan.status).
        self.computed: dict[str, str] = {}

    @property
    def profile(self) -> str:
        return self.plan.profile.name

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the profile's results folder for the block: one study at a time computes
        it. A second study waits for the first (saying whom it waits for), then finds
        what the first computed."""
        folder = self.plan.results / self.profile

        def tell(holder: Holder) -> None:
            print(f"{folder}: another study is computing it ({holder}); waiting for it to end",
                  file=sys.stderr, flush=True)

        with exclusive(folder / STUDY_LOCK, wait=True, on_wait=tell):
            yield

    def prepare_data(self) -> None:
        """Write the generated datasets the missing runs need (once, before the runs)."""
        roots = {}
        for run_id in self.plan.missing():
            cfg = self.plan.runs[run_id]
            roots.setdefault((cfg.data.root, str(cfg.data.synth)), cfg)
        from ssdstudy.runs import locked_workspace

        for cfg in roots.values():
            locked_workspace(cfg, progress=self.progress)  # another study may be writing it now

    def finish_notebooks(self) -> list[str]:
        """Execute the notebook of every run that is finished but has none (trains nothing:
        each step of a finished run is found)."""
        finish = [r for r, state in self.plan.statuses().items() if state == "to finish"]
        if finish:
            self.prepare_data()
        return self.run_runs(finish)

    def run_runs(self, run_ids: list[str] | None = None) -> list[str]:
        """Execute every missing run; returns the ids of the runs that finished now."""
        done = []
        missing = self.plan.missing() if run_ids is None else list(run_ids)
        stale = set(self.plan.stale())
        bar = tqdm(missing, disable=not self.progress, desc="runs", unit="run")
        for run_id in bar:
            cfg = self.plan.runs[run_id]
            paths = self.plan.paths(run_id)
            bar.set_postfix_str(f"{run_id} {cfg.model.backbone}")
            with paths.locked() as holder:
                if holder is not None:
                    self.failures.append(Failure(f"run {run_id}", paths.notebook,
                                                 f"being computed by another process now ({holder}); "
                                                 "rerun when it is done"))
                    continue
                before = self.plan.status(run_id)
                if before == "found":  # finished by another process meanwhile
                    continue
                if run_id in stale:  # never mix results of other code with this code's
                    paths.clear()
                write_config(paths.config, cfg)
                if self.processes > 1 and before != "to finish":
                    try:
                        self.train_with_processes(paths)
                    except Exception as err:  # noqa: BLE001 - reported, and the study goes on
                        self.failures.append(Failure(f"run {run_id}", paths.root, _short(err)))
                        continue
                try:
                    execute_notebook(
                        self.templates / "run.ipynb", paths.notebook,
                        {"config_path": relative_to(paths.config, self.root),
                         "run_dir": relative_to(paths.root, self.root), "profile": self.profile},
                        cwd=self.root,
                    )
                except Exception as err:  # noqa: BLE001 - reported, and the study goes on
                    self.failures.append(Failure(f"run {run_id}", paths.root / "run.failed.ipynb", _short(err)))
                    continue
            done.append(run_id)
            self.computed[run_id] = before
        return done

    def train_with_processes(self, paths: RunPaths) -> None:
        """Train the run in ``paths`` with :attr:`processes` data-parallel processes
        (``torchrun --standalone``, :mod:`ssdstudy.distributed`: gloo on the CPU, NCCL on
        GPUs), resuming, under the run's lock this study holds and lends them
        (:func:`ssdstudy.locks.delegated`); its notebook then finds the run trained,
        scored and timed, and trains nothing.

        On the CPU the threads are divided between the processes; the first process
        scores and times the run with its share (``timing.json`` records the threads;
        ``ssdstudy bench`` times the model again with all of them). On Linux torchrun is
        stopped (SIGTERM, which it passes on to its processes) when this study dies, so
        that no process trains the run once the study's lock is gone."""
        from ssdstudy.distributed import launch_env, train_command
        from ssdstudy.locks import DELEGATE_ENV

        env = launch_env(max(1, (os.cpu_count() or 1) // self.processes), **{DELEGATE_ENV: str(os.getpid())})
        options = ["--resume"] + ([] if self.progress else ["--no-progress"])
        cmd = train_command(paths.config, paths.root, self.processes, *options)
        done = subprocess.run(cmd, cwd=self.root, env=env, check=False, preexec_fn=_stop_with_parent)
        if done.returncode != 0:
            raise RuntimeError(f"torchrun with {self.processes} processes exited with {done.returncode} "
                               "(its output is above)")

    def run_chapters(self) -> None:
        chapters = [exp.chapter for exp in self.plan.experiments]
        chapters += [c for c in EXTRA_CHAPTERS if c not in chapters and (self.templates / f"{c}.ipynb").exists()]
        out_dir = self.root / "book" / "chapters"
        names = {exp.chapter: exp.name for exp in self.plan.experiments}
        for chapter in tqdm(chapters, disable=not self.progress, desc="chapters", unit="chapter"):
            out = out_dir / f"{chapter}.ipynb"
            try:
                execute_notebook(
                    self.templates / f"{chapter}.ipynb", out,
                    {"profile": self.profile, "experiment": names.get(chapter, chapter),
                     "results_dir": relative_to(self.plan.results, self.root)},
                    cwd=self.root,
                )
            except Exception as err:  # noqa: BLE001
                self.failures.append(Failure(f"chapter {chapter}", out.with_name(out.stem + ".failed.ipynb"), _short(err)))
        self.copy_run_notebooks()

    def copy_run_notebooks(self) -> None:
        """The executed run notebooks of this profile's plan, for the appendix."""
        dest = self.root / "book" / "runs"
        dest.mkdir(parents=True, exist_ok=True)
        wanted = {f"{r}.ipynb" for r in self.plan.runs}
        for old in dest.glob("*.ipynb"):
            if old.name not in wanted:
                old.unlink()
        for run_id, cfg in self.plan.runs.items():
            src = self.plan.paths(run_id).notebook
            if src.is_file():
                titled_copy(src, dest / f"{run_id}.ipynb", f"Run {run_id}: {run_label(cfg.to_dict())}")

    def build_book(self, *, strict: bool = True) -> Path:
        exe = Path(sys.executable).with_name("jupyter-book")
        cmd = [str(exe) if exe.exists() else "jupyter-book", "build", str(self.root)]
        if strict:
            cmd += ["-W", "-n", "--keep-going"]
        proc = subprocess.run(cmd, cwd=self.root, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            log = self.root / "_build" / "build.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(proc.stdout + "\n" + proc.stderr)
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise RuntimeError(f"jupyter-book build failed (full log: {log}):\n{tail}")
        return self.root / "_build" / "html" / "index.html"

    def report(self) -> str:
        skipped = self.computed_summary()
        if self.skipped:
            skipped += (f"{len(self.skipped)} runs of the plan are not computed (the chapters leave them out; "
                       f"`make study` computes them): {', '.join(self.skipped)}\n")
        if self.stale:
            skipped += (f"WARNING: {len(self.stale)} runs were computed by other code than this checkout's "
                        f"(stale; the chapters show them as published, `make study` computes them again): "
                        f"{', '.join(self.stale)}\n")
        if not self.failures:
            return skipped + ("all runs and chapters finished" if not self.skipped else "all chapters finished")
        lines = [skipped + f"{len(self.failures)} failed (the results made so far are kept; rerun to resume):"]
        lines += [f"  {f.what}: {f.error}\n    {'notebook' if f.notebook.suffix == '.ipynb' else 'folder'}: {f.notebook}"
                  for f in self.failures]
        return "\n".join(lines)


    def computed_summary(self) -> str:
        """One line of what this study computed ("" when nothing)."""
        words = {"to train": "trained", "to resume": "resumed from their last epoch",
                 "to finish": "finished (their notebook was missing)", "stale": "computed again (stale)"}
        parts = []
        for state, word in words.items():
            ids = [r for r, before in self.computed.items() if before == state]
            if ids:
                parts.append(f"{len(ids)} {word}: {', '.join(ids)}")
        return f"runs {'; '.join(parts)}\n" if parts else ""


def titled_copy(src: Path, dest: Path, title: str) -> None:
    """Copy a notebook, its first heading replaced by ``title`` (the book's page title)."""
    import nbformat

    nb = nbformat.read(src, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown" and cell.source.lstrip().startswith("# "):
            lines = cell.source.lstrip().splitlines()
            cell.source = "\n".join([f"# {title}", *lines[1:]])
            break
    nbformat.write(nb, dest)


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    # papermill's PapermillExecutionError carries the cell's exception name and value
    ename = getattr(err, "ename", None)
    evalue = getattr(err, "evalue", None)
    if ename:
        return f"{ename}: {evalue}"
    return text[-1] if text else type(err).__name__


def run_study(profile: str, *, only: list[str] | None = None, book: bool = True, train: bool = True,
              root: Path = PROJECT, results: Path | None = None, progress: bool = True) -> Study:
    """Data, runs, chapters and (optionally) the book, for one profile. With ``train``
    false nothing is trained: the chapters are made from the runs found (the published
    study), and the runs still to compute are listed in ``study.skipped``."""
    study = Study(profile, root=root, results=results, only=only, progress=progress)
    # a book of what is published now does not wait for a study computing more (which may
    # take days); the runs it finishes are held by their own locks
    with study.exclusive() if train else contextlib.nullcontext():
        _run(study, book=book, train=train)
    return study


def _run(study: Study, *, book: bool, train: bool) -> None:
    start = time.time()
    if train:
        study.prepare_data()
        study.run_runs()
    else:
        study.skipped = [r for r in study.plan.missing() if study.plan.status(r) not in ("to finish", "stale")]
        study.stale = study.plan.stale()
        study.finish_notebooks()
    study.run_chapters()
    if book and not study.failures:
        study.build_book()
    study.seconds = time.time() - start  # type: ignore[attr-defined]
