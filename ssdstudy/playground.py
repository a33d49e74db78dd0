"""A detector to try when a run's checkpoint is not at hand.

Published runs carry no checkpoint (results/default/runs/ holds every file but it).
The playground notebook then trains the run's own configuration for a few epochs, in
``results/playground/<run id>/`` (resumed if interrupted, found again next time): a
model that detects the larger objects, in a few minutes on a CPU. It is not the
published model, and the notebook says so.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ssdstudy.runs import RESULTS, RunPaths, read_config


def quick_checkpoint(run_dir: str | Path, epochs: int = 2, results: Path | None = None,
                     progress: bool = True) -> Path:
    """The run's checkpoint if it exists; else that of its configuration trained for
    ``epochs`` epochs (learning rate held, no validation) under ``results/playground/``."""
    from ssdstudy.train import Trainer

    paths = RunPaths(Path(run_dir))
    if paths.checkpoint.is_file():
        return paths.checkpoint
    config = read_config(paths.config)
    config = dataclasses.replace(config, train=dataclasses.replace(
        config.train, epochs=epochs, eval_every=0, scheduler="constant", milestones=[]))
    quick = RunPaths((results or RESULTS) / "playground" / paths.root.name)
    Trainer(config, quick, progress=progress).fit(resume=True)
    return quick.checkpoint


__all__ = ["quick_checkpoint"]
