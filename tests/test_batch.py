"""`ssdstudy study train`: runs side by side in their own processes, a time limit, and
each finished run packed as it finishes."""

from __future__ import annotations

import sys
import tarfile
import time

import pytest

from ssdstudy.batch import Batch, pack_run, train_runs
from ssdstudy.study import make_plan


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_commands_run_at_most_n_at_once_and_report_as_they_end(tmp_path):
    ended = []
    batch = Batch({"a": _python("import time; time.sleep(0.5)"), "b": _python("raise SystemExit(3)"),
                   "c": _python("print('done')")},
                  at_once=2, logs=tmp_path, poll=0.05, on_done=lambda run_id, o: ended.append(run_id))
    outcomes = batch.run()
    assert {r: o.state for r, o in outcomes.items()} == {"a": "finished", "b": "failed", "c": "finished"}
    assert outcomes["b"].returncode == 3
    assert ended.index("b") < ended.index("a")  # b ends first; c starts in its place, a still runs
    assert (tmp_path / "c.log").read_text().strip() == "done"


def test_the_time_limit_stops_what_runs_and_starts_nothing_more(tmp_path):
    start = time.monotonic()
    outcomes = Batch({"slow": _python("import time; time.sleep(60)"), "next": _python("pass")},
                     at_once=1, until=0.5, logs=tmp_path, poll=0.05).run()
    assert time.monotonic() - start < 20
    assert outcomes["slow"].state == "stopped" and outcomes["slow"].returncode is not None
    assert outcomes["next"].state == "stopped" and outcomes["next"].returncode is None


def test_a_packed_run_has_its_files_but_no_checkpoint(tmp_path):
    run = tmp_path / "runs" / "abc123"
    (run / "sub").mkdir(parents=True)
    for name in ("checkpoint.pt", "metrics.json", "history.csv", "run.lock", "timing.json.tmp", "sub/x.txt"):
        (run / name).write_text(name)
    archive = pack_run(run, tmp_path / "out" / "abc123.tar.gz")
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == ["abc123/history.csv", "abc123/metrics.json", "abc123/sub/x.txt"]
    assert not list((tmp_path / "out").glob("*.partial"))


def test_at_once_must_be_positive():
    from ssdstudy.errors import UserError

    with pytest.raises(UserError, match="--at-once"):
        train_runs("smoke", [], at_once=0)


@pytest.mark.slow
def test_runs_trained_side_by_side_are_packed_and_left_for_their_notebooks(tmp_path):
    """Two runs of the smoke plan at once: each finishes, is packed without its checkpoint,
    records how it was trained (loader workers, threads), and is then found trained by the
    study, which only has its notebook to execute; a second call trains nothing."""
    plan = make_plan("smoke", ["hardware"], tmp_path / "results")
    run_ids = list(plan.runs)[:2]
    lines = []
    outcomes = train_runs("smoke", run_ids, at_once=2, pack=tmp_path / "pack", logs=tmp_path / "logs",
                          loader_workers=0, results=tmp_path / "results", report=lines.append)
    assert {o.state for o in outcomes.values()} == {"finished"}, [(tmp_path / "logs" / f"{r}.log").read_text() for r in run_ids]
    plan = make_plan("smoke", ["hardware"], tmp_path / "results")
    for run_id in run_ids:
        assert plan.status(run_id) == "to finish"
        with tarfile.open(tmp_path / "pack" / f"{run_id}.tar.gz") as tar:
            names = tar.getnames()
        assert f"{run_id}/metrics.json" in names and f"{run_id}/provenance.json" in names
        assert not any(n.endswith("checkpoint.pt") for n in names)
        cfg = plan.paths(run_id).config.read_text()
        assert "workers: 0" in cfg and "threads: 1" in cfg
    again = train_runs("smoke", run_ids, at_once=2, results=tmp_path / "results", report=lines.append)
    assert again == {} and sum("already trained" in line for line in lines) == 2
