"""Training: SGD with momentum or AdamW, warm-up and a multi-step or cosine schedule,
optional clipping of outlier gradient steps (:class:`GradientNorms`), checkpoints every
epoch, a per-epoch history (with each epoch's gradient norms), and resumption that
reaches the same result as an uninterrupted run.

Reproducibility: every epoch re-seeds the global RNGs and the data-loader generator
from ``(seed, epoch)``, so epoch ``k`` sees the same shuffling and augmentation whether
it follows epoch ``k - 1`` in the same process or a resumed one; the checkpoint needs
no RNG state and holds plain tensors and data only (it loads with ``weights_only``).
On the CPU the same seed gives the same run; on a GPU non-deterministic kernels may
differ slightly.

Several processes (``torchrun``, see :mod:`ssdstudy.distributed`) train one run with
DistributedDataParallel: each process reads its shard of the epoch's shuffle, the global
batch stays ``train.batch_size`` and only the first process writes files. In a single
process all of that is a no-op: the run computes what it computed before.
"""

from __future__ import annotations

import csv
import math
import os
import random
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ssdstudy import distributed, provenance
from ssdstudy.augment import build_transform
from ssdstudy.boxes import match
from ssdstudy.config import RunConfig
from ssdstudy.data import DetectionDataset, collate
from ssdstudy.errors import UserError
from ssdstudy.files import atomic_path
from ssdstudy.loss import MultiBoxLoss
from ssdstudy.model import build_from_config, load_weights
from ssdstudy.runs import RunPaths, write_config
from ssdstudy.workspace import Workspace, resolve_device


def flush_denormals() -> bool:
    """Flush denormal floats to zero (FTZ/DAZ) in this process; call it at the start of a
    training process, before torch has started its threads. Returns whether the CPU
    supports it.

    AdamW's second-moment estimates of rarely updated weights decay into denormals (15 %
    of them by epoch 20 of the training benchmark), and arithmetic on a denormal is far
    slower: an AdamW step over 8 M denormal states took 156 ms against 28 ms with
    flushing (2 cores). The setting is per thread and OpenMP's worker threads copy it
    when they are created: set after torch's first parallel operation it changed
    nothing (157 ms). Values below 1.2e-38 become zero. ``ssdstudy train``, the run
    notebook and the training benchmark call it first thing; a library import does not,
    because it changes the process's arithmetic (hypothesis, for one, refuses to draw
    floats under it).
    """
    return bool(torch.set_flush_denormal(True))

HISTORY_FIELDS = (
    "epoch", "loss", "loc_loss", "cls_loss", "lr", "epoch_seconds", "images_per_s", "val_voc07_map",
    "grad_norm_median", "grad_norm_max", "clipped_steps",
)

#: Steps whose median gradient norm bounds the next step's under ``train.clip_outliers``.
OUTLIER_WINDOW = 50


class GradientNorms:
    """Each optimiser step's total gradient norm (2-norm over all parameters) and, with
    ``outliers`` set, the clipping of an outlier step: a step whose norm exceeds
    ``outliers`` times the median of the previous :data:`OUTLIER_WINDOW` steps' norms is
    scaled down to that bound; every other step is left as it is (so a run clipped this
    way is the unclipped run until its first outlier). The bound follows the scale of
    each backbone's gradients, which a fixed ``max_norm`` would not (AutoClip, Seetharaman
    et al. 2020, bounds by a percentile of the norms seen so far for the same reason).

    The norms of the window are part of the checkpoint, so a resumed run clips as the
    uninterrupted one does."""

    def __init__(self, params: list[torch.nn.Parameter], outliers: float | None):
        self.params = [p for p in params if p.requires_grad]
        self.outliers = outliers
        self.recent: list[float] = []  # the last OUTLIER_WINDOW norms, before clipping
        self.epoch_norms: list[float] = []
        self.epoch_clipped = 0
        self.measured: list[float] = []  # every norm this object measured, in order
        self.clipped: list[int] = []  # the indices in ``measured`` of the clipped steps

    def bound(self) -> float | None:
        """The norm above which the next step is clipped (None: no bound yet)."""
        if not self.outliers or len(self.recent) < OUTLIER_WINDOW:
            return None
        return self.outliers * float(np.median(self.recent))

    def __call__(self) -> float:
        """Measure (and clip, if an outlier) the gradients now held; returns the norm before clipping."""
        grads = [p.grad for p in self.params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads)
        value = float(norm)
        bound = self.bound()
        if bound is not None and value > bound:
            torch.nn.utils.clip_grads_with_norm_(self.params, bound, norm)
            self.epoch_clipped += 1
            self.clipped.append(len(self.measured))
        self.recent = [*self.recent, value][-OUTLIER_WINDOW:]
        self.epoch_norms.append(value)
        self.measured.append(value)
        return value

    def end_epoch(self) -> tuple[float, float, int]:
        """The epoch's median and largest norm and its clipped steps; starts the next epoch."""
        norms = self.epoch_norms or [float("nan")]
        out = float(np.median(norms)), float(np.max(norms)), self.epoch_clipped
        self.epoch_norms, self.epoch_clipped = [], 0
        return out


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


