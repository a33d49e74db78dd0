"""Whole-dataset checks and statistics (``ssdstudy data check`` and ``data stats``).

:func:`check_dataset` reads every annotation listed by any image set and fully
decodes every image (PIL ``load()``, which fails on truncated and unreadable files),
collecting one :class:`DataError` per bad file instead of stopping at the first.
:func:`dataset_stats` counts images, objects, difficult objects, classes and the
size-bin histogram per split.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ssdstudy.data.bins import bin_histogram
from ssdstudy.data.voc import (
    Record,
    find_year_dirs,
    list_image_sets,
    load_split,
    read_annotation,
    read_class_names,
    read_image_set,
)
from ssdstudy.errors import DataError

#: Splits listed first, in this order; others follow alphabetically.
_SPLIT_ORDER = ("trainval", "train", "val", "test")


@dataclass
class CheckReport:
    """What :func:`check_dataset` found: ``problems`` holds one error per bad file."""

    folders: list[Path]
    annotations: int = 0
    images: int = 0
    problems: list[DataError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def order_splits(names: Sequence[str]) -> list[str]:
    """Split names in display order: trainval, train, val, test, then the rest sorted."""
    known = [s for s in _SPLIT_ORDER if s in names]
    return known + sorted(set(names) - set(known))


def _decode(path: Path, record: Record | None) -> DataError | None:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        named_by = f" (named by {record.annotation_path})" if record is not None else ""
        return DataError(path, f"image file not found{named_by}")
    try:
        with Image.open(path) as image:
            image.load()
            size = image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        return DataError(path, f"corrupt or unreadable image: {err}")
    if record is not None and size != (record.width, record.height):
        return DataError(
            path,
            f"image is {size[0]}x{size[1]} but {record.annotation_path} gives {record.width}x{record.height}",
        )
    return None


def _check_one(
    xml_path: Path, class_names: Sequence[str]
) -> tuple[list[DataError], bool]:
    """Problems with one annotation and its image; and whether an image was decoded."""
    problems: list[DataError] = []
    record = None
    image_path = xml_path.parent.parent / "JPEGImages" / f"{xml_path.stem}.jpg"
    if not xml_path.is_file():
        problems.append(
            DataError(xml_path, "annotation file not found (listed in an image set)")
        )
    else:
        try:
            record = read_annotation(xml_path, class_names, check_image=False)
            image_path = record.image_path
        except DataError as err:
            problems.append(err)
    exists = image_path.is_file()
    if exists or record is not None:
        problem = _decode(image_path, record)
        if problem is not None:
            problems.append(problem)
    return problems, exists


def _annotation_paths(
    folders: Sequence[Path], class_names: Sequence[str], report: CheckReport
) -> list[Path]:
    paths: dict[Path, None] = {}
    for folder in folders:
        splits = list_image_sets(folder, class_names)
        if not splits:
            report.problems.append(
                DataError(
                    folder / "ImageSets" / "Main", "no image set file (<split>.txt)"
                )
            )
        for split in splits:
            set_file = folder / "ImageSets" / "Main" / f"{split}.txt"
            try:
                ids = read_image_set(set_file)
            except DataError as err:
                report.problems.append(err)
                continue
            for image_id in ids:
                paths[folder / "Annotations" / f"{image_id}.xml"] = None
    return list(paths)


def check_dataset(
    root: str | Path,
    *,
    years: Sequence[str] | None = None,
    progress: bool = True,
    threads: int = 2,
) -> CheckReport:
    """Read every annotation listed by an image set and decode every image.

    Returns a :class:`CheckReport`; raises :class:`DataError` only when the root,
    its year folders or its class list cannot be read at all.
    """
    from tqdm import tqdm

    folders = find_year_dirs(root, years)
    class_names = read_class_names(root, years)
    report = CheckReport(folders=folders)
    paths = _annotation_paths(folders, class_names, report)
    with ThreadPoolExecutor(max(1, threads)) as pool:
        results: Iterator[tuple[list[DataError], bool]] = pool.map(
            lambda p: _check_one(p, class_names), paths
        )
        for problems, decoded in tqdm(
            results, total=len(paths), desc="check", unit="file", disable=not progress
        ):
            report.annotations += 1
            report.images += int(decoded)
            report.problems.extend(problems)
    return report


def dataset_stats(
    root: str | Path,
    splits: Sequence[str] | None = None,
    *,
    years: Sequence[str] | None = None,
) -> dict:
    """Counts per split: images, objects (non-difficult), difficult objects, per class,
    and the size-bin histogram of images (difficult objects ignored).

    Returns::

        {"root": str, "folders": [str], "classes": [str],
         "splits": {split: {"images": n, "objects": n, "difficult": n,
                            "bins": {"0-5": n, ..., "80-100": n}, "unbinned": n,
                            "classes": {name: {"images": n, "objects": n, "difficult": n}}}}}
    """
    folders = find_year_dirs(root, years)
    class_names = read_class_names(root, years)
    if splits is None:
        splits = order_splits(
            sorted({s for f in folders for s in list_image_sets(f, class_names)})
        )
        if not splits:
            raise DataError(
                folders[0] / "ImageSets" / "Main", "no image set file (<split>.txt)"
            )
    out: dict = {
        "root": str(root),
        "folders": [f.name for f in folders],
        "classes": list(class_names),
        "splits": {},
    }
    for split in splits:
        records = load_split(
            root, split, years=years, class_names=class_names, keep_difficult=True
        )
        per_class = {
            name: {"images": 0, "objects": 0, "difficult": 0} for name in class_names
        }
        objects = difficult = 0
        for record in records:
            seen = set()
            for label, diff in zip(record.labels.tolist(), record.difficult.tolist()):
                name = class_names[label - 1]
                seen.add(name)
                if diff:
                    per_class[name]["difficult"] += 1
                    difficult += 1
                else:
                    per_class[name]["objects"] += 1
                    objects += 1
            for name in seen:
                per_class[name]["images"] += 1
        bins, unbinned = bin_histogram(records)
        out["splits"][split] = {
            "images": len(records),
            "objects": objects,
            "difficult": difficult,
            "bins": bins,
            "unbinned": unbinned,
            "classes": per_class,
        }
    return out
