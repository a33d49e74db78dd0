"""The generated dataset: deterministic, VOC layout, read back by the reader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ssdstudy.data import load_split, read_class_names
from ssdstudy.data.bins import image_bin
from ssdstudy.data.synth import (
    CLASS_TEXTURES,
    SYNTH_CLASSES,
    YEAR_DIR,
    generate,
    image_id,
    is_up_to_date,
    make_image,
)
from ssdstudy.errors import DataError


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "ds"
    generate(out, train=12, test=6, seed=3, workers=1, progress=False)
    return out


def test_layout(small):
    folder = small / YEAR_DIR
    assert (folder / "classes.txt").read_text().split() == list(SYNTH_CLASSES)
    assert (folder / "ImageSets" / "Main" / "trainval.txt").read_text().split() == [
        image_id("trainval", i) for i in range(12)
    ]
    assert len((folder / "ImageSets" / "Main" / "test.txt").read_text().split()) == 6
    assert len(list((folder / "JPEGImages").glob("*.jpg"))) == 18
    assert len(list((folder / "Annotations").glob("*.xml"))) == 18
    info = json.loads((folder / "synth.json").read_text())
    assert info["params"]["seed"] == 3 and info["params"]["trainval"] == 12
    assert set(CLASS_TEXTURES) == set(SYNTH_CLASSES)
    assert len(set(CLASS_TEXTURES.values())) == len(SYNTH_CLASSES)


def test_read_back_by_the_voc_reader(small):
    assert read_class_names(small) == SYNTH_CLASSES
    records = load_split(small, "trainval", keep_difficult=True)
    assert len(records) == 12
    for i, record in enumerate(records):
        sample = make_image(3, "trainval", i)
        assert (record.height, record.width, 3) == sample.image.shape
        assert 300 <= record.width <= 500 and 250 <= record.height <= 500
        np.testing.assert_array_equal(record.boxes, sample.boxes)
        np.testing.assert_array_equal(record.labels, sample.labels + 1)
        np.testing.assert_array_equal(record.difficult, sample.difficult)
        np.testing.assert_array_equal(record.truncated, sample.truncated)
        assert 1 <= len(record) <= 6
    assert len(load_split(small, "test")) == 6


def test_same_seed_same_bytes_other_seed_other_bytes(small, tmp_path):
    again = tmp_path / "again"
    generate(again, train=12, test=6, seed=3, workers=1, progress=False)
    assert tree_bytes(again / YEAR_DIR) == tree_bytes(small / YEAR_DIR)
    assert (
        make_image(4, "trainval", 0).image.tobytes()
        != make_image(3, "trainval", 0).image.tobytes()
    )


def test_worker_processes_do_not_change_the_bytes(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    generate(one, train=20, test=16, seed=1, workers=1, progress=False)
    generate(two, train=20, test=16, seed=1, workers=2, progress=False)
    assert tree_bytes(one / YEAR_DIR) == tree_bytes(two / YEAR_DIR)


def test_an_image_depends_only_on_seed_split_and_index():
    a = make_image(0, "test", 5)
    b = make_image(0, "test", 5)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    assert a.image.dtype == np.uint8 and a.image.ndim == 3


def test_boxes_are_tight_inside_the_image_and_hit_their_target_bin():
    hits = binned = 0
    for i in range(30):
        sample = make_image(7, "test", i)
        h, w = sample.image.shape[:2]
        assert sample.boxes.dtype == np.float32
        assert (
            np.all(sample.boxes[:, :2] >= 0)
            and np.all(sample.boxes[:, 2] <= w)
            and np.all(sample.boxes[:, 3] <= h)
        )
        assert np.all(sample.boxes[:, 2:] - sample.boxes[:, :2] >= 3)
        assert np.array_equal(sample.boxes, np.round(sample.boxes))
        assert not sample.difficult.all()
        if sample.target_bin is not None:
            binned += 1
            hits += image_bin(sample.boxes, w, h, sample.difficult) == sample.target_bin
    assert binned >= 15 and hits >= binned - 2


def test_rerun_is_a_no_op_other_params_regenerate(tmp_path):
    out = tmp_path / "ds"
    folder = generate(out, train=3, test=0, seed=0, workers=1, progress=False)
    assert not (
        folder / "ImageSets" / "Main" / "test.txt"
    ).exists()  # no empty image set
    stamp = (folder / "JPEGImages" / "trainval_000000.jpg").stat().st_mtime_ns
    generate(out, train=3, test=0, seed=0, workers=1, progress=False)
    assert (folder / "JPEGImages" / "trainval_000000.jpg").stat().st_mtime_ns == stamp
    generate(out, train=2, test=1, seed=0, workers=1, progress=False)
    assert len(list((folder / "JPEGImages").glob("*.jpg"))) == 3
    assert not (folder / "JPEGImages" / "trainval_000002.jpg").exists()


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / YEAR_DIR).mkdir()
    (tmp_path / YEAR_DIR / "precious.txt").write_text("mine")
    with pytest.raises(DataError, match="not written by"):
        generate(tmp_path, train=1, test=0, workers=1, progress=False)
    assert (tmp_path / YEAR_DIR / "precious.txt").exists()


def test_a_generation_killed_midway_is_replaced_by_the_next(tmp_path, monkeypatch):
    """A `data synth` killed after some images leaves the dataset that was there as it
    was (readers never see half a dataset) and a partial folder beside it, which the
    next call replaces."""
    import ssdstudy.data.synth as synth

    generate(tmp_path, train=2, test=1, seed=0, workers=1, progress=False)
    real = synth._write_one
    written = []

    def dies_after_three(task):
        if len(written) == 3:
            raise KeyboardInterrupt
        written.append(task)
        return real(task)

    monkeypatch.setattr(synth, "_write_one", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path, train=6, test=2, seed=0, workers=1, progress=False)
    assert not is_up_to_date(tmp_path, train=6, test=2, seed=0)
    assert is_up_to_date(tmp_path, train=2, test=1, seed=0)
    assert len(load_split(tmp_path, "trainval")) == 2
    assert (tmp_path / f".{YEAR_DIR}.partial").is_dir()
    monkeypatch.setattr(synth, "_write_one", real)
    generate(tmp_path, train=6, test=2, seed=0, workers=1, progress=False)
    assert is_up_to_date(tmp_path, train=6, test=2, seed=0)
    assert len(load_split(tmp_path, "trainval")) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == [YEAR_DIR]


def test_a_missing_voc_root_is_an_error_and_nothing_is_written(tmp_path):
    """Generated shapes are written only where a configuration asks for them (data.synth);
    a missing VOCdevkit is an error naming the path and what belongs in it."""
    from ssdstudy.config import build_config
    from ssdstudy.errors import UserError
    from ssdstudy.workspace import Workspace

    root = tmp_path / "VOCdevkit"
    config = build_config(("run.yaml", {"data": {"root": str(root)}}))
    with pytest.raises(UserError, match=r"VOCdevkit does not exist.*Annotations/, ImageSets/Main/ and JPEGImages/"):
        Workspace(config, progress=False)
    assert not root.exists()
