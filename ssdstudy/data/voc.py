"""Read (and write) detection datasets in the Pascal VOC layout.

A dataset root is a VOCdevkit-like folder that holds one or more *year folders*::

    ROOT/VOC2007/{Annotations/*.xml, JPEGImages/*.jpg, ImageSets/Main/<split>.txt}
    ROOT/VOC2012/...
    ROOT/SYNTH/...            (the generated default dataset, see ssdstudy.data.synth)

``ROOT`` may also be a year folder itself, or a folder holding ``VOCdevkit/``.
By default every ``VOC20xx`` folder present is read (07+12, as the study); when there
is none, every folder that holds ``ImageSets/Main`` (the generated dataset's ``SYNTH``).
A year folder or the root may hold ``classes.txt`` (one class name per line); without
it the 20 VOC classes are used.

Coordinates. VOC writes 1-based inclusive pixel indices; records hold 0-based
continuous XYXY pixels: ``x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax``
(writers do the inverse: ``xmin = round(x1) + 1, xmax = round(x2)``).

Real VOC quirks that are read correctly: person-layout ``<part>`` elements inside an
``<object>`` (they carry their own ``<name>`` and ``<bndbox>`` and are ignored),
coordinates written as floats (``273.8``), tags in any order, a missing
``<difficult>`` or ``<truncated>`` (read as 0), and a missing or zero ``<size>`` (the
size is then read from the image header, without decoding the image).

Errors. Bad input raises one :class:`ssdstudy.errors.DataError` whose message starts
with the path of the bad file and says what is wrong: malformed XML, a missing field,
a coordinate that is not a number, an unknown class name, a box with ``xmax <= xmin``
or ``ymax <= ymin``, a box clearly outside the image, a missing image or annotation,
a missing or empty image set file. Boxes that stick out of the image by at most one
pixel (rounding; real VOC has boxes with ``xmax = width + 1``-style slips) are clipped
to the image, not rejected. :func:`load_split` stops on the first error by default
(``on_error="raise"``); with ``on_error="skip"`` it skips each bad annotation or image
with a :class:`SkippedFileWarning` that names the file, and goes on. Problems with an
image set file itself always raise: there is nothing to read without it. The loader
only checks that each image exists; ``ssdstudy data check`` decodes every image.
"""

from __future__ import annotations

import math
import re
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssdstudy.errors import DataError

#: The 20 Pascal VOC classes in the standard order; class ``i`` has label ``i + 1``.
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

#: A box may stick out of the image by this many pixels (rounding) and is then clipped.
CLIP_TOLERANCE = 1.0

_ON_ERROR = ("raise", "skip")
_YEAR_RE = re.compile(r"VOC\d{4}")


class SkippedFileWarning(UserWarning):
    """A bad annotation or image was skipped (``on_error="skip"``)."""


@dataclass(eq=False)
class Record:
    """One annotated image.

    Attributes:
        image_id: the annotation file's stem (the id listed in the image set).
        image_path: the image file.
        width, height: image size in pixels.
        boxes: float32 (K, 4) XYXY, 0-based continuous pixel coordinates, inside the image.
        labels: int64 (K,), 1-based class labels (0 is the background).
        difficult: bool (K,), VOC's ``difficult`` flag.
        truncated: bool (K,), VOC's ``truncated`` flag.
        annotation_path: the XML annotation file.
    """

    image_id: str
    image_path: Path
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    truncated: np.ndarray
    annotation_path: Path

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def select(self, keep: np.ndarray) -> Record:
        """A copy that keeps the objects where the bool mask ``keep`` (K,) is true."""
        return Record(
            image_id=self.image_id,
            image_path=self.image_path,
            width=self.width,
            height=self.height,
            boxes=self.boxes[keep],
            labels=self.labels[keep],
            difficult=self.difficult[keep],
            truncated=self.truncated[keep],
            annotation_path=self.annotation_path,
        )


# --------------------------------------------------------------------------- folders


def is_year_dir(path: Path) -> bool:
    """Whether ``path`` looks like a VOC year folder (it holds ``ImageSets/Main``)."""
    return (path / "ImageSets" / "Main").is_dir()


