"""Training: learning, determinism, resumption, checkpoints and the history."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from ssdstudy.boxes import match
from ssdstudy.config import load_run_config
from ssdstudy.loss import MultiBoxLoss
from ssdstudy.model import build_model
from ssdstudy.runs import RunPaths
from ssdstudy import train
from ssdstudy.train import GradientNorms, Trainer, lr_factor


def test_one_batch_overfit_drives_the_loss_below_a_tenth(tiny_synth):
    """Model, matching and loss together can learn: 50 steps on one batch."""
    from ssdstudy.augment import build_transform
    from ssdstudy.data import DetectionDataset, collate, load_split

    torch.manual_seed(0)
    model = build_model("mobilenet_v1", 9, width=0.5, image_size=128)
    records = load_split(tiny_synth, "trainval")[:4]
    transform = build_transform(False, 128, model.mean, model.std)
    images, targets = collate([DetectionDataset(records, transform)[i] for i in range(4)])
    loc_t, cls_t = match([t["boxes"] / 128.0 for t in targets], [t["labels"] for t in targets], model.priors)
    criterion = MultiBoxLoss(neg_pos_ratio=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    model.train()
    for _ in range(50):
        loc, cls = criterion(*model(images), loc_t, cls_t)
        loss = loc + cls
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], losses[::10]


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("clip", [None, 1.05])
def test_resume_equals_an_uninterrupted_run(clip, tiny_run_yaml, tmp_path, monkeypatch):
    """Also with outlier clipping (a window of 2 steps, so that the tiny run clips): the
    window's norms are in the checkpoint and the resumed run clips the same steps."""
    config = load_run_config(tiny_run_yaml)
    config.train.clip_outliers = clip
    monkeypatch.setattr(train, "OUTLIER_WINDOW", 2)
    straight = Trainer(config, RunPaths(tmp_path / "straight"), progress=False)
    straight.fit(resume=False)

    interrupted = Trainer(config, RunPaths(tmp_path / "resumed"), progress=False)
    real_epoch = Trainer.train_epoch

    def ctrl_c_in_second_epoch(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return real_epoch(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", ctrl_c_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(resume=True)
    monkeypatch.setattr(Trainer, "train_epoch", real_epoch)
    del interrupted

    resumed = Trainer(config, RunPaths(tmp_path / "resumed"), progress=False)
    stats = resumed.fit(resume=True)
    assert [s.epoch for s in stats] == [2]
    assert _states_equal(straight.model.state_dict(), resumed.model.state_dict())
    assert straight.optimizer.param_groups[0]["lr"] == resumed.optimizer.param_groups[0]["lr"]
    history = pd.read_csv(tmp_path / "resumed" / "history.csv")
    straight_history = pd.read_csv(tmp_path / "straight" / "history.csv")
    assert list(history["epoch"]) == [1, 2]
    assert history["loss"].tolist() == pytest.approx(straight_history["loss"].tolist(), rel=1e-6)
    assert history["clipped_steps"].tolist() == straight_history["clipped_steps"].tolist()
    assert (straight_history["clipped_steps"].sum() > 0) == (clip is not None)


def test_same_seed_same_run_other_seed_other_run(tiny_run_yaml, tmp_path):
    config = load_run_config(tiny_run_yaml)
    config.train.epochs = 1
    a = Trainer(config, RunPaths(tmp_path / "a"), progress=False)
    a.fit(resume=False)
    b = Trainer(config, RunPaths(tmp_path / "b"), progress=False)
    b.fit(resume=False)
    assert _states_equal(a.model.state_dict(), b.model.state_dict())
    config.train.seed = 1
    c = Trainer(config, RunPaths(tmp_path / "c"), progress=False)
    c.fit(resume=False)
    assert not _states_equal(a.model.state_dict(), c.model.state_dict())


def test_checkpoint_and_history_after_each_epoch(tiny_run_yaml, tmp_path):
    config = load_run_config(tiny_run_yaml)
    paths = RunPaths(tmp_path / "run")
    Trainer(config, paths, progress=False).fit(resume=True)
    state = torch.load(paths.checkpoint, weights_only=True)
    assert state["epoch"] == 2 and state["run_id"] == config.run_id
    history = pd.read_csv(paths.history)
    assert list(history["epoch"]) == [1, 2]
    assert (history["images_per_s"] > 0).all() and (history["loss"] > 0).all()
    assert not list(paths.root.glob("*.tmp"))
    # fitting a finished run again does nothing
    again = Trainer(config, paths, progress=False)
    assert again.fit(resume=True) == []


def test_a_checkpoint_of_another_run_is_refused(tiny_run_yaml, tmp_path):
    config = load_run_config(tiny_run_yaml)
    config.train.epochs = 1
    paths = RunPaths(tmp_path / "run")
    Trainer(config, paths, progress=False).fit(resume=False)
    config.train.seed = 7
    from ssdstudy.errors import UserError

    with pytest.raises(UserError, match="checkpoint of run"):
        Trainer(config, paths, progress=False).restore()


@pytest.mark.parametrize("scheduler", ["cosine", "multistep", "constant"])
def test_learning_rate_schedules_with_warmup(scheduler, tiny_run_yaml):
    config = load_run_config(tiny_run_yaml)
    config.train.epochs = 10
    config.train.scheduler = scheduler
    config.train.milestones = [5, 8]
    config.train.warmup_epochs = 1
    steps = 10
    factors = [lr_factor(config, s, steps) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(b >= a for a, b in zip(factors[:10], factors[1:10]))
    if scheduler == "cosine":
        assert factors[50] == pytest.approx(0.5) and factors[99] < 0.01
    elif scheduler == "multistep":
        assert factors[49] == 1.0 and factors[50] == pytest.approx(0.1) and factors[80] == pytest.approx(0.01)
    else:
        assert set(factors[10:]) == {1.0}


def test_bf16_training_learns_and_stays_finite(tiny_run_yaml, tmp_path):
    config = load_run_config(tiny_run_yaml)
    config.train.precision = "bf16"
    config.train.epochs = 3
    stats = Trainer(config, RunPaths(tmp_path / "bf16"), progress=False).fit(resume=False)
    losses = [s.loss for s in stats]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    assert config.run_id != load_run_config(tiny_run_yaml).run_id
    # the same seed gives the same run (on CPUs with AMX, convolutions whose taps see only
    # padding once left unwritten gradients: NaN now and then, different each time)
    again = Trainer(config, RunPaths(tmp_path / "bf16-again"), progress=False).fit(resume=False)
    assert [s.loss for s in again] == losses


@pytest.mark.parametrize("rule", ["ignore", "drop"])
def test_difficult_objects_left_out_of_training_and_flagged_for_the_test(rule, tiny_run_yaml):
    """The study trains without difficult objects; the test split keeps them, flagged, for
    the evaluation to ignore (VOC's rule), unless data.test_difficult is "drop"."""
    from ssdstudy.workspace import Workspace

    config = load_run_config(tiny_run_yaml)
    config.data.test_difficult = rule
    ws = Workspace(config)
    assert not any(r.difficult.any() for r in ws.train_records)
    flagged = sum(int(r.difficult.sum()) for r in ws.test_records)
    assert (flagged > 0) if rule == "ignore" else (flagged == 0)


def test_flush_denormals_is_a_call_of_training_processes_not_an_import_side_effect():
    """Importing the training code leaves the process's arithmetic alone; flush_denormals()
    makes denormals zero in the calling thread and in torch's threads started after it."""
    import subprocess
    import sys

    code = (
        "import torch\n"
        "import ssdstudy.train as t\n"
        "x = torch.full((4,), 1e-39)\n"
        "print(bool((x * 1.0 > 0).all()))\n"
        "t.flush_denormals()\n"
        "print(bool((x * 1.0 == 0).all()))\n"
    )
    # two separate processes: whether torch's threads exist already matters
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "True"]
    first = (
        "import torch\n"
        "import ssdstudy.train as t\n"
        "t.flush_denormals()\n"
        "torch.set_num_threads(2)\n"
        "x = torch.full((1 << 22,), 1e-39)\n"
        "print(bool((x * 1.0 == 0).all()))\n"
    )
    out = subprocess.run([sys.executable, "-c", first], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True"]


def test_playground_trains_a_quick_model_when_a_run_has_no_checkpoint(tiny_run_yaml, tmp_path):
    """A published run has no checkpoint: the playground trains its configuration for a
    few epochs instead, once, and loads it."""
    from ssdstudy.pipeline import load_model
    from ssdstudy.playground import quick_checkpoint
    from ssdstudy.runs import write_config

    config = load_run_config(tiny_run_yaml)
    run = RunPaths(tmp_path / "published" / config.run_id)
    run.root.mkdir(parents=True)
    write_config(run.config, config)
    checkpoint = quick_checkpoint(run.root, epochs=1, results=tmp_path / "results", progress=False)
    assert checkpoint == tmp_path / "results" / "playground" / config.run_id / "checkpoint.pt"
    model, loaded, _ = load_model(checkpoint)
    assert loaded.train.epochs == 1 and loaded.model == config.model
    stamp = checkpoint.stat().st_mtime_ns
    assert quick_checkpoint(run.root, epochs=1, results=tmp_path / "results", progress=False) == checkpoint
    assert checkpoint.stat().st_mtime_ns == stamp  # found again, not trained again


def test_a_history_row_without_a_checkpoint_is_dropped_on_resume(tiny_run_yaml, tmp_path):
    """Killed between the first epoch's history row and its checkpoint: the resumed run
    trains that epoch again and writes its row once."""
    config = load_run_config(tiny_run_yaml)
    config.train.epochs = 1
    first = Trainer(config, RunPaths(tmp_path / "run"), progress=False)
    first.fit(resume=False)
    (tmp_path / "run" / "checkpoint.pt").unlink()
    Trainer(config, RunPaths(tmp_path / "run"), progress=False).fit(resume=True)
    assert list(pd.read_csv(tmp_path / "run" / "history.csv")["epoch"]) == [1]


def _grads(norm: float) -> list[torch.nn.Parameter]:
    """Two parameters whose gradients have the total 2-norm ``norm``."""
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(4))]
    params[0].grad = torch.tensor([3.0, 0.0, 0.0]) * norm / 5
    params[1].grad = torch.tensor([0.0, 4.0, 0.0, 0.0]) * norm / 5
    return params


def test_outlier_clipping_scales_only_steps_far_above_the_recent_median(monkeypatch):
    monkeypatch.setattr(train, "OUTLIER_WINDOW", 4)
    params = _grads(1.0)
    norms = GradientNorms(params, outliers=10.0)

    def step(norm: float) -> float:
        for p, g in zip(params, _grads(norm)):
            p.grad = g.grad
        measured = norms()
        after = torch.nn.utils.get_total_norm([p.grad for p in params]).item()
        assert measured == pytest.approx(norm)
        return after

    # no bound before a full window, however large the norm
    assert step(100.0) == pytest.approx(100.0)
    for n in (1.0, 2.0, 3.0):
        assert step(n) == pytest.approx(n)
    # window (100, 1, 2, 3): median 2.5, bound 25
    assert step(24.0) == pytest.approx(24.0)
    # window (1, 2, 3, 24): median 2.5 -> 30 is clipped to 25, its direction kept
    assert step(30.0) == pytest.approx(25.0)
    assert params[0].grad[0] / params[1].grad[1] == pytest.approx(0.75)
    # the window holds the last norms as measured, before clipping
    assert norms.recent == [2.0, 3.0, 24.0, 30.0]
    assert norms.clipped == [5]
    median, largest, clipped = norms.end_epoch()
    assert (median, largest, clipped) == (13.5, 100.0, 1)  # the epoch's six norms
    assert norms.end_epoch()[2] == 0  # a new epoch counts afresh

    unclipped = GradientNorms(params, outliers=None)
    for _ in range(5):
        unclipped()
    for p, g in zip(params, _grads(1e6)):
        p.grad = g.grad
    unclipped()
    assert torch.nn.utils.get_total_norm([p.grad for p in params]).item() == pytest.approx(1e6)
    assert unclipped.clipped == []
