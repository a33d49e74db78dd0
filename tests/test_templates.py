"""The book's notebook templates and table of contents: unexecuted, parameterised as the
study runner calls them, valid Python, and every page the TOC names is there or made by
the runner."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "book" / "templates"
CHAPTERS = ("backbone", "width", "augmentation", "mining", "sizes", "hardware", "nms", "seeds", "tiling", "conclusions",
            "receptive_fields", "runtimes",
            "default_boxes", "reproduce")
PARAMETERS = {
    **{name: {"profile", "experiment", "results_dir"} for name in CHAPTERS},
    "run": {"config_path", "run_dir", "profile"},
    "playground": {"profile", "run_id", "image_path", "score_threshold", "results_dir"},
}


def read(name: str) -> nbformat.NotebookNode:
    nb = nbformat.read(TEMPLATES / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    return nb


def python(source: str) -> str:
    """Cell source without IPython magics."""
    return "\n".join("" if line.lstrip().startswith("%") else line for line in source.splitlines())


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_template_is_unexecuted_and_parameterised(name):
    nb = read(name)
    assert nb.metadata.kernelspec.name == "python3"
    assert nb.metadata.kernelspec.language == "python"
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# ")
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    names = {t.id for node in ast.parse(tagged[0].source).body for t in node.targets}
    assert names == PARAMETERS[name]
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None
            compile(python(cell.source), f"{name}.ipynb", "exec")


@pytest.mark.parametrize("name", CHAPTERS)
def test_chapter_headings_are_consecutive(name):
    """One title, then sections (the book is built with warnings as errors)."""
    levels = []
    for cell in read(name).cells:
        if cell.cell_type == "markdown":
            levels += [len(line) - len(line.lstrip("#")) for line in cell.source.splitlines()
                       if line.startswith("#")]
    assert levels[0] == 1 and levels.count(1) == 1
    assert all(b - a <= 1 for a, b in itertools.pairwise(levels))


def toc_files(node) -> list[str]:
    out = []
    if isinstance(node, dict):
        if "file" in node:
            out.append(node["file"])
        for value in node.values():
            out += toc_files(value)
    elif isinstance(node, list):
        for item in node:
            out += toc_files(item)
    return out


def test_toc_pages_exist_or_are_executed_chapters():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    assert toc["root"] == "book/intro"
    files = [toc["root"], *toc_files(toc["parts"])]
    for f in files:
        if f.startswith("book/chapters/"):
            assert (TEMPLATES / f"{Path(f).name}.ipynb").is_file(), f
        else:
            assert (ROOT / f"{f}.md").is_file(), f
    chapters = {Path(f).name for f in files if f.startswith("book/chapters/")}
    assert chapters == set(CHAPTERS)


def test_config_builds_without_executing():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "off"
    assert config["only_build_toc_files"] is True
    assert "book/templates" in config["exclude_patterns"]
