"""The dataset and device a run works with, resolved from its configuration.

Relative data paths resolve as :func:`ssdstudy.paths.resolve_path` says. The generated
default dataset is written on first use when the configuration asks for it
(``data.synth``) and ``data.root`` does not exist.
"""

from __future__ import annotations

import random
from functools import cached_property

import torch

from ssdstudy.config import RunConfig
from ssdstudy.errors import UserError
from ssdstudy.paths import PROJECT, resolve_path  # noqa: F401 - PROJECT re-exported


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then the CPU; a named device must be present."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"train.device: unknown device {name!r} (use auto, cpu, cuda or mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device: cuda was asked for but no CUDA device is present")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("train.device: mps was asked for but MPS is not available")
    return device


def available_devices() -> list[str]:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


class Workspace:
    """The records of a run's training and test splits and its class names."""

    def __init__(self, config: RunConfig, *, progress: bool = True):
        self.config = config
        self.root = resolve_path(config.data.root)
        self.progress = progress
        self.ensure_data()

    def ensure_data(self) -> None:
        """Write (or finish, or bring up to date) the generated dataset when asked for;
        a folder that is not a generated dataset (a VOCdevkit) is never touched."""
        from ssdstudy.data.synth import YEAR_DIR, generate

        synth = self.config.data.synth
        generated = not self.root.exists() or (self.root / YEAR_DIR).is_dir()
        if synth is None or not generated:
            if not self.root.exists():
                raise UserError(
                    f"data.root: {self.root} does not exist; it should hold VOC2007/ (and VOC2012/) with "
                    "Annotations/, ImageSets/Main/ and JPEGImages/ (see data/README.md), or set data.synth "
                    "to generate the synthetic dataset there"
                )
            return

        generate(self.root, train=synth.train, test=synth.test, seed=synth.seed, progress=self.progress)

    @cached_property
    def class_names(self) -> tuple[str, ...]:
        from ssdstudy.data import read_class_names

        return tuple(read_class_names(self.root))

    def _records(self, split: str, years: list[str] | None, limit: int | None, keep_difficult: bool) -> list:
        from ssdstudy.data import load_split

        records = load_split(
            self.root, split, years=years, class_names=self.class_names,
            keep_difficult=keep_difficult, on_error=self.config.data.on_error,
        )
        return records[:limit] if limit else records

    @cached_property
    def _train_split(self) -> list:
        """The whole training split as training reads it (read once, then divided)."""
        d = self.config.data
        return self._records(d.train_split, d.train_years, None, d.keep_difficult)

    @cached_property
    def _val_ids(self) -> frozenset[str]:
        """Ids of the training split's images held out for validation (seeded choice)."""
        d = self.config.data
        if not d.val_images:
            return frozenset()
        records = self._train_split
        if d.val_images >= len(records):
            raise UserError(
                f"data.val_images: {d.val_images} validation images asked for, but the training split "
                f"of {self.root} has only {len(records)}"
            )
        chosen = random.Random(d.val_seed).sample(range(len(records)), d.val_images)
        return frozenset(records[i].image_id for i in chosen)

    @cached_property
    def train_records(self) -> list:
        """The training split less the validation images, then cut to ``max_train_images``."""
        d = self.config.data
        held_out = self._val_ids
        records = [r for r in self._train_split if r.image_id not in held_out]
        return records[: d.max_train_images] if d.max_train_images else records

    @cached_property
    def val_records(self) -> list:
        """The validation split: held-out training images, difficult objects as in the test
        split (flagged and ignored by the evaluation under ``data.test_difficult: ignore``)."""
        d = self.config.data
        held_out = self._val_ids
        if not held_out:
            return []
        keep = d.test_difficult == "ignore"
        source = self._train_split if keep == d.keep_difficult else self._records(
            d.train_split, d.train_years, None, keep)
        return [r for r in source if r.image_id in held_out]

    @cached_property
    def test_records(self) -> list:
        """The test split; with ``data.test_difficult: ignore`` its difficult objects stay,
        flagged, for the evaluation to ignore (see :func:`ssdstudy.evaluate.evaluate`)."""
        d = self.config.data
        return self._records(d.test_split, d.test_years, d.max_test_images, d.test_difficult == "ignore")
