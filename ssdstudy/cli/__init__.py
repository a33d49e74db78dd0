"""The ``ssdstudy`` command: one sub-command group per module of this package.

Each group lives in its own module that exposes ``register(subparsers)``; the
handler it installs (``args.func``) returns an exit code. Errors that a user can
fix (:class:`ssdstudy.errors.UserError`) are printed as one line, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from ssdstudy.errors import UserError

#: Sub-command modules, in the order ``--help`` lists them.
GROUPS = ("data", "train", "evaluate", "bench", "detect", "export", "study")


def _project_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", metavar="DIR",
                        help="the project folder (parameters/, results/, book/, data/); default: "
                        "$SSDSTUDY_ROOT, the checkout the package is installed from, or the nearest "
                        "folder holding parameters/profiles/ from the working folder up")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssdstudy",
        description="A reproducible study of SSD300 with VGG16 and MobileNetV1 backbones.",
    )
    _project_option(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in GROUPS:
        importlib.import_module(f"ssdstudy.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # the project folder decides where every module looks: set before any is imported
    early = argparse.ArgumentParser(add_help=False)
    _project_option(early)
    known, _ = early.parse_known_args(argv)
    if known.project:
        folder = Path(known.project).expanduser().resolve()
        if not (folder / "parameters" / "profiles").is_dir():
            print(f"ssdstudy: error: --project {known.project}: no parameters/profiles/ in it", file=sys.stderr)
            return 2
        if "ssdstudy.paths" in sys.modules and sys.modules["ssdstudy.paths"].PROJECT != folder:
            print(f"ssdstudy: error: --project {known.project}: the project folder is already "
                  f"{sys.modules['ssdstudy.paths'].PROJECT} in this process", file=sys.stderr)
            return 2
        os.environ["SSDSTUDY_ROOT"] = str(folder)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"ssdstudy: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ssdstudy: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
