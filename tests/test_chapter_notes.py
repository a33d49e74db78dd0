"""While a study is being computed, each chapter names the runs it lacks (and the
conclusions count them), so that a partial book never passes for a whole one."""

from __future__ import annotations

from ssdstudy.study import make_plan, missing_note


def finish(results, profile, run_id):
    folder = results / profile / "runs" / run_id
    folder.mkdir(parents=True)
    for name in ("metrics.json", "timing.json", "provenance.json"):
        (folder / name).write_text("{}")


def test_a_chapter_names_the_runs_it_lacks(tmp_path):
    plan = make_plan("smoke", results=tmp_path)
    mining = [e for e in plan.experiments if e.name == "mining"][0]
    ids = list(dict.fromkeys(cfg.run_id for cfg in mining.runs))
    note = missing_note("smoke", "mining", results=tmp_path)
    assert note.startswith(":::{important}\n") and note.endswith("\n:::")
    assert f"{len(ids)} of this chapter's {len(ids)} runs are not computed yet" in note
    assert all(f"(`{run_id}`)" in note for run_id in ids)
    for run_id in ids[1:]:
        finish(tmp_path, "smoke", run_id)
    note = missing_note("smoke", "mining", results=tmp_path)
    assert f"1 of this chapter's {len(ids)} runs is not computed yet" in note
    assert f"(`{ids[0]}`)" in note and f"(`{ids[1]}`)" not in note
    finish(tmp_path, "smoke", ids[0])
    assert missing_note("smoke", "mining", results=tmp_path) == ""


def test_the_conclusions_count_the_plan_s_missing_runs(tmp_path):
    plan = make_plan("smoke", results=tmp_path)
    note = missing_note("smoke", results=tmp_path)
    assert f"{len(plan.runs)} of the profile's {len(plan.runs)} runs are not computed yet" in note
    for run_id in plan.runs:
        finish(tmp_path, "smoke", run_id)
    assert missing_note("smoke", results=tmp_path) == ""