def find_year_dirs(root: str | Path, years: Sequence[str] | None = None) -> list[Path]:
    """The year folders of a dataset root, in reading order.

    Args:
        root: a VOCdevkit-like folder, a folder holding ``VOCdevkit/``, or a year folder.
        years: e.g. ``("2007", "2012")`` (folders ``VOC2007``, ``VOC2012``) or folder
            names such as ``("SYNTH",)``; ``None`` means every ``VOC20xx`` folder
            present, or, when there is none, every folder holding ``ImageSets/Main``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "dataset folder not found")
    if years is not None and isinstance(years, str):
        years = (years,)
    if is_year_dir(root) and (
        years is None or any(root.name in (str(y), f"VOC{y}") for y in years)
    ):
        return [root]
    if years is not None:
        base = root / "VOCdevkit" if (root / "VOCdevkit").is_dir() else root
        found = []
        for year in years:
            year = str(year)
            candidates = [base / f"VOC{year}", base / year]
            folder = next((c for c in candidates if c.is_dir()), None)
            if folder is None:
                raise DataError(
                    candidates[0], f"year folder not found (years={list(years)})"
                )
            found.append(folder)
        return found
    # hidden folders are not datasets (a generation in progress writes into one)
    children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    voc = [p for p in children if _YEAR_RE.fullmatch(p.name)]
    if voc:
        return voc
    others = [p for p in children if is_year_dir(p)]
    if others:
        return others
    if (root / "VOCdevkit").is_dir():
        return find_year_dirs(root / "VOCdevkit")
    raise DataError(
        root,
        "no dataset found: expected VOC2007/, VOC2012/ or another folder holding "
        "ImageSets/Main/ and Annotations/ (see data/README.md)",
    )


def _read_class_file(path: Path) -> tuple[str, ...]:
    names = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    if not names:
        raise DataError(path, "class list is empty")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(path, f"class list names {', '.join(dupes)} more than once")
    return tuple(names)


def read_class_names(
    root: str | Path, years: Sequence[str] | None = None
) -> tuple[str, ...]:
    """The dataset's class names: ``classes.txt`` at the root or in the year folders.

    Without such a file, :data:`VOC_CLASSES`. Year folders that disagree raise a
    :class:`DataError`.
    """
    root = Path(root)
    if (root / "classes.txt").is_file():
        return _read_class_file(root / "classes.txt")
    lists = {}
    for folder in find_year_dirs(root, years):
        if (folder / "classes.txt").is_file():
            lists[folder / "classes.txt"] = _read_class_file(folder / "classes.txt")
    if not lists:
        return VOC_CLASSES
    (first_path, first), *rest = lists.items()
    for path, names in rest:
        if names != first:
            raise DataError(path, f"class list differs from {first_path}")
    return first


def list_image_sets(
    year_dir: Path, class_names: Iterable[str] = VOC_CLASSES
) -> list[str]:
    """The split names in ``ImageSets/Main`` (``train``, ``trainval``, ``test``, ...).

    VOC's per-class files (``dog_trainval.txt``) are left out.
    """
    main = Path(year_dir) / "ImageSets" / "Main"
    if not main.is_dir():
        return []
    prefixes = tuple(f"{name}_" for name in class_names)
    return sorted(p.stem for p in main.glob("*.txt") if not p.stem.startswith(prefixes))


def read_image_set(path: str | Path) -> list[str]:
    """The image ids listed in an image set file (first word of every non-blank line)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "image set file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(path, f"cannot read image set file: {err}") from None
    ids = [line.split()[0] for line in text.splitlines() if line.strip()]
    if not ids:
        raise DataError(path, "image set file is empty")
    return ids


# --------------------------------------------------------------------------- annotations


def image_size_from_header(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image, read from its header (no full decode)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "image file not found")
    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(path, f"unreadable image: {err}") from None


def _text(element: ET.Element, tag: str) -> str | None:
    child = element.find(tag)
    if child is None or child.text is None:
        return None
    return child.text.strip()


