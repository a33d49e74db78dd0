"""The VOC reader on hand-written annotations that look like real VOC files."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssdstudy.data import (
    VOC_CLASSES,
    SkippedFileWarning,
    find_year_dirs,
    load_split,
    read_annotation,
    read_class_names,
)
from ssdstudy.data.voc import write_annotation
from ssdstudy.errors import DataError, UserError

LABEL = {name: i + 1 for i, name in enumerate(VOC_CLASSES)}

# Shaped like VOC2007's 000001.xml (trimmed): a dog and a person.
VOC2007_XML = """<annotation>
	<folder>VOC2007</folder>
	<filename>{id}.jpg</filename>
	<source>
		<database>The VOC2007 Database</database>
		<annotation>PASCAL VOC2007</annotation>
	</source>
	<size>
		<width>353</width>
		<height>500</height>
		<depth>3</depth>
	</size>
	<segmented>0</segmented>
	<object>
		<name>dog</name>
		<pose>Left</pose>
		<truncated>1</truncated>
		<difficult>0</difficult>
		<bndbox>
			<xmin>48</xmin>
			<ymin>240</ymin>
			<xmax>195</xmax>
			<ymax>371</ymax>
		</bndbox>
	</object>
	<object>
		<name>person</name>
		<pose>Left</pose>
		<truncated>1</truncated>
		<difficult>1</difficult>
		<bndbox>
			<xmin>8</xmin>
			<ymin>12</ymin>
			<xmax>352</xmax>
			<ymax>498</ymax>
		</bndbox>
	</object>
</annotation>
"""

# VOC2012 person layout: <part> elements carry their own <name> and <bndbox>; the
# second object lists its parts before its own name and box.
LAYOUT_XML = """<annotation>
	<filename>{id}.jpg</filename>
	<size><width>500</width><height>375</height><depth>3</depth></size>
	<object>
		<name>person</name>
		<bndbox><xmin>174</xmin><ymin>101</ymin><xmax>349</xmax><ymax>351</ymax></bndbox>
		<part>
			<name>head</name>
			<bndbox><xmin>169</xmin><ymin>104</ymin><xmax>209</xmax><ymax>146</ymax></bndbox>
		</part>
		<part>
			<name>hand</name>
			<bndbox><xmin>278</xmin><ymin>210</ymin><xmax>297</xmax><ymax>233</ymax></bndbox>
		</part>
		<difficult>0</difficult>
	</object>
	<object>
		<part>
			<name>foot</name>
			<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox>
		</part>
		<name>person</name>
		<bndbox><xmin>10</xmin><ymin>20</ymin><xmax>110</xmax><ymax>220</ymax></bndbox>
	</object>
</annotation>
"""

# Floats in coordinates, tags in unusual order, no <difficult>/<truncated>.
QUIRKS_XML = """<annotation>
	<object>
		<bndbox><ymax>300.2</ymax><xmax>273.8</xmax><ymin>11.5</ymin><xmin>2.0</xmin></bndbox>
		<name>  cat </name>
	</object>
	<size><height>375</height><depth>3</depth><width>500</width></size>
	<filename>{id}.jpg</filename>
