"""Where do the training loss's spikes come from? A published run replayed with each step's gradient norm.

Under the default profile's recipe (AdamW at 3e-3 after half an epoch of warm-up, bf16
autocast, batch 16, no gradient clipping) the training loss of several published runs
jumps from one epoch to the next: 5f00b0dcbf73 from 5.17 to 7.66 at epoch 9,
26bad41135fa from 4.57 to 11.69 at epoch 23 (its validation mAP fell from 0.40 to 0.05).

This script trains a published run's own configuration (the same seed: the same initial
weights, images, order and augmentation draws) for ``--epochs`` epochs and records the
total gradient norm of every step. It checks its epoch losses against the run's
published ``history.csv``: equal losses mean the replay is the published run step for
step. With ``--clip-outliers K`` a step whose gradient norm exceeds K times the median
of the previous 50 steps' norms is clipped to that bound; every other step is left
alone, so the replay stays the published run until its first clipped step, and what
follows shows what those outlier steps did to the loss.

    python benchmarks/stability.py results/default/runs/5f00b0dcbf73 --epochs 10 \\
        --json results/benchmarks/stability-cpu-2core.json
    python benchmarks/stability.py results/default/runs/5f00b0dcbf73 --epochs 10 --clip-outliers 5

Measured with nothing else running; the figures are the losses and norms, not times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from ssdstudy import provenance
from ssdstudy.runs import RunPaths, read_config
from ssdstudy.train import Trainer, flush_denormals

#: Steps whose median gradient norm bounds the next one with --clip-outliers.
WINDOW = 50


class NormLog:
    """Wraps an optimiser's ``step``: records each step's total gradient norm and, with
    ``outliers`` set, clips a step to ``outliers`` times the median of the previous
    :data:`WINDOW` norms."""

    def __init__(self, trainer: Trainer, outliers: float | None):
        self.params = [p for p in trainer.model.parameters() if p.requires_grad]
        self.outliers = outliers
        self.norms: list[float] = []
        self.clipped: list[int] = []  # step indices (0-based, over the whole replay)
        self._step = trainer.optimizer.step
        trainer.optimizer.step = self.step  # type: ignore[method-assign]

    def step(self, *args, **kwargs):
        grads = [p.grad for p in self.params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads)
        value = float(norm)
        if self.outliers and len(self.norms) >= WINDOW:
            bound = self.outliers * statistics.median(self.norms[-WINDOW:])
            if value > bound:
                torch.nn.utils.clip_grads_with_norm_(self.params, bound, norm)
                self.clipped.append(len(self.norms))
        self.norms.append(value)
        return self._step(*args, **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a published run's folder (its config.yaml and history.csv)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs to replay")
    parser.add_argument("--clip-outliers", type=float, default=None, metavar="K",
                        help=f"clip a step's gradient norm to K x the median of the previous {WINDOW} steps'")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--json", help="add this replay's figures to this file (a list of replays)")
    args = parser.parse_args(argv)

    flush_denormals()  # as a run's process does, before torch starts its threads
    run = Path(args.run)
    config = read_config(run / "config.yaml")
    published = pd.read_csv(run / "history.csv")
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, RunPaths(Path(tmp)), progress=not args.quiet)
        log = NormLog(trainer, args.clip_outliers)
        rows = []
        start = time.perf_counter()
        for epoch in range(args.epochs):
            stats = trainer.train_epoch(epoch)
            norms = log.norms[epoch * trainer.steps_per_epoch:(epoch + 1) * trainer.steps_per_epoch]
            before = published.loc[published["epoch"] == epoch + 1, "loss"]
            row = {
                "epoch": epoch + 1, "loss": stats.loss,
                "published_loss": float(before.iloc[0]) if len(before) else None,
                "median_norm": statistics.median(norms), "max_norm": max(norms),
                "max_norm_step": epoch * trainer.steps_per_epoch + norms.index(max(norms)),
                "clipped_steps": sum(1 for s in log.clipped
                                     if epoch * trainer.steps_per_epoch <= s < (epoch + 1) * trainer.steps_per_epoch),
            }
            rows.append(row)
            same = row["published_loss"] is not None and abs(row["loss"] - row["published_loss"]) < 1e-6
            print(f"epoch {row['epoch']:3d}  loss {row['loss']:.4f}  published {row['published_loss']:.4f}"
                  f" ({'same' if same else 'differs'})  gradient norm median {row['median_norm']:.3g}"
                  f" max {row['max_norm']:.3g} (step {row['max_norm_step']})  clipped {row['clipped_steps']}",
                  flush=True)
        minutes = (time.perf_counter() - start) / 60
    first_clip = log.clipped[0] if log.clipped else None
    replay = {
        "run": run.name, "epochs": args.epochs, "clip_outliers": args.clip_outliers, "window": WINDOW,
        "steps_per_epoch": trainer.steps_per_epoch, "first_clipped_step": first_clip,
        "clipped_steps": log.clipped, "epochs_table": rows,
        "step_norms": [round(n, 4) for n in log.norms], "wall_minutes": round(minutes, 1),
        "provenance": provenance.collect("cpu", seed=config.train.seed),
    }
    print(f"{len(log.clipped)} steps clipped; first: {first_clip}; {minutes:.1f} min")
    if args.json:
        path = Path(args.json)
        data = json.loads(path.read_text()) if path.is_file() else {
            "benchmark": "benchmarks/stability.py",
            "machine": "2 CPU cores (Intel Xeon with AMX), nothing else running", "replays": []}
        data["replays"].append(replay)
        path.write_text(json.dumps(data, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
