"""Shared fixtures: a small generated dataset, made once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory) -> Path:
    """A generated VOC-layout dataset: 32 training and 16 test images."""
    from ssdstudy.data.synth import generate

    root = tmp_path_factory.mktemp("tiny") / "synth"
    generate(root, train=32, test=16, seed=3, progress=False, workers=1)
    return root


@pytest.fixture
def tiny_run_yaml(tiny_synth, tmp_path) -> Path:
    """A run parameter file over ``tiny_synth``: MobileNetV1 x0.25 at 96 px, 2 epochs."""
    path = tmp_path / "run.yaml"
    path.write_text(
        f"data: {{root: {tiny_synth}, synth: null}}\n"
        "model: {backbone: mobilenet_v1, width: 0.25, image_size: 96}\n"
        "train: {epochs: 2, batch_size: 8, lr: 0.01, device: cpu}\n"
        # memory takes two fresh processes per run: measured by the tests that check it
        "timing: {images: 3, warmup: 1, throughput_batch: 2, devices: [cpu], memory: false}\n"
    )
    return path


@pytest.fixture(autouse=True)
def _no_flushed_denormals():
    """A test that trains in-process may call flush_denormals(); the next test gets the
    process's normal arithmetic back (hypothesis refuses to draw floats under FTZ)."""
    import torch

    yield
    torch.set_flush_denormal(False)
