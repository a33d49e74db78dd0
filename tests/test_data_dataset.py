"""DetectionDataset and collate: tv_tensors out, ready for transforms.v2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.transforms import v2

from ssdstudy.data import DetectionDataset, Record, collate, read_image
from ssdstudy.errors import DataError


def make_record(
    tmp_path: Path, name: str, mode: str = "RGB", size=(40, 30), fmt: str = "JPEG"
) -> Record:
    path = tmp_path / name
    colour = {"RGB": (200, 10, 10), "L": 128, "CMYK": (0, 255, 255, 0), "P": 3}[mode]
    Image.new(mode, size, colour).save(path, fmt)
    return Record(
        image_id=path.stem,
        image_path=path,
        width=size[0],
        height=size[1],
        boxes=np.array([[2, 3, 12, 20], [20, 0, 40, 30]], np.float32),
        labels=np.array([5, 1], np.int64),
        difficult=np.zeros(2, bool),
        truncated=np.zeros(2, bool),
        annotation_path=tmp_path / f"{path.stem}.xml",
    )


def test_item_is_tv_tensors(tmp_path):
    record = make_record(tmp_path, "a.jpg")
    image, target = DetectionDataset([record])[0]
    assert isinstance(image, tv_tensors.Image)
    assert image.dtype == torch.uint8 and image.shape == (3, 30, 40)
    assert image[0, 15, 20] > 150 and image[1, 15, 20] < 60  # red, in RGB order
    boxes = target["boxes"]
    assert isinstance(boxes, tv_tensors.BoundingBoxes)
    assert boxes.format == tv_tensors.BoundingBoxFormat.XYXY
    assert tuple(boxes.canvas_size) == (30, 40)
    assert boxes.dtype == torch.float32
    torch.testing.assert_close(
        boxes.as_subclass(torch.Tensor),
        torch.tensor([[2.0, 3, 12, 20], [20, 0, 40, 30]]),
    )
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [5, 1]
    assert target["image_id"] == "a"


@pytest.mark.parametrize(
    "mode,name,fmt",
    [("L", "gray.jpg", "JPEG"), ("CMYK", "cmyk.jpg", "JPEG"), ("P", "pal.png", "PNG")],
)
def test_grayscale_cmyk_and_palette_images_come_out_rgb(tmp_path, mode, name, fmt):
    image = read_image(make_record(tmp_path, name, mode=mode, fmt=fmt).image_path)
    assert image.shape == (3, 30, 40) and image.dtype == torch.uint8
    if mode == "L":
        assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    if mode == "CMYK":  # C=0 M=255 Y=255 K=0 is red
        assert image[0].float().mean() > 200 and image[1].float().mean() < 60


def test_box_aware_transform_moves_the_boxes(tmp_path):
    transform = v2.Compose([v2.RandomHorizontalFlip(p=1.0), v2.Resize((60, 80))])
    image, target = DetectionDataset(
        [make_record(tmp_path, "a.jpg")], transform=transform
    )[0]
    assert image.shape == (3, 60, 80)
    assert tuple(target["boxes"].canvas_size) == (60, 80)
    # x -> 40 - x, then everything scaled by 2.
    torch.testing.assert_close(
        target["boxes"].as_subclass(torch.Tensor),
        torch.tensor([[56.0, 6, 76, 40], [0, 0, 40, 60]]),
    )
    assert target["labels"].tolist() == [5, 1]


def test_size_mismatch_and_missing_and_corrupt_images(tmp_path):
    record = make_record(tmp_path, "a.jpg")
    record.width = 41
    with pytest.raises(DataError, match="image is 40x30 but .* gives 41x30"):
        DetectionDataset([record])[0]
    with pytest.raises(DataError, match="image file not found"):
        read_image(tmp_path / "nope.jpg")
    (tmp_path / "junk.jpg").write_bytes(b"this is no image" * 8)
    with pytest.raises(DataError, match="unreadable image") as info:
        read_image(tmp_path / "junk.jpg")
    assert str(info.value).startswith(str(tmp_path / "junk.jpg"))


def test_collate_and_dataloader(tmp_path):
    records = [make_record(tmp_path, f"{i}.jpg") for i in range(3)]
    loader = DataLoader(DetectionDataset(records), batch_size=2, collate_fn=collate)
    images, targets = next(iter(loader))
    assert images.shape == (2, 3, 30, 40) and images.dtype == torch.uint8
    assert isinstance(targets, list) and len(targets) == 2
    assert [t["image_id"] for t in targets] == ["0", "1"]
    other = make_record(tmp_path, "big.jpg", size=(50, 30))
    with pytest.raises(ValueError, match="one shape"):
        collate([DetectionDataset(records)[0], DetectionDataset([other])[0]])
