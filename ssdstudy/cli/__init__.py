"""The ``ssdstudy`` command: one sub-command group per module of this package.

Each group lives in its own module that exposes ``register(subparsers)``; the
handler it installs (``args.func``) returns an exit code. Errors that a user can
fix (:class:`ssdstudy.errors.UserError`) are printed as one line, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ssdstudy.errors import UserError

#: Sub-command modules, in the order ``--help`` lists them.
GROUPS = ("data", "train", "evaluate", "bench", "detect", "study")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssdstudy",
        description="A reproducible study of SSD300 with VGG16 and MobileNetV1 backbones.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in GROUPS:
        importlib.import_module(f"ssdstudy.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
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
