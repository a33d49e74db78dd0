"""The published default study: every run in results/default/runs/ is what it says it is.

Each run folder is checked as `ssdstudy study check` does (ssdstudy.published): its
configuration hashes to its id, its metrics are its outcomes scored again, its commit is
in this repository's history and was clean, it was computed by the code at hand (not
stale), and its files name no path of the machine that made them.
"""

from __future__ import annotations

import subprocess

import pytest

from ssdstudy.published import TWIN, check_run
from ssdstudy.runs import RESULTS, RunPaths
from ssdstudy.study import make_plan
from ssdstudy.workspace import PROJECT

PUBLISHED = sorted(p.parent for p in (RESULTS / "default" / "runs").glob("*/provenance.json"))
TWINS = sorted(p.parent for p in (RESULTS / "default-recomputed" / "runs").glob("*/provenance.json"))


@pytest.mark.parametrize("run_dir", PUBLISHED, ids=[p.name for p in PUBLISHED])
def test_published_run_is_sound(run_dir):
    assert check_run(RunPaths(run_dir)) == []


@pytest.mark.parametrize("run_dir", TWINS, ids=[p.name for p in TWINS])
def test_published_twin_is_sound_and_has_its_published_run(run_dir):
    """A run computed again for the Reproduce page is held to the same checks (but for
    its notebook: `ssdstudy train` writes none), and its published run is there."""
    assert check_run(RunPaths(run_dir), files=TWIN) == []
    assert run_dir.name in {p.name for p in PUBLISHED}


def test_published_runs_are_runs_of_the_default_plan():
    plan = make_plan("default")
    assert {p.name for p in PUBLISHED} <= set(plan.runs)


def test_no_checkpoint_or_partial_file_is_published():
    files = subprocess.run(["git", "ls-files", "results"], cwd=PROJECT, capture_output=True, text=True,
                           check=True).stdout.split()
    assert not [f for f in files if f.endswith((".pt", ".tmp", ".running.ipynb", ".failed.ipynb"))]


def test_check_command_says_which_curves_still_rose(capsys):
    """`ssdstudy study check` reports each published run's soundness and where its
    validation curve ended: flat, still rising when it was stopped, or below the mAP
    floor (a run that did not learn, whose flat end is no convergence)."""
    import pandas as pd

    from ssdstudy.checks import MAP_FLOOR
    from ssdstudy.cli import main
    from ssdstudy.results import FLAT_GAIN, clipped_text, curve_end, jump_text, loss_jumps

    assert main(["study", "check", "--profile", "default"]) == 0
    out = capsys.readouterr().out
    for run_dir in PUBLISHED:
        end = curve_end(pd.read_csv(run_dir / "history.csv"))
        line = next(line for line in out.splitlines() if line.startswith(f"{run_dir.name}: "))
        assert line.startswith(f"{run_dir.name}: ok")
        if end["val_map"] < MAP_FLOOR:
            assert f"did not learn: validation VOC07 mAP {end['val_map']:.3f} at its end" in line
            assert "flat" not in line
        elif end["curve_flat"] is not None:
            assert ("flat at its end" if end["curve_flat"] else "still rising") in line
            assert f"last step {end['val_last_gain']:+.3f}, limit {FLAT_GAIN:g}" in line
        jumps = jump_text(loss_jumps(pd.read_csv(run_dir / "history.csv")))
        assert (f"; training loss jumped at {jumps}" in line) if jumps else ("jumped" not in line)
        clipped = clipped_text(pd.read_csv(run_dir / "history.csv"))
        assert (f"; {clipped}" in line) if clipped else ("clipped" not in line)
    assert f"{len(PUBLISHED)} of {len(make_plan('default').runs)} runs of the default plan published and sound" in out


def test_the_end_of_a_validation_curve():
    import pandas as pd

    from ssdstudy.results import curve_end

    rising = pd.DataFrame({"epoch": [1, 2, 3, 4], "val_voc07_map": [None, 0.30, None, 0.36]})
    assert curve_end(rising) == {"val_map": 0.36, "val_last_gain": pytest.approx(0.06), "curve_flat": False}
    flat = pd.DataFrame({"epoch": [1, 2, 3], "val_voc07_map": [0.70, 0.721, 0.720]})
    assert curve_end(flat)["curve_flat"] is True
    assert curve_end(pd.DataFrame({"epoch": [1], "val_voc07_map": [0.1]}))["curve_flat"] is None


def test_loss_jumps_name_the_epochs_they_undid():
    import pandas as pd

    from ssdstudy.results import jump_text, loss_jumps

    history = pd.DataFrame({"epoch": [1, 2, 3, 4, 5, 6], "loss": [8.6, 6.5, 4.0, 7.7, 5.0, 11.0]})
    jumps = loss_jumps(history)
    assert [(j["epoch"], j["back_to"]) for j in jumps] == [(4, 1), (6, 0)]
    assert jump_text(jumps) == ("epoch 4: 4.00 to 7.70, undoing epochs 2-3; "
                                "epoch 6: 5.00 to 11.00, undoing every earlier epoch")
    assert loss_jumps(pd.DataFrame({"epoch": [1, 2, 3], "loss": [8.0, 6.0, 6.5]})) == []  # +8 %: no jump


def test_clipped_steps_are_counted_with_their_epochs():
    import pandas as pd

    from ssdstudy.results import clipped_text

    history = pd.DataFrame({"epoch": [1, 2, 3, 4], "loss": [8.0, 6.0, 5.0, 4.0], "clipped_steps": [0, 2, 0, 1]})
    assert clipped_text(history) == "3 outlier steps clipped (epochs 2, 4)"
    assert clipped_text(history.assign(clipped_steps=[0, 0, 1, 0])) == "1 outlier step clipped (epoch 3)"
    assert clipped_text(history.assign(clipped_steps=0)) == ""
    assert clipped_text(history.drop(columns="clipped_steps")) == ""  # runs from before the count
