"""Where the project's files are: its root, and how relative paths of parameters resolve.

The project's root holds ``parameters/``, ``results/``, ``book/`` and ``data/``. It is
``$SSDSTUDY_ROOT`` when set (``ssdstudy --project DIR`` sets it); else the folder above
the package when that holds ``parameters/profiles/`` (a checkout, installed editable as
the README does); else the nearest folder holding ``parameters/profiles/`` from the
working folder up (a checkout used with the package installed non-editable); else the
working folder. Every part of the project takes its folders from here, so results,
chapters and data land in one place whatever the working folder.

Paths in parameter files (``data.root``, ``model.pretrained``) are taken from the
project's root, so a run finds its data whatever the working folder (papermill runs
notebooks from the root, a user may call ``ssdstudy`` from ``book/``). Paths typed on
the command line (``ssdstudy data synth OUT_DIR``, ``eval --data``) are, as for any
command, taken from the working folder.
"""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The project's root (see the module docstring)."""
    if os.environ.get("SSDSTUDY_ROOT"):
        return Path(os.environ["SSDSTUDY_ROOT"]).expanduser().resolve()
    source = Path(__file__).resolve().parent.parent
    if _is_project(source):
        return source
    here = Path.cwd().resolve()
    return next((folder for folder in (here, *here.parents) if _is_project(folder)), here)


def _is_project(folder: Path) -> bool:
    return (folder / "parameters" / "profiles").is_dir()


PROJECT = project_root()


def resolve_path(path: str | Path) -> Path:
    """``path`` with ``~`` expanded; a relative path is taken from the project's root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else PROJECT / path


__all__ = ["PROJECT", "project_root", "resolve_path"]