def _process_seed(seed: int, rank: int) -> int:
    """The seed of process ``rank`` of a distributed run (its augmentation draws differ
    from the other processes'); process 0, and a single process, keep ``seed``."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, np.uint64)[0] >> 1)


def _worker_init(worker_id: int) -> None:
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def lr_factor(config: RunConfig, step: int, steps_per_epoch: int) -> float:
    """The learning-rate multiplier after ``step`` optimiser steps (warm-up included)."""
    t = config.train
    epoch = step / steps_per_epoch
    if t.warmup_epochs > 0 and epoch < t.warmup_epochs:
        return (step + 1) / (t.warmup_epochs * steps_per_epoch)
    if t.scheduler == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(epoch / t.epochs, 1.0)))
    if t.scheduler == "multistep":
        return t.gamma ** sum(epoch >= m for m in t.milestones)
    return 1.0


@dataclass
class EpochStats:
    epoch: int
    loss: float
    loc_loss: float
    cls_loss: float
    lr: float
    epoch_seconds: float
    images_per_s: float
    val_voc07_map: float | None = None
    grad_norm_median: float | None = None
    grad_norm_max: float | None = None
    clipped_steps: int = 0


class Trainer:
    """Trains the model of one run in ``paths.root``; :meth:`fit` resumes if asked."""

    def __init__(self, config: RunConfig, paths: RunPaths, *, progress: bool = True):
        self.config = config
        self.paths = paths
        self.progress = progress
        self.device = resolve_device(config.train.device)
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        self.workspace = Workspace(config, progress=progress)
        seed_everything(config.train.seed)
        self.model = build_from_config(config.model, num_classes=len(self.workspace.class_names) + 1)
        if config.model.pretrained:
            load_weights(self.model, config.model.pretrained)
        # channels-last convolutions train about a third faster on CPUs (oneDNN)
        self.model.to(self.device, memory_format=torch.channels_last)
        # several processes (torchrun): DDP around the model, which stays self.model
        self.network = distributed.wrap(self.model, self.device)
        self.transform = build_transform(
            True, config.model.image_size, self.model.mean, self.model.std,
            config.augment,
        )
        self.dataset = DetectionDataset(self.workspace.train_records, self.transform)
        t = config.train
        if len(self.dataset) < t.batch_size:
            raise UserError(
                f"{config.data.root}: {len(self.dataset)} training images, fewer than train.batch_size={t.batch_size}"
            )
        self.steps_per_epoch = len(self.dataset) // t.batch_size
        # this process's share of the global batch; each gets len // processes images, so
        # the steps per epoch are the same as in a single process
        self.batch_size = distributed.per_process_batch(t.batch_size)
        if t.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(
                self.model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay
            )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(config, step, self.steps_per_epoch)
        )
        self.criterion = MultiBoxLoss(neg_pos_ratio=config.loss.neg_pos_ratio)
        self.norms = GradientNorms(list(self.model.parameters()), t.clip_outliers)
        self.epoch = 0  # epochs finished
        self.compute_code = provenance.compute_code(backbone=config.model.backbone)

    # -- checkpoints -------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "format": "ssdstudy-checkpoint-1",
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "grad_norms": list(self.norms.recent),
            "config": self.config.to_dict(),
            "run_id": self.config.run_id,
            "compute_code": self.compute_code,
            "class_names": list(self.workspace.class_names),
            "backbone": self.config.model.backbone,
            "width": self.config.model.width,
            "image_size": self.config.model.image_size,
        }

    def save(self) -> None:
        with atomic_path(self.paths.checkpoint) as tmp:
            torch.save(self.state(), tmp)

    def restore(self) -> bool:
        """Load the last checkpoint of this run, if there is one; True when loaded."""
        if not self.paths.checkpoint.is_file():
            if distributed.is_main():
                # a kill between the history and the checkpoint of the first epoch left a row
                _truncate_history(self.paths.history, 0)
            return False
        state = torch.load(self.paths.checkpoint, map_location=self.device, weights_only=True)
        if state.get("run_id") != self.config.run_id:
            raise UserError(
                f"{self.paths.checkpoint}: checkpoint of run {state.get('run_id')}, not of {self.config.run_id}"
            )
        if state.get("compute_code") != self.compute_code:
            # never continue a run with other code than it started with: start it again
            warnings.warn(
                f"{self.paths.checkpoint}: made by other code (compute code {state.get('compute_code')}, "
                f"now {self.compute_code}); the run starts again from epoch 1", stacklevel=2,
            )
            self.paths.checkpoint.unlink()
            self.paths.history.unlink(missing_ok=True)
            return False
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.norms.recent = [float(v) for v in state.get("grad_norms", [])]
        self.epoch = int(state["epoch"])
        if distributed.is_main():
            _truncate_history(self.paths.history, self.epoch)
        return True

    # -- the loop ------------------------------------------------------------------------
    def loader(self, epoch: int) -> DataLoader:
        generator = torch.Generator().manual_seed(
            _process_seed(_epoch_seed(self.config.train.seed, epoch), distributed.rank()))
        workers = self.config.train.workers
        # several processes: this one's shard of a shuffle seeded as the generator
        sampler = distributed.sampler(self.dataset, _epoch_seed(self.config.train.seed, 0), epoch)
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            drop_last=True,
            collate_fn=collate,
            num_workers=workers,
            worker_init_fn=_worker_init if workers else None,
            generator=generator,
            persistent_workers=False,
            pin_memory=self.device.type == "cuda",
        )

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        size = float(self.config.model.image_size)
        priors = self.model.priors
        for images, targets in self.loader(epoch):
            boxes = [torch.as_tensor(t["boxes"], dtype=torch.float32) / size for t in targets]
            labels = [torch.as_tensor(t["labels"], dtype=torch.int64) for t in targets]
            loc_t, cls_t = match(boxes, labels, priors.cpu(), self.config.loss.iou_threshold)
            yield (
                images.to(self.device, non_blocking=True, memory_format=torch.channels_last),
                loc_t.to(self.device, non_blocking=True),
                cls_t.to(self.device, non_blocking=True),
            )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's outputs in fp32, the network run in ``train.precision``."""
        bf16 = self.config.train.precision == "bf16"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            locs, logits = self.network(images)
        return locs.float(), logits.float()

    def train_epoch(self, epoch: int) -> EpochStats:
        seed_everything(_process_seed(_epoch_seed(self.config.train.seed, epoch), distributed.rank()))
        self.network.train()
        sums = np.zeros(3)
        n_images = 0
        start = time.perf_counter()
        bar = tqdm(
            self.batches(epoch), total=self.steps_per_epoch, disable=not (self.progress and distributed.is_main()),
            desc=f"epoch {epoch + 1}/{self.config.train.epochs}", unit="batch", leave=False,
        )
        for images, loc_t, cls_t in bar:
            locs, logits = self.forward(images)
            loc_loss, cls_loss = self.criterion(locs, logits, loc_t, cls_t)
            loss = loc_loss + cls_loss
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch + 1}: lower train.lr")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.norms()
            self.optimizer.step()
            self.scheduler.step()
            n = images.shape[0]
            n_images += n
            sums += n * np.array([loss.item(), loc_loss.item(), cls_loss.item()])
            elapsed = time.perf_counter() - start
            bar.set_postfix(
                loss=f"{sums[0] / n_images:.3f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}",
                img_s=f"{n_images / elapsed:.1f}",
            )
        seconds = time.perf_counter() - start
        sums, n_images = distributed.sum_over_processes(sums, n_images, self.device)  # the global batches'
        mean = sums / max(n_images, 1)
        norm_median, norm_max, clipped = self.norms.end_epoch()
        return EpochStats(
            epoch=epoch + 1, loss=float(mean[0]), loc_loss=float(mean[1]), cls_loss=float(mean[2]),
            lr=float(self.optimizer.param_groups[0]["lr"]), epoch_seconds=seconds,
            images_per_s=n_images / seconds if seconds > 0 else float("nan"),
            grad_norm_median=norm_median, grad_norm_max=norm_max, clipped_steps=clipped,
        )

    def throughput(self, steps: int = 5, warmup: int = 1) -> float:
        """Training images per second over ``steps`` optimiser steps (after ``warmup``),
        data loading and augmentation included; the model's weights change."""
        self.model.train()
        batches = self.batches(0)
        times = []
        for i in range(warmup + steps):
            start = time.perf_counter()
            try:
                images, loc_t, cls_t = next(batches)
            except StopIteration:
                break
            locs, logits = self.forward(images)
            loss = sum(self.criterion(locs, logits, loc_t, cls_t))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
        if not times:
            raise UserError("training throughput: not enough training images for one timed batch")
        return self.config.train.batch_size / float(np.median(times))

    def fit(self, *, resume: bool = True, validate: Callable[[torch.nn.Module], float] | None = None) -> list[EpochStats]:
        """Train to ``train.epochs``; with ``resume`` continue from the last checkpoint.

        ``validate(model) -> mAP`` (the validation split's) is called every
        ``train.eval_every`` epochs and after the last one. Ctrl-C leaves the last
        finished epoch's checkpoint in place and re-raises.
        """
        main = distributed.is_main()  # several processes: only the first writes files
        if main:
            self.paths.root.mkdir(parents=True, exist_ok=True)
            write_config(self.paths.config, self.config)
        if resume:
            distributed.on_main(self.restore)  # the first process mends the files first
            if not main:
                self.restore()
        elif main and self.paths.checkpoint.exists():
            self.paths.checkpoint.unlink()
            self.paths.history.unlink(missing_ok=True)
        stats = []
        total = self.config.train.epochs
        every = self.config.train.eval_every
        for epoch in tqdm(range(self.epoch, total), initial=self.epoch, total=total,
                          disable=not (self.progress and main), desc="training", unit="epoch"):
            s = self.train_epoch(epoch)
            if main and validate is not None and ((every and (epoch + 1) % every == 0) or epoch + 1 == total):
                s.val_voc07_map = float(validate(self.model))
                self.model.train()
            self.epoch = epoch + 1
            if main:
                # history first: a kill before the checkpoint only repeats this epoch on resume
                # (restore() drops history rows past the checkpoint), never leaves a gap
                _append_history(self.paths.history, s)
                self.save()
            stats.append(s)
        distributed.barrier()  # every process leaves with the last checkpoint written
        return stats


def _append_history(path: Path, stats: EpochStats) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=HISTORY_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(asdict(stats))
        fh.flush()
        os.fsync(fh.fileno())


def _truncate_history(path: Path, epochs: int) -> None:
    """Keep only the history rows of finished (checkpointed) epochs."""
    if not path.exists():
        return
    with open(path, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if int(r["epoch"]) <= epochs]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
