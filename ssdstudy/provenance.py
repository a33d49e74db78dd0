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
#: kept as an oracle for the tests and benchmarks.
NOT_COMPUTE = ("evaluate/reference.py",)


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
    return ast.dump(tree, annotate_fields=False, include_attributes=False)


def compute_code(package: Path | None = None) -> str:
    """A 12-hex-digit hash of the code of :data:`COMPUTE_MODULES` (their syntax trees
    without docstrings, so comments and wording do not count).

    A published run records it; when it differs from the code at hand, the run was
    computed by other code and the study reports it stale and recomputes it.
    """
    import hashlib

    root = package or Path(ssdstudy.__file__).resolve().parent
    digest = hashlib.sha256()
    for name in COMPUTE_MODULES:
        path = root / name
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            if file.relative_to(root).as_posix() in NOT_COMPUTE:
                continue
            digest.update(file.relative_to(root).as_posix().encode() + b"\0")
            digest.update(_code_without_docstrings(file.read_text()).encode() + b"\0")
    return digest.hexdigest()[:12]


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_default) + "\n")
    os.replace(tmp, path)


def _default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