def _number(path: Path, element: ET.Element, tag: str, where: str) -> float:
    text = _text(element, tag)
    if text is None or text == "":
        raise DataError(path, f"{where}: missing <{tag}>")
    try:
        value = float(text)
    except ValueError:
        raise DataError(path, f"{where}: <{tag}> is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise DataError(path, f"{where}: <{tag}> is not a finite number: {text!r}")
    return value


def _flag(path: Path, element: ET.Element, tag: str, where: str) -> bool:
    text = _text(element, tag)
    if not text:
        return False
    try:
        return float(text) != 0
    except ValueError:
        raise DataError(path, f"{where}: <{tag}> is not 0 or 1: {text!r}") from None


def _size(path: Path, root: ET.Element) -> tuple[int, int] | None:
    size = root.find("size")
    if size is None:
        return None
    out = []
    for tag in ("width", "height"):
        text = _text(size, tag)
        if not text:
            return None
        try:
            out.append(round(float(text)))
        except ValueError:
            raise DataError(
                path, f"<size>: <{tag}> is not a number: {text!r}"
            ) from None
    if out[0] <= 0 or out[1] <= 0:
        return None
    return out[0], out[1]


def _class_list(class_names: Sequence[str]) -> str:
    if len(class_names) <= 30:
        return ", ".join(class_names)
    return ", ".join(class_names[:30]) + ", ..."


def read_annotation(
    xml_path: str | Path,
    class_names: Sequence[str] = VOC_CLASSES,
    *,
    check_image: bool = True,
) -> Record:
    """Read one VOC XML annotation into a :class:`Record` (all objects, difficult too).

    The image is ``<year folder>/JPEGImages/<filename>`` (``<filename>`` from the XML,
    else ``<stem>.jpg``). With ``check_image`` the image must exist. Raises
    :class:`DataError` naming the file for any problem (see the module docstring).
    """
    path = Path(xml_path)
    if not path.is_file():
        raise DataError(path, "annotation file not found")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise DataError(path, f"malformed XML: {err}") from None
    if root.tag != "annotation":
        raise DataError(
            path, f"expected an <annotation> root element, found <{root.tag}>"
        )

    filename = _text(root, "filename") or f"{path.stem}.jpg"
    image_path = path.parent.parent / "JPEGImages" / filename
    if check_image and not image_path.is_file():
        raise DataError(image_path, f"image file not found (named by {path})")
    size = _size(path, root)
    if size is None:
        size = image_size_from_header(image_path)
    width, height = size

    index = {name: i for i, name in enumerate(class_names)}
    boxes, labels, difficult, truncated = [], [], [], []
    for k, obj in enumerate(root.findall("object"), start=1):
        name = _text(obj, "name")
        where = f"object {k}"
        if not name:
            raise DataError(path, f"{where}: missing <name>")
        where = f"object {k} ({name})"
        if name not in index:
            raise DataError(
                path,
                f"{where}: unknown class name {name!r} (classes: {_class_list(class_names)})",
            )
        box = obj.find("bndbox")
        if box is None:
            raise DataError(path, f"{where}: missing <bndbox>")
        xmin, ymin, xmax, ymax = (
            _number(path, box, t, where) for t in ("xmin", "ymin", "xmax", "ymax")
        )
        if xmax <= xmin or ymax <= ymin:
            raise DataError(
                path,
                f"{where}: empty box, xmin={xmin:g} ymin={ymin:g} xmax={xmax:g} ymax={ymax:g} "
                "(needs xmax > xmin and ymax > ymin)",
            )
        x1, y1, x2, y2 = xmin - 1.0, ymin - 1.0, xmax, ymax
        tol = CLIP_TOLERANCE
        if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
            raise DataError(
                path,
                f"{where}: box xmin={xmin:g} ymin={ymin:g} xmax={xmax:g} ymax={ymax:g} lies "
                f"outside the {width}x{height} image",
            )
        boxes.append(
            (
                min(max(x1, 0.0), width),
                min(max(y1, 0.0), height),
                min(x2, width),
                min(y2, height),
            )
        )
        labels.append(index[name] + 1)
        difficult.append(_flag(path, obj, "difficult", where))
        truncated.append(_flag(path, obj, "truncated", where))

    return Record(
        image_id=path.stem,
        image_path=image_path,
        width=width,
        height=height,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64),
        difficult=np.asarray(difficult, dtype=bool),
        truncated=np.asarray(truncated, dtype=bool),
        annotation_path=path,
    )


