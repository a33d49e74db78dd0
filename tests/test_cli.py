"""The ``ssdstudy`` command: one clear line for each user error, and the run commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssdstudy.cli import build_parser, main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ssdstudy.cli", *args], capture_output=True, text=True)


def one_clear_line(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("ssdstudy: error")]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_every_subcommand_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"data", "train", "eval", "bench", "detect", "study"} <= set(sub.choices)
    for name in sub.choices:
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0


def test_bad_parameter_file_names_field(tmp_path):
    params = tmp_path / "bad.yaml"
    params.write_text("model: {backbone: mobilenet_v1, width: two}\n")
    one_clear_line(run_cli("train", str(params)), str(params), "model.width")


def test_unknown_backbone_is_one_line(tmp_path):
    params = tmp_path / "bad.yaml"
    params.write_text("model: {backbone: resnet50}\ndata: {synth: null, root: /nonexistent}\n")
    one_clear_line(run_cli("train", str(params)), "resnet50")


def test_missing_checkpoint(tmp_path, tiny_synth):
    missing = tmp_path / "nope.pt"
    one_clear_line(run_cli("eval", "--data", str(tiny_synth), "--checkpoint", str(missing)), str(missing), "no such checkpoint")
    one_clear_line(run_cli("detect", str(missing), "x.jpg", "--out", str(tmp_path)), "no such checkpoint")


def test_checkpoint_of_another_architecture(tmp_path, tiny_synth):
    from ssdstudy.config import RunConfig
    from ssdstudy.model import build_model

    config = RunConfig()
    config.model.backbone = "mobilenet_v1"
    vgg = build_model("vgg16", 9, image_size=96)
    fake = tmp_path / "mixed.pt"
    torch.save({"model": vgg.state_dict(), "config": config.to_dict(), "class_names": ["a"] * 8}, fake)
    one_clear_line(run_cli("eval", "--data", str(tiny_synth), "--checkpoint", str(fake)), str(fake), "does not fit mobilenet_v1")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    one_clear_line(run_cli("eval", "--data", str(tiny_synth), "--checkpoint", str(garbage)), str(garbage))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_synth) -> Path:
    """One tiny finished run through ``ssdstudy train``."""
    tmp = tmp_path_factory.mktemp("trained")
    params = tmp / "run.yaml"
    params.write_text(
        f"data: {{root: {tiny_synth}, synth: null}}\n"
        "model: {backbone: mobilenet_v1, width: 0.25, image_size: 96}\n"
        "train: {epochs: 1, batch_size: 8, device: cpu}\n"
        "timing: {images: 3, warmup: 1, throughput_batch: 2, devices: [cpu]}\n"
    )
    assert main(["train", str(params), "--run-dir", str(tmp / "run"), "--no-progress"]) == 0
    return tmp / "run"


def test_train_writes_every_result_file(trained):
    for name in ("config.yaml", "history.csv", "checkpoint.pt", "metrics.json", "outcomes.npz", "timing.json",
                 "provenance.json"):
        assert (trained / name).is_file(), name
    from ssdstudy.evaluate.bootstrap import Outcomes

    metrics = json.loads((trained / "metrics.json").read_text())
    outcomes = Outcomes.load(trained / "outcomes.npz")
    assert outcomes.num_images == metrics["images"]
    assert outcomes.voc07_map()[0] == pytest.approx(metrics["voc07_map"], abs=1e-9)
    low, high = metrics["voc07_map_interval"]
    assert 0.0 <= low <= high <= 1.0
    prov = json.loads((trained / "provenance.json").read_text())
    for key in ("git", "python", "torch", "torchvision", "ssdstudy", "device_name", "cpu", "threads", "seed"):
        assert key in prov
    timing = json.loads((trained / "timing.json").read_text())
    assert timing["cpu"]["inference_ms"]["median"] > 0
    assert timing["cpu"]["prediction_ms"]["n"] == 3
    memory = timing["cpu"]["memory"]  # the run's training step (batch 8) and prediction, in fresh processes
    assert "error" not in memory and memory["train"]["batch_size"] == 8 and memory["train"]["image_size"] == 96
    assert memory["train_peak_mb"] > memory["predict_peak_mb"] > 0


def test_train_refuses_to_overwrite_without_resume(trained, capsys):
    assert main(["train", str(trained / "config.yaml"), "--run-dir", str(trained)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_a_refused_resume_leaves_the_folder_as_it_was(trained, tmp_path, capsys):
    """Other parameters than the folder's run: refused before anything is written."""
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(trained, folder)
    before = (folder / "config.yaml").read_text()
    other = tmp_path / "other.yaml"
    other.write_text(before.replace("epochs: 1", "epochs: 2"))
    assert main(["train", str(other), "--run-dir", str(folder), "--resume"]) == 2
    assert "holds run" in capsys.readouterr().err
    assert (folder / "config.yaml").read_text() == before


