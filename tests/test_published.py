"""The published default study: every run in results/default/runs/ is what it says it is.

Each run folder is checked as `ssdstudy study check` does (ssdstudy.published): its
configuration hashes to its id, its metrics are its outcomes scored again, its commit is
in this repository's history and was clean, it was computed by the code at hand (not
stale), and its files name no path of the machine that made them.
"""

from __future__ import annotations

import subprocess

import pytest

from ssdstudy.published import check_run
from ssdstudy.runs import RESULTS, RunPaths
from ssdstudy.study import make_plan
from ssdstudy.workspace import PROJECT

PUBLISHED = sorted(p.parent for p in (RESULTS / "default" / "runs").glob("*/provenance.json"))


@pytest.mark.parametrize("run_dir", PUBLISHED, ids=[p.name for p in PUBLISHED])
def test_published_run_is_sound(run_dir):
    assert check_run(RunPaths(run_dir)) == []


def test_published_runs_are_runs_of_the_default_plan():
    plan = make_plan("default")
    assert {p.name for p in PUBLISHED} <= set(plan.runs)


def test_no_checkpoint_or_partial_file_is_published():
    files = subprocess.run(["git", "ls-files", "results"], cwd=PROJECT, capture_output=True, text=True,
                           check=True).stdout.split()
    assert not [f for f in files if f.endswith((".pt", ".tmp", ".running.ipynb", ".failed.ipynb"))]
