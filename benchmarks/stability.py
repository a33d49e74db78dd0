"""Where do the training loss's spikes come from? A published run replayed with each step's gradient norm.

Under the default profile's recipe (AdamW at 3e-3 after half an epoch of warm-up, bf16
autocast, batch 16, no gradient clipping) the training loss of several published runs
jumps from one epoch to the next: 5f00b0dcbf73 from 5.17 to 7.66 at epoch 9,
26bad41135fa from 4.57 to 11.69 at epoch 23 (its validation mAP fell from 0.40 to 0.05).

This script trains a published run's own configuration (the same seed: the same initial
weights, images, order and augmentation draws) for ``--epochs`` epochs and records the
total gradient norm of every step. It checks its epoch losses against the run's
published ``history.csv``: equal losses mean the replay is the published run step for
step. With ``--clip-outliers K`` the replay trains under ``train.clip_outliers: K`` (a
step whose gradient norm exceeds K times the median of the previous 50 steps' norms is
clipped to that bound; every other step is left alone), so it stays the published run
until its first clipped step, and what follows shows what those outlier steps did.

    python benchmarks/stability.py results/default/runs/5f00b0dcbf73 --epochs 10 \\
        --json results/benchmarks/stability-cpu-2core.json
    python benchmarks/stability.py results/default/runs/5f00b0dcbf73 --epochs 10 --clip-outliers 5

With ``--survey`` it trains nothing: it records each given run's loss jumps (the study's
rule, ``ssdstudy.results.loss_jumps``), validation curve and test mAP, with the commit
its files are published at, so that runs of a recipe the study no longer uses stay on
record when their folders leave ``results/``:

    python benchmarks/stability.py --survey results/default/runs/* --json ...

Measured with nothing else running; the figures are the losses and norms, not times.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

from ssdstudy import provenance
from ssdstudy.results import loss_jumps, run_label
from ssdstudy.runs import RunPaths, read_config
from ssdstudy.train import OUTLIER_WINDOW, Trainer, flush_denormals


def survey(runs: list[Path]) -> list[dict]:
    """Each run's recipe, loss jumps, validation curve and test mAP (see the module's text)."""
    commit = provenance.collect("cpu").get("git", {}).get("commit")
    out = []
    for run in runs:
        history = pd.read_csv(run / "history.csv")
        config = yaml.safe_load((run / "config.yaml").read_text())
        made = json.loads((run / "provenance.json").read_text())
        val = history.dropna(subset=["val_voc07_map"])
        out.append({
            "run": run.name, "label": run_label(config), "trained_at_commit": made["git"]["commit"],
            "files_at_commit": commit, "folder": str(run), "epochs": int(history["epoch"].max()),
            "clip_outliers": config["train"].get("clip_outliers"),
            "test_voc07_map": json.loads((run / "metrics.json").read_text())["voc07_map"],
            "loss_jumps": loss_jumps(history),
            "loss": [round(float(v), 4) for v in history["loss"]],
            "val_voc07_map": {int(e): round(float(v), 4) for e, v in zip(val["epoch"], val["val_voc07_map"])},
        })
        jumps = ", ".join(f"epoch {j['epoch']} ({j['before']:.2f} to {j['after']:.2f})" for j in out[-1]["loss_jumps"])
        print(f"{run.name}  {out[-1]['label']}: {len(out[-1]['loss_jumps'])} jumps{': ' + jumps if jumps else ''}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="+", help="a published run's folder (its config.yaml and history.csv)")
    parser.add_argument("--survey", action="store_true",
                        help="train nothing: record the given runs' loss jumps, curves and test mAP")
    parser.add_argument("--epochs", type=int, default=10, help="epochs to replay")
    parser.add_argument("--clip-outliers", type=float, default=None, metavar="K",
                        help=f"clip a step's gradient norm to K x the median of the previous {OUTLIER_WINDOW} steps'")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--json", help="add this replay's figures to this file (a list of replays)")
    args = parser.parse_args(argv)
    if args.survey:
        runs = survey([Path(r) for r in args.run])
        if args.json:
            path = Path(args.json)
            data = json.loads(path.read_text())
            data["surveyed_runs"] = runs
            path.write_text(json.dumps(data, indent=1) + "\n")
        return 0
    if len(args.run) != 1:
        parser.error("a replay takes one run's folder")

    flush_denormals()  # as a run's process does, before torch starts its threads
    run = Path(args.run[0])
    config = read_config(run / "config.yaml")
    if args.clip_outliers:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, clip_outliers=args.clip_outliers))
    published = pd.read_csv(run / "history.csv")
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, RunPaths(Path(tmp)), progress=not args.quiet)
        log = trainer.norms
        rows = []
        start = time.perf_counter()
        for epoch in range(args.epochs):
            stats = trainer.train_epoch(epoch)
            norms = log.measured[epoch * trainer.steps_per_epoch:(epoch + 1) * trainer.steps_per_epoch]
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
        "run": run.name, "epochs": args.epochs, "clip_outliers": args.clip_outliers, "window": OUTLIER_WINDOW,
        "steps_per_epoch": trainer.steps_per_epoch, "first_clipped_step": first_clip,
        "clipped_steps": log.clipped, "epochs_table": rows,
        "step_norms": [round(n, 4) for n in log.measured], "wall_minutes": round(minutes, 1),
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
