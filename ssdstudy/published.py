"""Checks that a published run is what it says it is.

A profile's results are computed once and published in ``results/<profile>/runs/``
(every file but the checkpoint). These checks, run by the tests and by
``ssdstudy study check``, hold each published run to its claims:

* its ``config.yaml`` hashes to its folder's name (the run id);
* its ``metrics.json`` VOC07 mAP is what its ``outcomes.npz`` gives when scored again;
* the commit its provenance names is in this repository's history, and the code was
  clean when the run started;
* it was computed by the code at hand (its compute-code hash, see
  :func:`ssdstudy.provenance.compute_code`), else it is stale;
* it has its executed notebook, and no published file names a path of the machine
  that made it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ssdstudy.provenance import ComputeCodes
from ssdstudy.runs import RunPaths, read_config

#: Absolute paths of a machine (home, work and temporary folders, Windows drives).
MACHINE_PATH = re.compile(r"(?<![\w.])(/home/|/root/|/work/|/Users/|/tmp/|/private/|/var/folders/|[A-Z]:\\\\)")
#: Published files: everything a run writes but its checkpoint.
PUBLISHED = ("config.yaml", "history.csv", "metrics.json", "outcomes.npz", "samples.json", "timing.json",
             "provenance.json", "run.ipynb")
#: A published twin's files (``ssdstudy train --run-dir``: no run notebook).
TWIN = tuple(name for name in PUBLISHED if name != "run.ipynb")


def in_history(commit: str) -> bool:
    """Whether ``commit`` is a commit of this repository's history (HEAD's ancestors)."""
    from ssdstudy.provenance import _git

    return bool(commit) and _git("merge-base", "--is-ancestor", commit, "HEAD") is not None


def check_run(paths: RunPaths, codes: ComputeCodes | None = None, files: tuple[str, ...] = PUBLISHED) -> list[str]:
    """The problems of one published run (an empty list: none).

    Args:
        paths: the run's folder.
        codes: the code at hand's compute codes, shared between calls (made if None).
        files: the files it must have (:data:`TWIN` for a recomputed twin).
    """
    from ssdstudy.evaluate.bootstrap import Outcomes

    problems = []
    missing = [name for name in files if not (paths.root / name).is_file()]
    if missing:
        return [f"missing {', '.join(missing)}"]
    config = read_config(paths.config)
    run_id = config.run_id
    if run_id != paths.root.name:
        problems.append(f"config.yaml hashes to {run_id}, not to the folder's name")
    metrics = json.loads(paths.metrics.read_text())
    rescored = float(Outcomes.load(paths.outcomes).voc07_map()[0])
    if abs(rescored - float(metrics["voc07_map"])) > 1e-9:
        problems.append(f"metrics.json says VOC07 mAP {metrics['voc07_map']:.6f}, outcomes.npz gives {rescored:.6f}")
    prov = json.loads(paths.provenance.read_text())
    git = prov.get("git") or {}
    if not git.get("commit") or not in_history(git["commit"]):
        problems.append(f"provenance commit {git.get('commit')} is not in this repository's history")
    elif git.get("dirty"):
        problems.append(f"trained from a modified checkout of {git['commit'][:12]}")
    code = (ComputeCodes() if codes is None else codes)[config.model.backbone]
    if prov.get("compute_code") != code:
        problems.append(f"stale: computed by compute code {prov.get('compute_code')}, the code at hand is {code}")
    for name in files:
        path = paths.root / name
        if path.suffix in (".npz",):
            continue
        found = MACHINE_PATH.search(path.read_text(errors="replace"))
        if found:
            problems.append(f"{name} names a path of the machine that made it ({found.group(0)}...)")
    return problems


def check_published(profile: str, results: Path | None = None) -> dict[str, list[str]]:
    """Run id -> problems, for every run folder of ``profile`` with a finished run."""
    from ssdstudy.results import run_paths

    codes = ComputeCodes()
    return {p.root.name: check_run(p, codes) for p in run_paths(profile, results) if p.complete()}


def recomputed_root(profile: str, results: Path | None = None) -> Path:
    """Where recomputed twins of a profile's published runs are kept:
    ``results/<profile>-recomputed/runs/<run id>/`` (not published)."""
    from ssdstudy.runs import RESULTS

    return (results or RESULTS) / f"{profile}-recomputed" / "runs"


def reproduction_table(profile: str, results: Path | None = None):
    """Published runs beside their recomputed twins: one row per twin found, with both
    VOC07 mAPs and intervals, their difference and the machines that made them."""
    import pandas as pd
    import yaml

    from ssdstudy.results import run_label
    from ssdstudy.runs import RESULTS

    published = (results or RESULTS) / profile / "runs"
    rows = []
    twins = recomputed_root(profile, results)
    for twin in sorted(twins.iterdir()) if twins.is_dir() else []:
        a, b = RunPaths(published / twin.name), RunPaths(twin)
        if not (a.complete() and b.metrics.is_file() and b.provenance.is_file()):
            continue
        config = yaml.safe_load(a.config.read_text())
        ma, mb = json.loads(a.metrics.read_text()), json.loads(b.metrics.read_text())
        pa, pb = json.loads(a.provenance.read_text()), json.loads(b.provenance.read_text())
        rows.append({
            "run_id": twin.name, "label": run_label(config),
            "published": ma["voc07_map"], "published_interval": ma.get("voc07_map_interval"),
            "recomputed": mb["voc07_map"], "recomputed_interval": mb.get("voc07_map_interval"),
            "difference": mb["voc07_map"] - ma["voc07_map"],
            "published_on": f"{pa.get('device_name')} ({pa.get('threads')} threads)",
            "recomputed_on": f"{pb.get('device_name')} ({pb.get('threads')} threads)",
            "same_code": pa.get("compute_code") == pb.get("compute_code"),
        })
    return pd.DataFrame(rows)


__all__ = ["MACHINE_PATH", "PUBLISHED", "TWIN", "check_published", "check_run", "in_history", "recomputed_root",
           "reproduction_table"]
