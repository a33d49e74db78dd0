"""A torch Dataset over :class:`~ssdstudy.data.voc.Record` s, yielding tv_tensors.

Images are decoded with OpenCV (libjpeg-turbo) straight to RGB: on a 500x375 JPEG,
one CPU thread, ``cv2.imdecode`` took 0.55 ms like ``torchvision.io.decode_image``
(0.57 ms; its decoders are deprecated from torchvision 0.29 on) and PIL 1.8 ms.
Grayscale and CMYK images come out as 3 RGB channels. The tensor is a (3, H, W) view
of OpenCV's (H, W, 3) array (channels-last memory, which torchvision's uint8 resize
is fastest on). A truncated JPEG decodes partially without an error here (libjpeg
only warns); ``ssdstudy data check`` finds those.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from ssdstudy.data.voc import Record
from ssdstudy.errors import DataError

Target = dict[str, Any]
Transform = Callable[[tv_tensors.Image, Target], tuple[Any, Any]]


def read_image(path: str | Path) -> tv_tensors.Image:
    """Decode an image file to a uint8 ``tv_tensors.Image`` of shape (3, H, W), RGB."""
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(path, "image file not found") from None
    except OSError as err:
        raise DataError(path, f"cannot read image file: {err}") from None
    array = cv2.imdecode(data, cv2.IMREAD_COLOR_RGB) if data.size else None
    if array is None:
        raise DataError(path, "unreadable image (not a JPEG/PNG/... file, or corrupt)")
    return tv_tensors.Image(torch.from_numpy(array).permute(2, 0, 1))


def make_target(record: Record) -> Target:
    """The target of a record: ``boxes`` (K, 4) XYXY ``BoundingBoxes`` with canvas
    (height, width), ``labels`` int64 (K,), ``image_id`` str."""
    return {
        "boxes": tv_tensors.BoundingBoxes(
            torch.as_tensor(record.boxes, dtype=torch.float32).reshape(-1, 4),
            format=tv_tensors.BoundingBoxFormat.XYXY,
            canvas_size=(record.height, record.width),
        ),
        "labels": torch.as_tensor(record.labels, dtype=torch.int64),
        "image_id": record.image_id,
    }


class DetectionDataset(Dataset):
    """Images and detection targets for a list of records.

    ``dataset[i]`` is ``transform(image, target)`` (or ``(image, target)`` without a
    transform), where ``image`` is a uint8 ``tv_tensors.Image`` (3, H, W) and ``target``
    is ``{"boxes": BoundingBoxes (K, 4) XYXY canvas (H, W), "labels": int64 (K,),
    "image_id": str}``, ready for box-aware ``torchvision.transforms.v2`` transforms.
    Raises :class:`DataError` when the decoded image's size differs from the record's.
    """

    def __init__(self, records: Sequence[Record], transform: Transform | None = None):
        self.records = list(records)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        record = self.records[index]
        image = read_image(record.image_path)
        height, width = image.shape[-2:]
        if (width, height) != (record.width, record.height):
            raise DataError(
                record.image_path,
                f"image is {width}x{height} but {record.annotation_path} gives "
                f"{record.width}x{record.height}",
            )
        target = make_target(record)
        if self.transform is not None:
            return self.transform(image, target)
        return image, target


def collate(
    batch: Sequence[tuple[torch.Tensor, Target]],
) -> tuple[torch.Tensor, list[Target]]:
    """Stack images into (N, C, H, W); keep the targets as a list of N dicts.

    The images must share one shape (use a resizing transform); else ``ValueError``.
    """
    images = [item[0] for item in batch]
    targets = [item[1] for item in batch]
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) > 1:
        raise ValueError(
            f"collate needs images of one shape, got {sorted(shapes)}; use a resizing transform"
        )
    stacked = torch.stack([image.as_subclass(torch.Tensor) for image in images])
    return stacked, targets
