"""The study end to end on the smoke profile, and its robustness: a rerun trains
nothing, a failing notebook or a broken parameter file leaves what was made intact,
a run killed mid-training resumes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ssdstudy.config import ConfigError
from ssdstudy.evaluate.bootstrap import Outcomes
from ssdstudy.study import Study, make_plan, run_study
from ssdstudy.workspace import PROJECT

BOOK_FILES = ("_config.yml", "_toc.yml")


def book_sources(dest: Path) -> Path:
    """A copy of the book's sources (pages and templates, no executed output)."""
    for name in BOOK_FILES:
        shutil.copy(PROJECT / name, dest / name)
    def executed(folder: str, names: list[str]) -> list[str]:
        if Path(folder).name == "runs":
            return [n for n in names if n.endswith(".ipynb")]
        return [n for n in names if n == "chapters"]

    shutil.copytree(PROJECT / "book", dest / "book", ignore=executed)
    return dest


@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory):
    root = book_sources(tmp_path_factory.mktemp("smoke"))
    start = time.time()
    study = run_study("smoke", root=root, results=root / "results", progress=False)
    study.elapsed = time.time() - start
    return study


@pytest.mark.slow
def test_smoke_study_builds_every_chapter_and_figure(smoke_study):
    study = smoke_study
    assert not study.failures, study.report()
    html = study.root / "_build" / "html"
    assert (html / "index.html").is_file()
    chapters = [e.chapter for e in study.plan.experiments] + ["default_boxes", "conclusions"]
    for chapter in chapters:
        page = html / "book" / "chapters" / f"{chapter}.html"
        assert page.is_file(), chapter
        text = page.read_text()
        assert "Traceback" not in text, chapter
        if chapter != "conclusions":
            assert "<img" in text, f"{chapter} has no figure"
    for run_id in study.plan.runs:
        assert (html / "book" / "runs" / f"{run_id}.html").is_file()
        assert study.plan.paths(run_id).complete()
    images = list((html / "_images").glob("*.png"))
    assert len(images) >= len(chapters)
    # the chapters name the profile, so results on generated data are not taken for VOC
    assert "smoke" in (html / "book" / "chapters" / "backbone.html").read_text()


@pytest.mark.slow
def test_rerun_trains_nothing(smoke_study):
    again = Study("smoke", root=smoke_study.root, results=smoke_study.plan.results, progress=False)
    assert again.plan.missing() == []
    assert again.run_runs() == []


@pytest.mark.slow
def test_shared_runs_are_trained_once(smoke_study):
    plan = smoke_study.plan
    asked = sum(len(e.runs) for e in plan.experiments)
    assert len(plan.runs) < asked
    run_dirs = list((plan.results / "smoke" / "runs").iterdir())
    assert len(run_dirs) == len(plan.runs)


@pytest.mark.slow
def test_runs_keep_outcomes_with_their_size_bins(smoke_study):
    from ssdstudy.data.bins import SIZE_BINS
    from ssdstudy.evaluate.bootstrap import Outcomes

    for run_id in smoke_study.plan.runs:
        paths = smoke_study.plan.paths(run_id)
        outcomes = Outcomes.load(paths.outcomes)
        metrics = json.loads(paths.metrics.read_text())
        counts = {name: int((outcomes.image_bins == SIZE_BINS.index(name)).sum()) for name in metrics["size_bins"]}
        assert counts == {name: v["images"] for name, v in metrics["size_bins"].items()}


def test_executed_notebooks_keep_a_progress_bar_at_its_last_drawing(tmp_path):
    """tqdm's redraws (carriage returns, one stream message each) are joined and kept as
    the terminal shows them at the end; other output is kept whole."""
    import nbformat

    from ssdstudy.study import collapse_redraws

    bar = [nbformat.v4.new_output("stream", name="stderr", text=f"\repoch 1: {p:3d}%|") for p in range(0, 101, 10)]
    cell = nbformat.v4.new_code_cell("train()", outputs=[
        nbformat.v4.new_output("stream", name="stdout", text="training\n"), *bar,
        nbformat.v4.new_output("stream", name="stderr", text="\nUserWarning: kept\n"),
        nbformat.v4.new_output("execute_result", data={"text/plain": "1\r2"}, execution_count=1)])
    path = tmp_path / "run.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[cell, nbformat.v4.new_markdown_cell("a\rb")]), path)
    collapse_redraws(path)
    nb = nbformat.read(path, as_version=4)
    outputs = nb.cells[0].outputs
    assert [(o.output_type, o.get("name")) for o in outputs] == [("stream", "stdout"), ("stream", "stderr"),
                                                                  ("execute_result", None)]
    assert outputs[0].text == "training\n"
    assert outputs[1].text == "epoch 1: 100%|\nUserWarning: kept\n"
    assert outputs[2].data["text/plain"] == "1\r2"
    assert nb.cells[1].source == "a\rb"


