"""``ssdstudy data synth | stats | check`` through the command's entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ssdstudy.cli import main
from ssdstudy.data.bins import SIZE_BINS
from ssdstudy.data.synth import YEAR_DIR


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "synth"
    assert (
        main(["data", "synth", str(root), "--train", "200", "--test", "200", "--quiet"])
        == 0
    )
    return root


def test_synth_then_stats_json_fills_every_test_bin(synth_root, capsys):
    capsys.readouterr()
    assert main(["data", "stats", str(synth_root), "--json"]) == 0
    out = capsys.readouterr().out
    stats = json.loads(out)  # one JSON object, nothing else on stdout
    assert list(stats["splits"]) == ["trainval", "test"]
    for split in ("trainval", "test"):
        s = stats["splits"][split]
        assert s["images"] == 200
        assert s["objects"] > 200 and 0 < s["difficult"] < s["objects"]
        assert list(s["bins"]) == list(SIZE_BINS)
        assert sum(s["bins"].values()) + s["unbinned"] == 200
        assert sum(c["objects"] for c in s["classes"].values()) == s["objects"]
        assert all(c["objects"] > 0 for c in s["classes"].values())
    test_bins = stats["splits"]["test"]["bins"]
    assert all(n > 0 for n in test_bins.values()), test_bins
    # A fair share: no bin holds fewer than a third of an even split of the binned images.
    assert min(test_bins.values()) >= sum(test_bins.values()) / len(SIZE_BINS) / 3


def test_stats_table_and_split_selection(synth_root, capsys):
    assert main(["data", "stats", str(synth_root), "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert "test" in out and "trainval" not in out
    for name in (*SIZE_BINS, "mixed", "circle", "crescent", "images", "difficult"):
        assert name in out


def test_check_passes_on_a_good_dataset(synth_root, capsys):
    assert main(["data", "check", str(synth_root), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: 400 annotations read and 400 images decoded")


def test_check_lists_each_bad_file_and_exits_1(tmp_path, capsys):
    root = tmp_path / "ds"
    assert (
        main(["data", "synth", str(root), "--train", "6", "--test", "0", "--quiet"])
        == 0
    )
    folder = root / YEAR_DIR
    bad_xml = folder / "Annotations" / "trainval_000002.xml"
    bad_xml.write_text(bad_xml.read_text()[:-40])  # cut short: malformed XML
    bad_jpg = folder / "JPEGImages" / "trainval_000004.jpg"
    data = bad_jpg.read_bytes()
    bad_jpg.write_bytes(data[: len(data) // 2])  # truncated JPEG
    capsys.readouterr()
    assert main(["data", "check", str(root)]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{bad_xml}: malformed XML")
    assert lines[1].startswith(f"{bad_jpg}: corrupt or unreadable image")
    assert "truncated" in lines[1]
    assert "2 bad file(s)" in captured.err
    assert "Traceback" not in captured.out + captured.err


def test_user_errors_are_one_line_with_exit_2(tmp_path, capsys):
    assert main(["data", "stats", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert (
        err.strip()
        == f"ssdstudy: error: {tmp_path / 'missing'}: dataset folder not found"
    )
    (tmp_path / "SYNTH").mkdir()
    (tmp_path / "SYNTH" / "notes.txt").write_text("not a dataset")
    assert (
        main(["data", "synth", str(tmp_path), "--train", "1", "--test", "0", "--quiet"])
        == 2
    )
    assert "not written by" in capsys.readouterr().err


def test_synth_rerun_with_same_arguments_is_up_to_date(synth_root, capsys):
    capsys.readouterr()
    args = ["data", "synth", str(synth_root), "--train", "200", "--test", "200"]
    assert main(args) == 0
    assert "up to date" in capsys.readouterr().out
