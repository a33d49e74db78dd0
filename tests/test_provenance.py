"""The compute-code hash and atomic writes: what decides whether a run is current, and
that a result file is never seen half written."""

from __future__ import annotations

import ast
import os
import shutil
import sys
from pathlib import Path

import pytest

import ssdstudy
from ssdstudy.files import atomic_path, atomic_write_text
from ssdstudy.provenance import ComputeCodes, _dump, backbone_files, compute_code


@pytest.fixture
def package_copy(tmp_path) -> Path:
    root = tmp_path / "ssdstudy"
    shutil.copytree(Path(ssdstudy.__file__).parent, root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_backbones_are_found_in_their_own_files():
    files = backbone_files()
    assert files["mobilenet_v1"] == "model/mobilenet.py"
    assert files["vgg16"] == files["vgg16_bn"] == "model/vgg.py"


def test_a_backbone_file_counts_only_for_its_own_runs(package_copy):
    before = {name: compute_code(package_copy, name) for name in ("mobilenet_v1", "vgg16", "vgg16_bn")}
    vgg = package_copy / "model" / "vgg.py"
    vgg.write_text(vgg.read_text() + "\nCHANGED = 1\n")
    after = {name: compute_code(package_copy, name) for name in before}
    assert after["mobilenet_v1"] == before["mobilenet_v1"]
    assert after["vgg16"] != before["vgg16"] and after["vgg16_bn"] != before["vgg16_bn"]
    # a new backbone module and its listing in the package index leave every run current
    (package_copy / "model" / "another.py").write_text("X = 1\n")
    index = package_copy / "model" / "__init__.py"
    index.write_text(index.read_text().replace('("vgg", "mobilenet")', '("vgg", "mobilenet", "another")'))
    assert compute_code(package_copy, "mobilenet_v1") != before["mobilenet_v1"]  # an unknown file counts
    (package_copy / "model" / "another.py").unlink()
    assert compute_code(package_copy, "mobilenet_v1") == before["mobilenet_v1"]


def test_shared_code_and_docstrings(package_copy):
    code = compute_code(package_copy, "mobilenet_v1")
    loss = package_copy / "loss.py"
    text = loss.read_text()
    loss.write_text(text.replace('"""', '"""Reworded. ', 1))
    assert compute_code(package_copy, "mobilenet_v1") == code  # the module docstring does not count
    loss.write_text(text + "\nCHANGED = 1\n")
    assert compute_code(package_copy, "mobilenet_v1") != code
    assert compute_code(package_copy, "vgg16") != compute_code(package_copy, "mobilenet_v1")


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="the published hashes are those of Python 3.11's dump")
def test_the_code_is_dumped_as_python_311_dumps_it():
    """The published runs' compute codes were made with Python 3.11's ``ast.dump``: the
    interpreter-independent dump must give its exact text, or every published run would
    turn stale."""
    for path in sorted(Path(ssdstudy.__file__).parent.rglob("*.py")):
        tree = ast.parse(path.read_text())
        assert _dump(tree) == ast.dump(tree, annotate_fields=False, include_attributes=False), path


def test_what_later_pythons_add_to_the_tree_does_not_count():
    """A run trained under Python 3.12 (a lent GPU machine's) hashed the same code to
    another value: 3.12 gives every function a ``type_params`` field and ends a nested
    f-string format spec with an empty string. Neither may change the hash."""
    source = 'class A:\n    def f(self, x, w):\n        return f"{x:<{w}}"\n'
    want = _dump(ast.parse(source))

    class FunctionDef(ast.FunctionDef):  # as Python 3.12 defines it
        _fields = ast.FunctionDef._fields + ("type_params",)

    class ClassDef(ast.ClassDef):
        _fields = ast.ClassDef._fields + ("type_params",)

    tree = ast.parse(source)
    cls = tree.body[0]
    func = cls.body[0]
    later_func = FunctionDef(**{name: getattr(func, name) for name in ast.FunctionDef._fields}, type_params=[])
    later_cls = ClassDef(**{name: getattr(cls, name) for name in ast.ClassDef._fields}, type_params=[])
    later_cls.body = [later_func]
    tree.body = [later_cls]
    spec = later_func.body[0].value.values[0].format_spec
    spec.values.append(ast.Constant(""))
    assert ast.dump(tree, annotate_fields=False) != want  # what the old hash saw
    assert _dump(tree) == want
    later_func.type_params = [ast.TypeVar("T")] if hasattr(ast, "TypeVar") else [ast.Name("T", ast.Load())]
    assert _dump(tree) != want  # a type parameter is code


def test_compute_codes_are_computed_once_per_backbone(monkeypatch):
    import ssdstudy.provenance as provenance

    calls = []
    monkeypatch.setattr(provenance, "compute_code", lambda package=None, backbone=None: calls.append(backbone) or backbone)
    codes = ComputeCodes()
    assert [codes["a"], codes["b"], codes["a"]] == ["a", "b", "a"]
    assert calls == ["a", "b"]


def test_atomic_write_leaves_no_temporary_and_keeps_permissions(tmp_path):
    target = tmp_path / "sub" / "metrics.json"
    atomic_write_text(target, "{}")
    assert target.read_text() == "{}"
    assert os.listdir(target.parent) == ["metrics.json"]
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "checkpoint.pt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["checkpoint.pt"]


def test_two_writers_get_different_temporary_files(tmp_path):
    target = tmp_path / "history.csv"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second and first.parent == second.parent == tmp_path
        first.write_text("a")
        second.write_text("b")
    assert target.read_text() == "a"  # the outer block finished last
