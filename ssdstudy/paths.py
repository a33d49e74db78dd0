"""Where the project's files are: its root, and how relative paths of parameters resolve.

Relative data paths are taken from the project's root (where ``parameters/`` is), so a
run finds its data whatever the working directory (papermill runs notebooks from the
project's root, a user may call ``ssdstudy`` from ``book/``).
"""

from __future__ import annotations

from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent


def resolve_path(path: str | Path) -> Path:
    """``path`` with ``~`` expanded; a relative path is taken from the project's root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else PROJECT / path


__all__ = ["PROJECT", "resolve_path"]