def test_nested_progress_bars_end_as_a_terminal_shows_them():
    """An epoch bar with a batch bar inside it (tqdm position 1, drawn a line below with
    the cursor moved back up, not left when closed), then another bar: what is left is
    one line per bar that stayed, at its last drawing."""
    import io

    from tqdm import tqdm

    from ssdstudy.study import final_frames

    out = io.StringIO()
    print("start", file=out)
    with tqdm(range(3), desc="training", file=out, mininterval=0, miniters=1) as epochs:
        for epoch in epochs:
            for _ in tqdm(range(4), desc=f"epoch {epoch + 1}", file=out, leave=False, mininterval=0, miniters=1):
                pass
            epochs.set_postfix(loss=1.0)
    for _ in tqdm(range(5), desc="detecting", file=out, mininterval=0, miniters=1):
        pass
    raw = out.getvalue()
    assert raw.count("epoch 1") > 3 and "\x1b[A" in raw
    lines = final_frames(raw).splitlines()
    assert [line.split(":")[0] for line in lines] == ["start", "training", "detecting"]
    assert "3/3" in lines[1] and "loss=1" in lines[1] and "5/5" in lines[2]


def test_failing_notebook_is_reported_and_keeps_finished_results(tmp_path):
    root = book_sources(tmp_path)
    # a run template that fails for every run
    nb = json.loads((root / "book" / "templates" / "run.ipynb").read_text())
    after = next(i for i, c in enumerate(nb["cells"]) if "parameters" in c["metadata"].get("tags", [])) + 1
    nb["cells"].insert(after, {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
                               "source": ["raise RuntimeError('broken on purpose')"]})
    (root / "book" / "templates" / "run.ipynb").write_text(json.dumps(nb))
    study = Study("smoke", root=root, results=root / "results", only=["hardware"], progress=False)
    # one finished run is already there and must survive
    first = next(iter(study.plan.runs))
    finished = study.plan.paths(first)
    finished.root.mkdir(parents=True)
    from ssdstudy.provenance import compute_code

    for path in (finished.metrics, finished.timing):
        path.write_text("{}")
    finished.provenance.write_text(json.dumps({"compute_code": compute_code(backbone=study.plan.runs[first].model.backbone)}))
    finished.notebook.write_text("{}")
    done = study.run_runs()
    assert done == []
    assert len(study.failures) == len(study.plan.runs) - 1  # every run of the experiment but the finished one
    failure = study.failures[0]
    assert "broken on purpose" in failure.error
    assert failure.notebook.is_file()
    assert not (study.plan.paths(failure.what.split()[-1]).notebook).exists()
    assert finished.complete()
    assert "rerun to resume" in study.report()


def test_broken_parameter_file_stops_before_touching_results(tmp_path, monkeypatch):
    import ssdstudy.config as config
    import ssdstudy.study as study_module

    params = tmp_path / "parameters"
    shutil.copytree(PROJECT / "parameters", params)
    (params / "experiments" / "mining.yaml").write_text("runs:\n  - loss: {neg_pos_ratio: lots}\n")
    monkeypatch.setattr(config, "PARAMETERS", params)
    monkeypatch.setattr(study_module, "PARAMETERS", params)
    results = tmp_path / "results"
    (results / "smoke" / "runs" / "abc").mkdir(parents=True)
    (results / "smoke" / "runs" / "abc" / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError) as err:
        make_plan("smoke", results=results)
    assert "mining.yaml" in str(err.value) and "runs[0].loss.neg_pos_ratio" in str(err.value)
    assert (results / "smoke" / "runs" / "abc" / "metrics.json").read_text() == "{}"


