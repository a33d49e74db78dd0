"""Provenance that goes with every result: code version, software, machine, seed, time."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import ssdstudy
from ssdstudy.files import atomic_write_text

REPO = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_state() -> dict[str, Any]:
    commit = _git("rev-parse", "HEAD")
    # results are what runs write, not code: a rewritten result file does not make the code dirty
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


#: The modules whose code decides what a run computes (its model, data, augmentation,
#: loss, training, prediction and scoring), relative to the package. A run records the
#: hash of their code; a run made with other code is stale (see :func:`compute_code`).
COMPUTE_MODULES = (
    "augment.py", "boxes.py", "loss.py", "train.py", "pipeline.py", "predict.py", "workspace.py",
    "data", "model", "evaluate",
)
#: Files inside those that no run's results depend on: the original code's evaluation,
#: kept as an oracle for the tests and benchmarks, and the model package's index, which
#: only re-exports names and imports the backbone modules (adding a backbone changes it).
NOT_COMPUTE = ("evaluate/reference.py", "model/__init__.py")


def _code_without_docstrings(source: str) -> str:
    """The syntax tree of ``source`` with docstrings left out: comments, docstrings and
    formatting do not change what code computes."""
    import ast

    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return _dump(tree)


#: Syntax-tree fields that later Pythons added to existing nodes (3.12: the type
#: parameters of functions and classes), left out of :func:`_dump` while empty.
_ADDED_FIELDS = frozenset({"type_params"})


def _dump(node: Any) -> str:
    """``ast.dump(node, annotate_fields=False, include_attributes=False)`` as Python 3.11
    writes it, on any Python: the hash of the compute code must not depend on the
    interpreter (3.12's dump adds ``type_params`` to every function and class, 3.13's
    leaves out empty fields), or a run computed elsewhere would look computed by other
    code. Fields a later Python added are skipped while they hold nothing, and so are the
    empty strings of f-strings (no part of what they compute)."""
    import ast

    if isinstance(node, ast.AST):
        args, keywords = [], False
        for name in node._fields:
            try:
                value = getattr(node, name)
            except AttributeError:
                keywords = True
                continue
            if name in _ADDED_FIELDS and not value:
                continue
            if isinstance(node, ast.JoinedStr) and name == "values":
                # 3.12's parser ends a nested format spec (f"{x:<{w}}") with an empty string
                value = [v for v in value if not (isinstance(v, ast.Constant) and v.value == "")]
            if value is None and getattr(type(node), name, ...) is None:
                keywords = True
                continue
            args.append(f"{name}={_dump(value)}" if keywords else _dump(value))
        return f"{type(node).__name__}({', '.join(args)})"
    if isinstance(node, list):
        return f"[{', '.join(_dump(x) for x in node)}]"
    return repr(node)


def backbone_files() -> dict[str, str]:
    """Backbone name -> the file that defines it, relative to the package
    (``{"vgg16": "model/vgg.py", ...}``)."""
    from ssdstudy.model import BACKBONES

    root = Path(ssdstudy.__file__).resolve().parent
    files = {}
    for name in BACKBONES:
        path = Path(sys.modules[BACKBONES[name].__module__].__file__).resolve()
        # a backbone registered from outside the package is not part of its compute code
        files[name] = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()
    return files


def compute_code(package: Path | None = None, backbone: str | None = None) -> str:
    """A 12-hex-digit hash of the code of :data:`COMPUTE_MODULES` (their syntax trees
    without docstrings, so comments and wording do not count).

    A published run records it; when it differs from the code at hand, the run was
    computed by other code and the study reports it stale and recomputes it.

    Args:
        package: the package folder (default: this one).
        backbone: the run's backbone. A backbone's own file counts only for runs of
            that backbone, so that adding or changing one backbone leaves the runs of
            the others current. None: every file counts.
    """
    import hashlib

    root = package or Path(ssdstudy.__file__).resolve().parent
    skip = set(NOT_COMPUTE)
    if backbone is not None:
        files_of = backbone_files()
        skip |= set(files_of.values()) - {files_of.get(backbone)}
    digest = hashlib.sha256()
    for name in COMPUTE_MODULES:
        path = root / name
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            if file.relative_to(root).as_posix() in skip:
                continue
            digest.update(file.relative_to(root).as_posix().encode() + b"\0")
            digest.update(_code_without_docstrings(file.read_text()).encode() + b"\0")
    return digest.hexdigest()[:12]


class ComputeCodes(dict):
    """Backbone -> :func:`compute_code` of the code at hand, each computed on first use
    (a study asks for the same few many times)."""

    def __missing__(self, backbone: str) -> str:
        self[backbone] = code = compute_code(backbone=backbone)
        return code


def cpu_name() -> str:
    """The CPU model as the operating system names it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    if dev.type == "mps":
        return f"Apple MPS ({platform.machine()})"
    return cpu_name()


def collect(device: str = "cpu", seed: int | None = None, git: dict[str, Any] | None = None,
            **extra: Any) -> dict[str, Any]:
    """Everything needed to say where and with what a result was made.

    ``git``: the code's state as :func:`git_state` read it when the work started (the
    modules were imported then); read now when None.
    """
    import torch
    import torchvision

    return {
        "git": git if git is not None else git_state(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "ssdstudy": ssdstudy.__version__,
        "platform": platform.platform(),
        "hostname": platform.node(),
        "device": device,
        "device_name": device_name(device),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "seed": seed,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (a temporary file moved into place)."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_default) + "\n")


def _default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