def test_restart_removes_only_the_runs_own_files(trained, tmp_path):
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(trained, folder)
    (folder / "notes.txt").write_text("mine")
    assert main(["train", str(folder / "config.yaml"), "--run-dir", str(folder), "--restart", "--no-progress"]) == 0
    assert (folder / "notes.txt").read_text() == "mine"
    assert (folder / "metrics.json").is_file()


def test_eval_checkpoint_json(trained, tiny_synth, capsys):
    assert main(["eval", "--data", str(tiny_synth), "--split", "test", "--checkpoint", str(trained / "checkpoint.pt"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("voc07_map", "voc_map", "ap_per_class", "coco", "size_bins"):
        assert key in result
    assert 0.0 <= result["voc07_map"] <= 1.0


def test_eval_detections_file_perfect_detector(tmp_path, tiny_synth, capsys):
    from ssdstudy.data import load_split, read_class_names

    names = read_class_names(tiny_synth)
    dets = [
        {"image_id": r.image_id, "label": names[int(label) - 1], "bbox": [float(v) for v in box], "score": 0.9}
        for r in load_split(tiny_synth, "test")
        for box, label in zip(r.boxes, r.labels)
    ]
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(dets))
    assert main(["eval", "--data", str(tiny_synth), "--detections", str(path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["voc07_map"] == pytest.approx(1.0)
    assert result["voc_map"] == pytest.approx(1.0)


def test_eval_difficult_ignored_by_default_dropped_on_request(tmp_path, tiny_synth, capsys):
    """A detector that also finds the difficult objects: VOC's rule ignores those hits
    (mAP stays 1); with --difficult drop they are false positives ranked first."""
    from ssdstudy.data import load_split, read_class_names

    names = read_class_names(tiny_synth)
    records = load_split(tiny_synth, "test", keep_difficult=True)
    assert any(r.difficult.any() for r in records), "the fixture's test split should hold difficult objects"
    dets = [
        {"image_id": r.image_id, "label": names[int(label) - 1], "bbox": [float(v) for v in box],
         "score": 0.95 if hard else 0.9}
        for r in records
        for box, label, hard in zip(r.boxes, r.labels, r.difficult)
    ]
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(dets))
    scores = {}
    for rule in ("ignore", "drop"):
        assert main(["eval", "--data", str(tiny_synth), "--detections", str(path), "--difficult", rule, "--json"]) == 0
        scores[rule] = json.loads(capsys.readouterr().out)["voc07_map"]
    assert scores["ignore"] == pytest.approx(1.0)
    assert scores["drop"] < 0.99


def test_detect_draws_boxes(trained, tiny_synth, tmp_path):
    from PIL import Image

    image = sorted((tiny_synth / "SYNTH" / "JPEGImages").glob("test_*.jpg"))[0]
    out = tmp_path / "drawn"
    assert main(["detect", str(trained / "checkpoint.pt"), str(image), "--out", str(out), "--threshold", "0"]) == 0
    png = out / f"{image.stem}.png"
    assert png.is_file()
    drawn = Image.open(png)
    assert drawn.width > 100 and drawn.height > 100


def test_detect_unreadable_image(trained, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really")
    one_clear_line(run_cli("detect", str(trained / "checkpoint.pt"), str(bad), "--out", str(tmp_path)), str(bad))


def test_bench_writes_a_hardware_file_with_each_backbones_training_set(tmp_path, tiny_synth, monkeypatch):
    """`ssdstudy bench` times each backbone and derives its epoch time from the training
    images that backbone's runs use (the profile's study.backbones layer included)."""
    from ssdstudy import config, study

    profiles = tmp_path / "parameters" / "profiles"
    profiles.mkdir(parents=True)
    (profiles / "benchtest.yaml").write_text(
        "study:\n  backbones:\n    vgg16: {data: {max_train_images: 16}}\n"
        f"data: {{root: {tiny_synth}, synth: null}}\n"
        "model: {image_size: 96}\n"
        "train: {batch_size: 4, device: cpu}\n"
        "timing: {images: 2, warmup: 1, throughput_batch: 2, devices: [cpu]}\n"
    )
    monkeypatch.setattr(config, "PARAMETERS", tmp_path / "parameters")
    monkeypatch.setattr(study, "PARAMETERS", tmp_path / "parameters")
    out = tmp_path / "machine.json"
    assert main(["bench", "--profile", "benchtest", "--devices", "cpu", "--train-steps", "1", "--backbones", "vgg16",
                 "mobilenet_v1", "--width", "0.25", "--machine", "test-box", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["machine"] == "test-box" and result["profile"] == "benchtest"
    entries = {e["backbone"]: e for e in result["entries"]}
    assert set(entries) == {"vgg16", "mobilenet_v1"}
    assert entries["vgg16"]["train_images"] == 16
    assert entries["mobilenet_v1"]["train_images"] == 32
    assert entries["mobilenet_v1"]["width"] == 0.25
    for e in entries.values():
        assert e["image_size"] == 96
        assert e["timing"]["images"] == 2
        assert e["timing"]["prediction_ms"]["median"] > 0 and e["timing"]["inference_ms"]["median"] > 0
        assert e["epoch_seconds"] == pytest.approx(e["train_images"] / e["train_images_per_s"])
        # the memory of a training step at the profile's batch and of a prediction, in fresh processes
        memory = e["timing"]["memory"]
        assert "error" not in memory and memory["train"]["batch_size"] == 4
        assert memory["train_peak_mb"] > memory["predict_peak_mb"] > memory["params_mb"] > 0


def test_study_run_of_a_run_not_in_the_plan_is_one_line(capsys):
    assert main(["study", "run", "--profile", "smoke", "--runs", "0123456789ab"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "smoke.yaml: no run 0123456789ab" in err


def test_bench_times_the_profiles_trained_model_when_its_checkpoint_is_here(tmp_path, tiny_synth, monkeypatch):
    """`ssdstudy bench` times the profile's run of a backbone from its checkpoint; without
    the checkpoint (published runs carry none) random weights, and the file says which."""
    from ssdstudy import config, study
    from ssdstudy.model import build_model
    from ssdstudy.workspace import Workspace

    params = tmp_path / "parameters"
    (params / "profiles").mkdir(parents=True)
    (params / "experiments").mkdir()
    (params / "profiles" / "benchtest.yaml").write_text(
        "study: {experiments: [hardware]}\n"
        f"data: {{root: {tiny_synth}, synth: null}}\n"
        "model: {image_size: 96}\n"
        "train: {batch_size: 4, device: cpu}\n"
        "timing: {images: 2, warmup: 0, throughput_batch: 2, devices: [cpu]}\n"
    )
    (params / "experiments" / "hardware.yaml").write_text(
        "experiment: {title: Hardware}\nruns:\n  - model: {backbone: mobilenet_v1, width: 0.25}\n")
    monkeypatch.setattr(config, "PARAMETERS", params)
    monkeypatch.setattr(study, "PARAMETERS", params)
    cfg = study.read_experiment("hardware", config.read_profile("benchtest")).runs[0]
    run_dir = tmp_path / "results" / "benchtest" / "runs" / cfg.run_id
    run_dir.mkdir(parents=True)
    # a "trained" model that is sure every box is background: nothing enters NMS
    classes = Workspace(cfg).class_names
    model = build_model("mobilenet_v1", len(classes) + 1, width=0.25, image_size=96)
    with torch.no_grad():
        for head in model.cls_heads:
            head.weight.zero_()
            head.bias.fill_(-20.0)
            head.bias[:: len(classes) + 1] = 20.0
    torch.save({"config": cfg.to_dict(), "model": model.state_dict(), "class_names": list(classes)},
               run_dir / "checkpoint.pt")

    def bench(out):
        assert main(["bench", "--profile", "benchtest", "--backbones", "mobilenet_v1", "--width", "0.25",
                     "--devices", "cpu", "--threads", "1", "--train-steps", "0", "--results", str(tmp_path / "results"),
                     "--no-memory", "--out", str(out)]) == 0
        result = json.loads(out.read_text())
        assert result["profile"] == "benchtest" and result["image_size"] == 96 and "busy" in result["busy_rule"]
        (entry,) = result["entries"]
        assert entry["run_id"] == cfg.run_id and entry["image_size"] == 96
        assert {"busy", "busy_reasons", "load"} <= set(entry["timing"]) and "memory" not in entry["timing"]
        return entry

    trained = bench(tmp_path / "trained.json")
    assert trained["weights"] == f"trained (run {cfg.run_id})" and trained["trained"] is True
    assert trained["timing"]["nms_candidates"] == 0 and trained["timing"]["detections"] == 0
    assert "postprocess_worst_case" not in trained

    (run_dir / "checkpoint.pt").unlink()
    random = bench(tmp_path / "random.json")
    assert random["weights"] == f"random (no checkpoint of run {cfg.run_id} here)"
    assert random["trained"] is False and random["postprocess_worst_case"] is True
    assert random["timing"]["nms_candidates"] > 0


def test_study_run_needs_a_positive_worker_count(capsys):
    from ssdstudy.cluster import threads_per_worker

    assert main(["study", "run", "--profile", "smoke", "--workers", "0"]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err
    assert threads_per_worker(10**6) == 1


def test_study_run_needs_a_positive_process_count_on_one_machine(capsys):
    assert main(["study", "run", "--profile", "smoke", "--nproc-per-node", "0"]) == 2
    assert "--nproc-per-node must be at least 1" in capsys.readouterr().err
    assert main(["study", "run", "--profile", "smoke", "--nproc-per-node", "2", "--workers", "2"]) == 2
    assert "does not combine with --workers" in capsys.readouterr().err