def load_split(
    root: str | Path,
    split: str,
    *,
    years: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    keep_difficult: bool = False,
    on_error: str = "raise",
) -> list[Record]:
    """Read every annotation of an image set, over one or several year folders.

    Args:
        root: the dataset root (see the module docstring).
        split: the image set name, e.g. ``"trainval"`` or ``"test"``.
        years: year folders to read, e.g. ``("2007", "2012")``; ``None``: all found.
            With explicit years every one must hold the split; with ``None`` the years
            without it are passed over (VOC2012 has no public ``test``), but at least
            one must hold it.
        class_names: class list (label = index + 1); ``None``: :func:`read_class_names`.
        keep_difficult: keep the objects flagged difficult (default: drop them, as the
            study does; an image may then hold no object).
        on_error: ``"raise"`` stops at the first bad file with a :class:`DataError`;
            ``"skip"`` warns (:class:`SkippedFileWarning`, naming the file) and goes on.

    Returns:
        the records in image set order, the years concatenated in order.
    """
    if on_error not in _ON_ERROR:
        raise ValueError(f"on_error must be one of {_ON_ERROR}, got {on_error!r}")
    folders = find_year_dirs(root, years)
    if class_names is None:
        class_names = read_class_names(root, years)
    set_files = [folder / "ImageSets" / "Main" / f"{split}.txt" for folder in folders]
    if years is None and len(folders) > 1:
        present = [f for f in set_files if f.is_file()]
        if not present:
            available = sorted(
                {s for folder in folders for s in list_image_sets(folder, class_names)}
            )
            raise DataError(
                set_files[0],
                f"image set file not found in any year folder (splits found: {', '.join(available) or 'none'})",
            )
        set_files = present

    records: list[Record] = []
    seen: dict[str, Path] = {}
    for set_file in set_files:
        ids = read_image_set(set_file)
        annotations = set_file.parent.parent.parent / "Annotations"
        for image_id in ids:
            xml_path = annotations / f"{image_id}.xml"
            try:
                if not xml_path.is_file():
                    raise DataError(
                        xml_path, f"annotation file not found (listed in {set_file})"
                    )
                record = read_annotation(xml_path, class_names)
            except DataError as err:
                if on_error == "raise":
                    raise
                warnings.warn(f"skipped {err}", SkippedFileWarning, stacklevel=2)
                continue
            if record.image_id in seen:
                raise DataError(
                    xml_path,
                    f"image id {record.image_id!r} also read from {seen[record.image_id]}",
                )
            seen[record.image_id] = xml_path
            if not keep_difficult:
                record = record.select(~record.difficult)
            records.append(record)
    return records


# --------------------------------------------------------------------------- writing


def _indent(element: ET.Element, level: int = 0) -> None:
    pad = "\n" + "\t" * level
    if len(element):
        element.text = pad + "\t"
        for child in element:
            _indent(child, level + 1)
        child.tail = pad
    if level:
        element.tail = element.tail or pad


def write_annotation(
    xml_path: str | Path,
    *,
    filename: str,
    width: int,
    height: int,
    boxes: np.ndarray,
    names: Sequence[str],
    difficult: Sequence[bool] | np.ndarray,
    truncated: Sequence[bool] | np.ndarray,
    folder: str = "",
    depth: int = 3,
) -> None:
    """Write a VOC XML annotation (the inverse of :func:`read_annotation`).

    ``boxes`` are float (K, 4) XYXY 0-based continuous pixels; they are written as
    1-based inclusive integers ``xmin = round(x1) + 1, xmax = round(x2)``.
    """
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = filename
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(int(width))
    ET.SubElement(size, "height").text = str(int(height))
    ET.SubElement(size, "depth").text = str(int(depth))
    ET.SubElement(root, "segmented").text = "0"
    for box, name, diff, trunc in zip(
        np.asarray(boxes).reshape(-1, 4), names, difficult, truncated
    ):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = str(int(bool(trunc)))
        ET.SubElement(obj, "difficult").text = str(int(bool(diff)))
        bnd = ET.SubElement(obj, "bndbox")
        x1, y1, x2, y2 = (float(v) for v in box)
        for tag, value in (
            ("xmin", round(x1) + 1),
            ("ymin", round(y1) + 1),
            ("xmax", round(x2)),
            ("ymax", round(y2)),
        ):
            ET.SubElement(bnd, tag).text = str(int(value))
    _indent(root)
    Path(xml_path).write_bytes(ET.tostring(root, encoding="utf-8") + b"\n")