def test_killed_run_resumes(tiny_run_yaml, tmp_path):
    """A run killed (SIGKILL) mid-training continues from its last finished epoch."""
    text = tiny_run_yaml.read_text().replace("epochs: 2", "epochs: 6")
    params = tmp_path / "long.yaml"
    params.write_text(text)
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "ssdstudy.cli", "train", str(params), "--run-dir", str(run_dir), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = run_dir / "history.csv"
    deadline = time.time() + 120
    while time.time() < deadline and not (history.exists() and len(history.read_text().splitlines()) >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(history.read_text().splitlines()) - 1
    assert 2 <= done_before < 6
    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    lines = history.read_text().splitlines()
    assert [int(line.split(",")[0]) for line in lines[1:]] == [1, 2, 3, 4, 5, 6]
    assert (run_dir / "metrics.json").is_file()


@pytest.mark.slow
def test_runs_pass_the_published_checks_and_tampering_is_caught(smoke_study, tmp_path):
    """What the published-run tests check, on the smoke study's fresh runs: config hash,
    metrics rescored from outcomes, commit in history, the code at hand, no machine paths;
    each kind of tampering is reported."""
    from ssdstudy.published import check_run
    from ssdstudy.runs import RunPaths

    run_id = next(iter(smoke_study.plan.runs))
    original = smoke_study.plan.paths(run_id)
    problems = check_run(original)
    assert not [p for p in problems if "modified checkout" not in p], problems  # a dev checkout may be dirty

    def copy(name: str) -> RunPaths:
        dest = tmp_path / name / run_id
        shutil.copytree(original.root, dest, ignore=shutil.ignore_patterns("checkpoint.pt"))
        return RunPaths(dest)

    renamed = RunPaths(tmp_path / "renamed" / "0123456789ab")
    shutil.copytree(original.root, renamed.root)
    assert any("hashes to" in p for p in check_run(renamed))

    metrics = copy("metrics")
    data = json.loads(metrics.metrics.read_text())
    data["voc07_map"] += 0.01
    metrics.metrics.write_text(json.dumps(data))
    assert any("outcomes.npz gives" in p for p in check_run(metrics))

    prov = copy("provenance")
    data = json.loads(prov.provenance.read_text())
    data["git"]["commit"] = "0" * 40
    data["compute_code"] = "000000000000"
    prov.provenance.write_text(json.dumps(data))
    found = check_run(prov)
    assert any("not in this repository's history" in p for p in found)
    assert any(p.startswith("stale") for p in found)

    leaky = copy("leaky")
    leaky.history.write_text(leaky.history.read_text() + "# /home/someone/ssdstudy\n")
    assert any("path of the machine" in p for p in check_run(leaky))


@pytest.mark.slow
def test_a_stale_run_is_listed_and_computed_again(smoke_study, monkeypatch):
    """A finished run whose compute code differs from the code at hand is stale: the plan
    lists it and the runner computes it again, from scratch."""
    import ssdstudy.provenance

    plan = make_plan("smoke", results=smoke_study.plan.results)
    assert plan.stale() == [] and plan.missing() == []
    monkeypatch.setattr(ssdstudy.provenance, "compute_code", lambda package=None, backbone=None: "ffffffffffff")
    plan = make_plan("smoke", results=smoke_study.plan.results)
    assert plan.stale() == list(plan.runs) and plan.missing() == list(plan.runs)
    assert all(plan.status(r) == "stale" for r in plan.runs)


@pytest.mark.slow
def test_smoke_claims_that_rest_on_map_cannot_be_tested(smoke_study):
    """The smoke study's models learn nothing: every claim that rests on mAP is "cannot
    test" because the models did not learn, never a verdict (what the conclusions chapter
    of the smoke book says too)."""
    from ssdstudy.study import profile_verdicts

    verdicts = {v.number: v for v in profile_verdicts("smoke", results=smoke_study.plan.results)}
    for number in (1, 2, 3, 6, 7):
        assert verdicts[number].status == "cannot test", verdicts[number].markdown()
        assert verdicts[number].scope == "the models compared did not learn"
    page = (smoke_study.root / "_build" / "html" / "book" / "chapters" / "conclusions.html").read_text()
    assert "the models compared did not learn" in page


def test_claims_command_prints_json():
    proc = subprocess.run([sys.executable, "-m", "ssdstudy.cli", "study", "claims", "--profile", "smoke", "--json"],
                          capture_output=True, text=True, check=True)
    data = json.loads(proc.stdout)
    assert [d["claim"] for d in data] == list(range(1, 9))
    assert all({"claim", "status", "checks"} <= set(d) for d in data)
    assert all({"statement", "outcome", "detail"} == set(c) for d in data for c in d["checks"])


@pytest.mark.slow
def test_reproduce_page_lists_recomputed_twins(smoke_study, tmp_path):
    """A twin in results/<profile>-recomputed/runs/<id>/ is shown beside its published run."""
    from ssdstudy.published import recomputed_root, reproduction_table

    results = smoke_study.plan.results
    assert reproduction_table("smoke", results=results).empty
    run_id = next(iter(smoke_study.plan.runs))
    twin = recomputed_root("smoke", results) / run_id
    shutil.copytree(smoke_study.plan.paths(run_id).root, twin)
    try:
        table = reproduction_table("smoke", results=results)
        assert list(table["run_id"]) == [run_id]
        assert table["difference"].iloc[0] == 0 and bool(table["same_code"].iloc[0])
    finally:
        shutil.rmtree(twin.parent.parent)


def test_a_run_another_process_computes_is_left_to_it(tmp_path):
    """Two studies at once: a run whose folder is locked by another process is skipped and
    reported with who computes it, never trained twice."""
    root = book_sources(tmp_path)
    study = Study("smoke", root=root, results=root / "results", only=["hardware"], progress=False)
    run_id = next(iter(study.plan.runs))
    with study.plan.paths(run_id).locked() as holder:
        assert holder is None
        with study.plan.paths(run_id).locked() as again:
            assert again is not None and again.pid == os.getpid()
        done = study.run_runs([run_id])
    assert done == []
    assert f"another process now (pid {os.getpid()} on" in study.report()
    assert not study.plan.paths(run_id).history.exists()


def test_data_generation_waits_for_another_writer(tmp_path):
    import threading

    from ssdstudy.runs import folder_lock

    order = []

    def second() -> None:
        with folder_lock(tmp_path / "synth"):
            order.append("second")

    with folder_lock(tmp_path / "synth"):
        thread = threading.Thread(target=second)
        thread.start()
        thread.join(0.3)
        order.append("first done")
    thread.join(5)
    assert order == ["first done", "second"]


@pytest.mark.slow
def test_book_from_published_runs_trains_nothing(smoke_study, tmp_path):
    """What `make book` does on a fresh clone: chapters and book from the runs found, no
    training; a run of the plan that is not there is listed, not trained."""
    root = book_sources(tmp_path)
    results = root / "results"
    published = smoke_study.plan.results / "smoke" / "runs"
    ids = sorted(p.name for p in published.iterdir())
    for run_id in ids[1:]:  # all but one run published, without checkpoints
        shutil.copytree(published / run_id, results / "smoke" / "runs" / run_id,
                        ignore=shutil.ignore_patterns("checkpoint.pt"))
    study = run_study("smoke", root=root, results=results, train=False, progress=False)
    assert not study.failures, study.report()
    assert study.skipped == [ids[0]] and "not computed" in study.report()
    assert sorted(p.name for p in (results / "smoke" / "runs").iterdir()) == ids[1:]
    assert not list((results / "smoke" / "runs").glob("*/checkpoint.pt"))
    assert (root / "_build" / "html" / "index.html").is_file()


@pytest.fixture(scope="module")
def installed_package(tmp_path_factory) -> Path:
    """The package installed non-editable (``pip install .`` into a folder of its own,
    dependencies taken from the environment at hand)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(PROJECT)], check=True, capture_output=True)
    return target


@pytest.mark.slow
def test_two_concurrent_studies_of_an_installed_package(smoke_study, installed_package, tmp_path):
    """Two `ssdstudy study run --profile smoke` at once in one project folder, with the
    package installed non-editable and run from the project's root: the second waits for
    the first and says so; every run is trained once, its history holds each epoch once,
    its loss is that of a study alone, its metrics are its own outcomes', and the results
    are in the project's results/. The whole smoke profile: every experiment's runs and
    chapters."""
    root = book_sources(tmp_path)
    shutil.copytree(PROJECT / "parameters", root / "parameters")
    env = {k: v for k, v in os.environ.items() if k not in ("SSDSTUDY_ROOT", "PYTHONPATH")}
    env["PYTHONPATH"] = str(installed_package)
    cmd = [sys.executable, "-m", "ssdstudy.cli", "study", "run", "--profile", "smoke", "--no-progress"]
    where = subprocess.run([sys.executable, "-c", "import ssdstudy; print(ssdstudy.__file__)"],
                           cwd=root, env=env, capture_output=True, text=True, check=True)
    assert where.stdout.startswith(str(installed_package))
    first = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = root / "results" / "smoke" / ".study.lock"
    deadline = time.time() + 120
    while not (lock.is_file() and lock.read_text()) and time.time() < deadline:
        time.sleep(0.2)
    second = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=1800)
    out, err = first.communicate(timeout=1800)
    assert first.returncode == 0, err[-2000:]
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"another study is computing it (pid {first.pid} on" in second.stderr
    assert "all runs and chapters finished" in second.stdout and not second.stdout.startswith("runs ")
    runs = root / "results" / "smoke" / "runs"
    plan = make_plan("smoke", results=root / "results")
    assert f"{len(plan.runs)} trained: " in out
    assert sorted(p.name for p in runs.iterdir()) == sorted(plan.runs)
    assert all((root / "book" / "chapters" / f"{exp.chapter}.ipynb").is_file() for exp in plan.experiments)
    for run_id in plan.runs:
        history = (runs / run_id / "history.csv").read_text().splitlines()
        epochs = [line.split(",")[0] for line in history[1:]]
        assert epochs == [str(e + 1) for e in range(plan.runs[run_id].train.epochs)], run_id
        # the same seed, threads and code as the study alone, yet not compared to the bit:
        # in CI one run of the 29 (20c158e610ce) once scored a VOC07 mAP of 0.000326 here
        # against 0.000311 alone, never seen again on this project's machines (the test
        # passed; the run trained 7 times in separate processes: identical with 2, 3, 4 and 8
        # threads, 0.000323 with 1). Its models have not learned, so a last-digit change of a
        # score reorders their detections. The loss, as in the Dask test: training a run
        # twice or resuming it from another's checkpoint moves it far more than rounding.
        alone = smoke_study.plan.paths(run_id).history.read_text().splitlines()
        assert float(history[1].split(",")[1]) == pytest.approx(float(alone[1].split(",")[1]), rel=1e-2), run_id
        metrics = json.loads((runs / run_id / "metrics.json").read_text())
        assert metrics["voc07_map"] == pytest.approx(Outcomes.load(runs / run_id / "outcomes.npz").voc07_map()[0],
                                                     abs=1e-12), run_id


@pytest.mark.slow
def test_a_run_killed_before_its_notebook_is_finished_and_reported(smoke_study, tmp_path):
    """A run killed after its results but before its notebook is not complete: the next
    study executes its notebook (training nothing) and says so."""
    root = book_sources(tmp_path)
    results = root / "results"
    run_id = next(iter(make_plan("smoke", only=["hardware"]).runs))
    # as published: without its checkpoint, which must not make it train again
    shutil.copytree(smoke_study.plan.paths(run_id).root, results / "smoke" / "runs" / run_id,
                    ignore=shutil.ignore_patterns("run.ipynb", "checkpoint.pt"))
    study = Study("smoke", root=root, results=results, only=["hardware"], progress=False)
    assert study.plan.status(run_id) == "to finish"
    history = study.plan.paths(run_id).history.read_text()
    assert study.run_runs([run_id]) == [run_id]
    assert study.plan.status(run_id) == "found"
    assert study.plan.paths(run_id).history.read_text() == history  # nothing trained again
    assert not study.plan.paths(run_id).checkpoint.exists()
    assert f"runs 1 finished (their notebook was missing): {run_id}" in study.report()


@pytest.mark.slow
def test_runs_on_a_local_dask_cluster_are_those_of_the_serial_study(smoke_study, tmp_path):
    """`study run --workers 2`: two worker processes compute the runs at once, each run
    once, with the run ids and the metrics of the serial study. (Two experiments of the
    smoke profile: the whole profile on two workers is not yet measured in CI time.)"""
    from ssdstudy import cluster

    root = book_sources(tmp_path)
    study = Study("smoke", root=root, results=root / "results", only=["hardware", "nms"], progress=False)
    with study.exclusive():
        study.prepare_data()
        with cluster.client(workers=2) as dask_client:
            assert len(dask_client.scheduler_info()["workers"]) == 2
            done = cluster.run_runs_on(study, dask_client)
    assert not study.failures, study.report()
    assert sorted(done) == sorted(study.plan.runs)
    assert set(study.computed.values()) == {"to train"}
    for run_id in study.plan.runs:
        history = study.plan.paths(run_id).history.read_text().splitlines()
        assert [line.split(",")[0] for line in history[1:]] == ["1"]
        # each worker trains with one thread, the serial study with two: the sums of a
        # convolution are taken in another order, so the runs agree up to rounding, which
        # a few optimiser steps carry into the loss (measured: 0.1 %), not to the bit
        loss = float(history[1].split(",")[1])
        alone = smoke_study.plan.paths(run_id).history.read_text().splitlines()
        assert loss == pytest.approx(float(alone[1].split(",")[1]), rel=1e-2)
    assert study.plan.missing() == []


@pytest.mark.slow
def test_a_study_trains_its_runs_with_torchrun(smoke_study, tmp_path):
    """`study run --nproc-per-node 2`: the study trains a run with two gloo processes
    under the run's lock it holds, then executes the run's notebook, which finds it
    trained and trains nothing; the loss is the one process's within the tolerance of
    tests/test_distributed.py."""
    from tests.test_distributed import LOSS_TOLERANCE

    root = book_sources(tmp_path)
    study = Study("smoke", root=root, results=root / "results", only=["hardware"], progress=False, processes=2)
    run_id = next(r for r, c in study.plan.runs.items() if c.model.backbone == "mobilenet_v1")
    with study.exclusive():
        study.prepare_data()
        assert study.run_runs([run_id]) == [run_id]
    assert not study.failures, study.report()
    paths = study.plan.paths(run_id)
    prov = json.loads(paths.provenance.read_text())
    assert (prov["processes"], prov["distributed_backend"]) == (2, "gloo")
    assert paths.notebook.is_file() and study.computed == {run_id: "to train"}
    history = paths.history.read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["1"]
    alone = smoke_study.plan.paths(run_id).history.read_text().splitlines()
    assert float(history[1].split(",")[1]) == pytest.approx(float(alone[1].split(",")[1]), rel=LOSS_TOLERANCE)


@pytest.mark.slow
def test_a_dask_worker_killed_mid_run_loses_no_finished_epoch(tmp_path):
    """`study run --workers 1`: the worker computing a run is killed (SIGKILL) after the
    run's first epoch; Dask's nanny starts a new worker, the run is handed to it, and it
    resumes from the checkpoint: every epoch is in the history once, the epoch finished
    before the kill is not trained again, and the run finishes with its notebook."""
    import psutil
    import yaml

    root = book_sources(tmp_path)
    shutil.copytree(PROJECT / "parameters", root / "parameters")
    profile = yaml.safe_load((PROJECT / "parameters" / "profiles" / "smoke.yaml").read_text())
    profile["profile"]["name"] = "smoke-long"
    profile["study"]["experiments"] = ["hardware"]
    profile["train"]["epochs"] = 5
    (root / "parameters" / "profiles" / "smoke-long.yaml").write_text(yaml.safe_dump(profile))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["SSDSTUDY_ROOT"] = str(root)
    env["PYTHONPATH"] = str(PROJECT)
    base = [sys.executable, "-m", "ssdstudy.cli", "study", "run", "--profile", "smoke-long"]
    listing = subprocess.run(base + ["--dry-run"], cwd=root, env=env, capture_output=True, text=True, check=True)
    run_id = next(line.split()[0] for line in listing.stdout.splitlines() if "MobileNetV1" in line)
    study = subprocess.Popen(base + ["--runs", run_id, "--workers", "1", "--no-progress"], cwd=root, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = root / "results" / "smoke-long" / "runs" / run_id
    history = run / "history.csv"

    def epochs() -> list[str]:
        lines = history.read_text().splitlines() if history.is_file() else []
        return lines[1:]

    def kernels() -> list[psutil.Process]:
        found = []
        for child in psutil.Process(study.pid).children(recursive=True):
            try:
                if any("ipykernel" in part for part in child.cmdline()):
                    found.append(child)
            except psutil.Error:  # a short-lived child gone meanwhile
                continue
        return found

    # epoch 1 is finished once its history row and a checkpoint are written (the row
    # first: a row without checkpoint is dropped on resume)
    deadline = time.time() + 600
    while not (epochs() and (run / "checkpoint.pt").is_file()) and time.time() < deadline and study.poll() is None:
        time.sleep(0.05)
    first = epochs()[:1]
    assert first and not (run / "metrics.json").exists(), "the run finished before it could be killed"
    (kernel,) = kernels()
    kernel.parent().send_signal(signal.SIGKILL)  # the Dask worker running the run's notebook
    out, err = study.communicate(timeout=900)
    assert study.returncode == 0, err[-3000:]
    after = epochs()
    assert [row.split(",")[0] for row in after] == [str(e) for e in range(1, 6)]
    assert after[:1] == first  # the epoch finished before the kill, kept as it was
    assert (run / "metrics.json").is_file() and (run / "run.ipynb").is_file()
    assert f"runs 1 resumed from their last epoch: {run_id}" in out