</annotation>
"""


def _obj(name: str, box: tuple, difficult: int = 0) -> str:
    xmin, ymin, xmax, ymax = box
    return (
        f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin>"
        f"<ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
    )


def simple_xml(
    image_id: str, objects: list[str], width: int = 64, height: int = 48
) -> str:
    return (
        f"<annotation><filename>{image_id}.jpg</filename><size><width>{width}</width>"
        f"<height>{height}</height><depth>3</depth></size>{''.join(objects)}</annotation>"
    )


def add_image(
    year_dir: Path, image_id: str, xml: str, size: tuple[int, int] | None = (64, 48)
) -> Path:
    """Write an annotation (``{id}`` in ``xml`` is replaced) and, if ``size``, a JPEG."""
    (year_dir / "Annotations").mkdir(parents=True, exist_ok=True)
    (year_dir / "JPEGImages").mkdir(parents=True, exist_ok=True)
    xml_path = year_dir / "Annotations" / f"{image_id}.xml"
    xml_path.write_text(xml.replace("{id}", image_id))
    if size is not None:
        Image.new("RGB", size, (120, 30, 200)).save(
            year_dir / "JPEGImages" / f"{image_id}.jpg"
        )
    return xml_path


def write_split(year_dir: Path, split: str, ids: list[str]) -> Path:
    main = year_dir / "ImageSets" / "Main"
    main.mkdir(parents=True, exist_ok=True)
    path = main / f"{split}.txt"
    path.write_text("".join(f"{i}\n" for i in ids))
    return path


# --------------------------------------------------------------------------- quirks


def test_reads_voc2007_annotation_and_converts_one_based_boxes(tmp_path):
    year = tmp_path / "VOC2007"
    xml = add_image(year, "000001", VOC2007_XML, size=(353, 500))
    record = read_annotation(xml, VOC_CLASSES)
    assert record.image_id == "000001"
    assert record.image_path == year / "JPEGImages" / "000001.jpg"
    assert (record.width, record.height) == (353, 500)
    assert record.boxes.dtype == np.float32 and record.boxes.shape == (2, 4)
    # 1-based inclusive pixels -> 0-based continuous: x1 = xmin - 1, x2 = xmax.
    np.testing.assert_array_equal(
        record.boxes, [[47, 239, 195, 371], [7, 11, 352, 498]]
    )
    assert record.labels.dtype == np.int64
    assert record.labels.tolist() == [LABEL["dog"], LABEL["person"]]
    assert record.difficult.tolist() == [False, True]
    assert record.truncated.tolist() == [True, True]
    assert record.annotation_path == xml


def test_person_layout_parts_are_not_objects(tmp_path):
    xml = add_image(tmp_path / "VOC2012", "2008_000008", LAYOUT_XML, size=(500, 375))
    record = read_annotation(xml, VOC_CLASSES)
    assert len(record) == 2
    assert record.labels.tolist() == [LABEL["person"], LABEL["person"]]
    np.testing.assert_array_equal(
        record.boxes, [[173, 100, 349, 351], [9, 19, 110, 220]]
    )
    assert record.difficult.tolist() == [False, False]


def test_float_coordinates_any_tag_order_and_missing_flags(tmp_path):
    xml = add_image(tmp_path / "VOC2012", "2009_000001", QUIRKS_XML, size=(500, 375))
    record = read_annotation(xml, VOC_CLASSES)
    assert (record.width, record.height) == (500, 375)
    assert record.labels.tolist() == [LABEL["cat"]]
    np.testing.assert_allclose(record.boxes, [[1.0, 10.5, 273.8, 300.2]], rtol=1e-6)
    assert record.difficult.tolist() == [False]
    assert record.truncated.tolist() == [False]


@pytest.mark.parametrize(
    "size_xml", ["", "<size><width>0</width><height>0</height><depth>3</depth></size>"]
)
def test_missing_or_zero_size_is_read_from_the_image(tmp_path, size_xml):
    xml_text = f"<annotation><filename>{{id}}.jpg</filename>{size_xml}{_obj('dog', (1, 1, 20, 10))}</annotation>"
    xml = add_image(tmp_path / "VOC2007", "000002", xml_text, size=(77, 55))
    record = read_annotation(xml, VOC_CLASSES)
    assert (record.width, record.height) == (77, 55)


def test_box_one_pixel_outside_is_clipped(tmp_path):
    # xmin = 0 (x1 = -1) and xmax = width + 1 are rounding slips, not errors.
    xml = add_image(
        tmp_path / "VOC2007",
        "000003",
        simple_xml("{id}", [_obj("cat", (0, 1, 65, 49))]),
    )
    record = read_annotation(xml, VOC_CLASSES)
    np.testing.assert_array_equal(record.boxes, [[0, 0, 64, 48]])


def test_empty_annotation_gives_empty_arrays(tmp_path):
    xml = add_image(tmp_path / "VOC2007", "000004", simple_xml("{id}", []))
    record = read_annotation(xml, VOC_CLASSES)
    assert record.boxes.shape == (0, 4) and record.labels.shape == (0,)


def test_write_then_read_round_trip(tmp_path):
    year = tmp_path / "VOC2007"
    add_image(year, "000005", simple_xml("{id}", []), size=(64, 48))
    boxes = np.array([[0, 0, 10, 12], [20, 5, 64, 48]], np.float32)
    write_annotation(
        year / "Annotations" / "000005.xml",
        filename="000005.jpg",
        width=64,
        height=48,
        boxes=boxes,
        names=["cow", "sheep"],
        difficult=[False, True],
        truncated=[True, False],
    )
    record = read_annotation(year / "Annotations" / "000005.xml", VOC_CLASSES)
    np.testing.assert_array_equal(record.boxes, boxes)
    assert record.labels.tolist() == [LABEL["cow"], LABEL["sheep"]]
    assert record.difficult.tolist() == [False, True]
    assert record.truncated.tolist() == [True, False]
    text = (year / "Annotations" / "000005.xml").read_text()
    assert "<xmin>1</xmin>" in text and "<xmax>10</xmax>" in text


# --------------------------------------------------------------------------- bad input


BAD_CASES = {
    "malformed": ("<annotation><object><name>dog</name></annotation>", "malformed XML"),
    "unknown class": (
        simple_xml("{id}", [_obj("unicorn", (1, 1, 10, 10))]),
        "unknown class name 'unicorn'",
    ),
    "outside": (
        simple_xml("{id}", [_obj("dog", (1, 1, 80, 10))]),
        "outside the 64x48 image",
    ),
    "negative": (
        simple_xml("{id}", [_obj("dog", (-5, 1, 10, 10))]),
        "outside the 64x48 image",
    ),
    "xmax <= xmin": (
        simple_xml("{id}", [_obj("dog", (30, 1, 30, 10))]),
        "needs xmax > xmin",
    ),
    "ymax <= ymin": (
        simple_xml("{id}", [_obj("dog", (1, 20, 10, 12))]),
        "needs xmax > xmin and ymax > ymin",
    ),
    "not a number": (
        simple_xml("{id}", [_obj("dog", (1, 1, "ten", 10))]),
        "<xmax> is not a number: 'ten'",
    ),
    "no bndbox": (
        "<annotation><size><width>9</width><height>9</height></size><object><name>dog</name></object></annotation>",
        "missing <bndbox>",
    ),
    "no name": (
        "<annotation><size><width>9</width><height>9</height></size><object><bndbox/></object></annotation>",
        "missing <name>",
    ),
    "wrong root": ("<voc><object/></voc>", "expected an <annotation> root element"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_annotation_raises_one_error_naming_the_file(tmp_path, case):
    xml_text, reason = BAD_CASES[case]
    xml = add_image(tmp_path / "VOC2007", "000010", xml_text)
    with pytest.raises(DataError) as info:
        read_annotation(xml, VOC_CLASSES)
    assert isinstance(info.value, UserError)
    message = str(info.value)
    assert message.startswith(f"{xml}: ")
    assert reason in message
    assert info.value.path == str(xml)


def test_missing_image_names_the_image_and_the_annotation(tmp_path):
    xml = add_image(
        tmp_path / "VOC2007",
        "000011",
        simple_xml("{id}", [_obj("dog", (1, 1, 9, 9))]),
        size=None,
    )
    with pytest.raises(DataError, match="image file not found") as info:
        read_annotation(xml, VOC_CLASSES)
    assert str(info.value).startswith(
        str(tmp_path / "VOC2007" / "JPEGImages" / "000011.jpg")
    )
    assert str(xml) in str(info.value)
    # Without the image check the annotation alone is read.
    assert len(read_annotation(xml, VOC_CLASSES, check_image=False)) == 1


def test_missing_annotation_names_it_and_the_image_set(tmp_path):
    year = tmp_path / "VOC2007"
    add_image(year, "000001", VOC2007_XML, size=(353, 500))
    set_file = write_split(year, "trainval", ["000001", "000099"])
    with pytest.raises(DataError, match="annotation file not found") as info:
        load_split(tmp_path, "trainval")
    assert str(info.value).startswith(str(year / "Annotations" / "000099.xml"))
    assert str(set_file) in str(info.value)


def test_missing_and_empty_image_sets(tmp_path):
    year = tmp_path / "VOC2007"
    add_image(year, "000001", VOC2007_XML, size=(353, 500))
    write_split(year, "trainval", ["000001"])
    with pytest.raises(DataError, match="image set file not found") as info:
        load_split(tmp_path, "test")
    assert str(year / "ImageSets" / "Main" / "test.txt") in str(info.value)
    empty = write_split(year, "val", [])
    empty.write_text("\n  \n")
    with pytest.raises(DataError, match="image set file is empty") as info:
        load_split(tmp_path, "val")
    assert str(info.value).startswith(str(empty))


def test_no_dataset_and_missing_year(tmp_path):
    with pytest.raises(DataError, match="dataset folder not found"):
        load_split(tmp_path / "nowhere", "trainval")
    with pytest.raises(DataError, match="no dataset found"):
        load_split(tmp_path, "trainval")
    write_split(tmp_path / "VOC2007", "trainval", ["x"])
    with pytest.raises(DataError, match="year folder not found") as info:
        load_split(tmp_path, "trainval", years=("2012",))
    assert "VOC2012" in str(info.value)


def test_skip_mode_warns_naming_each_bad_file_and_keeps_the_rest(tmp_path):
    year = tmp_path / "VOC2007"
    add_image(year, "000001", VOC2007_XML, size=(353, 500))
    bad_xml = add_image(year, "000002", "<annotation><oops></annotation>")
    no_image = add_image(
        year, "000003", simple_xml("{id}", [_obj("dog", (1, 1, 9, 9))]), size=None
    )
    write_split(year, "trainval", ["000001", "000002", "000003"])
    with pytest.raises(DataError, match="malformed XML"):
        load_split(tmp_path, "trainval")
    with pytest.warns(SkippedFileWarning) as caught:
        records = load_split(tmp_path, "trainval", on_error="skip")
    assert [r.image_id for r in records] == ["000001"]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2
    assert str(bad_xml) in messages[0] and "malformed XML" in messages[0]
    assert str(no_image) in messages[1] and "image file not found" in messages[1]
    with pytest.raises(ValueError, match="on_error"):
        load_split(tmp_path, "trainval", on_error="ignore")


# --------------------------------------------------------------------------- splits


@pytest.fixture
def devkit(tmp_path: Path) -> Path:
    """VOC2007 (trainval + test) and VOC2012 (trainval only)."""
    y07, y12 = tmp_path / "VOC2007", tmp_path / "VOC2012"
    add_image(y07, "000001", VOC2007_XML, size=(353, 500))
    add_image(
        y07,
        "000002",
        simple_xml(
            "{id}", [_obj("car", (1, 1, 30, 20)), _obj("bus", (2, 2, 60, 40), 1)]
        ),
    )
    add_image(y07, "000003", simple_xml("{id}", [_obj("cat", (5, 5, 15, 15))]))
    add_image(y12, "2008_000008", LAYOUT_XML, size=(500, 375))
    add_image(y12, "2009_000001", QUIRKS_XML, size=(500, 375))
    write_split(y07, "trainval", ["000001", "000002"])
    write_split(y07, "test", ["000003"])
    write_split(y12, "trainval", ["2008_000008", "2009_000001"])
    # VOC's per-class image sets sit beside the splits and are not splits.
    (y07 / "ImageSets" / "Main" / "dog_trainval.txt").write_text(
        "000001  1\n000002 -1\n"
    )
    return tmp_path


def test_years_are_concatenated_and_difficult_dropped_by_default(devkit):
    records = load_split(devkit, "trainval")
    assert [r.image_id for r in records] == [
        "000001",
        "000002",
        "2008_000008",
        "2009_000001",
    ]
    by_id = {r.image_id: r for r in records}
    assert by_id["000001"].labels.tolist() == [LABEL["dog"]]  # difficult person dropped
    assert by_id["000002"].labels.tolist() == [LABEL["car"]]
    assert not any(r.difficult.any() for r in records)
    kept = {r.image_id: r for r in load_split(devkit, "trainval", keep_difficult=True)}
    assert kept["000001"].labels.tolist() == [LABEL["dog"], LABEL["person"]]
    assert kept["000002"].difficult.tolist() == [False, True]


def test_years_selection_and_splits_missing_in_some_years(devkit):
    assert [r.image_id for r in load_split(devkit, "trainval", years=("2012",))] == [
        "2008_000008",
        "2009_000001",
    ]
    assert [r.image_id for r in load_split(devkit, "trainval", years=["VOC2007"])] == [
        "000001",
        "000002",
    ]
    # Default years: VOC2012 has no test split and is passed over.
    assert [r.image_id for r in load_split(devkit, "test")] == ["000003"]
    # Named years must all hold the split.
    with pytest.raises(DataError, match="image set file not found") as info:
        load_split(devkit, "test", years=("2007", "2012"))
    assert "VOC2012" in str(info.value)
    with pytest.raises(
        DataError, match="not found in any year folder.*splits found: test, trainval"
    ):
        load_split(devkit, "val")


def test_root_may_be_a_year_folder_or_hold_vocdevkit(devkit, tmp_path):
    assert find_year_dirs(devkit / "VOC2007") == [devkit / "VOC2007"]
    assert len(load_split(devkit / "VOC2007", "trainval")) == 2
    outer = tmp_path.parent / f"{tmp_path.name}_outer"
    outer.mkdir()
    (outer / "VOCdevkit").symlink_to(devkit, target_is_directory=True)
    assert [p.name for p in find_year_dirs(outer)] == ["VOC2007", "VOC2012"]
    assert len(load_split(outer, "trainval", years=("2007", "2012"))) == 4


def test_class_names_from_classes_txt(tmp_path):
    year = tmp_path / "SHAPES"
    add_image(
        year,
        "a",
        simple_xml("{id}", [_obj("blob", (1, 1, 10, 10)), _obj("rod", (2, 2, 9, 30))]),
    )
    write_split(year, "trainval", ["a"])
    assert read_class_names(tmp_path) == VOC_CLASSES
    (year / "classes.txt").write_text("# my classes\nrod\nblob\n\n")
    assert read_class_names(tmp_path) == ("rod", "blob")
    record = load_split(tmp_path, "trainval")[0]
    assert record.labels.tolist() == [2, 1]
    # An explicit list wins; names outside it are errors.
    with pytest.raises(DataError, match="unknown class name 'blob'"):
        load_split(tmp_path, "trainval", class_names=("rod",))
    (tmp_path / "classes.txt").write_text("rod\nrod\n")
    with pytest.raises(DataError, match="more than once"):
        read_class_names(tmp_path)


def test_duplicate_ids_across_years_are_an_error(tmp_path):
    for year in ("VOC2007", "VOC2012"):
        add_image(tmp_path / year, "000001", VOC2007_XML, size=(353, 500))
        write_split(tmp_path / year, "trainval", ["000001"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError, match="also read from"):
            load_split(tmp_path, "trainval")
