"""``ssdstudy data``: generate the default dataset, count a dataset, check its files.

ssdstudy data synth OUT_DIR [--train N] [--test N] [--seed S] [--workers W] [--force]
ssdstudy data stats ROOT [--split S ...] [--years Y ...] [--json]
ssdstudy data check ROOT [--years Y ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` group and its commands to the top-level parser."""
    group = subparsers.add_parser("data", help="generate, count and check datasets")
    sub = group.add_subparsers(dest="data_command", metavar="COMMAND", required=True)

    synth = sub.add_parser(
        "synth",
        help="write the generated default dataset (VOC layout) under OUT_DIR/SYNTH",
        description="Write a deterministic detection dataset of textured shapes in VOC layout.",
    )
    synth.add_argument(
        "out_dir", metavar="OUT_DIR", help="dataset root, e.g. data/synth"
    )
    synth.add_argument(
        "--train", type=_count, default=2400, help="trainval images (default 2400: the default profile's 2,000 and its 400 validation images)"
    )
    synth.add_argument(
        "--test", type=_count, default=500, help="test images (default 500)"
    )
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument(
        "--workers", type=int, default=None, help="processes (default: up to 2)"
    )
    synth.add_argument(
        "--force", action="store_true", help="regenerate even if up to date"
    )
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.set_defaults(func=_synth)

    stats = sub.add_parser(
        "stats",
        help="images, objects, classes and size bins per split",
        description="Count images, objects (non-difficult), difficult objects and size bins per split.",
    )
    stats.add_argument(
        "root", metavar="ROOT", help="dataset root (VOCdevkit-like folder)"
    )
    stats.add_argument(
        "--split",
        action="append",
        dest="splits",
        metavar="S",
        help="split (repeatable; default all)",
    )
    stats.add_argument(
        "--years",
        nargs="+",
        metavar="Y",
        help="year folders, e.g. 2007 2012 (default all)",
    )
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    stats.set_defaults(func=_stats)

    check = sub.add_parser(
        "check",
        help="read every annotation and decode every image; list bad files",
        description="Read every annotation and decode every image. Prints 'path: reason' per bad "
        "file and exits 1 if any.",
    )
    check.add_argument(
        "root", metavar="ROOT", help="dataset root (VOCdevkit-like folder)"
    )
    check.add_argument(
        "--years", nargs="+", metavar="Y", help="year folders (default all)"
    )
    check.add_argument("--quiet", action="store_true", help="no progress bar")
    check.set_defaults(func=_check)


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _synth(args: argparse.Namespace) -> int:
    from ssdstudy.data.synth import generate, is_up_to_date

    if not args.force and is_up_to_date(args.out_dir, args.train, args.test, args.seed):
        print(
            f"{args.out_dir}: up to date ({args.train} trainval + {args.test} test, seed {args.seed})"
        )
        return 0
    start = time.perf_counter()
    from ssdstudy.runs import folder_lock

    with folder_lock(Path(args.out_dir).resolve()):  # one writer at a time
        folder = generate(
            args.out_dir,
            train=args.train,
            test=args.test,
            seed=args.seed,
            workers=args.workers,
            progress=not args.quiet,
            force=args.force,
        )
    print(
        f"{folder}: {args.train} trainval + {args.test} test images (seed {args.seed}) "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return 0


def _stats(args: argparse.Namespace) -> int:
    from ssdstudy.data.bins import SIZE_BINS
    from ssdstudy.data.checks import dataset_stats

    stats = dataset_stats(args.root, args.splits, years=args.years)
    if args.json:
        json.dump(stats, sys.stdout)
        sys.stdout.write("\n")
        return 0
    splits = list(stats["splits"])
    table = stats["splits"]
    print(
        f"dataset {stats['root']} ({', '.join(stats['folders'])}), {len(stats['classes'])} classes"
    )
    print()
    _print_table(
        ["split", "images", "objects", "difficult"],
        [
            [s, table[s]["images"], table[s]["objects"], table[s]["difficult"]]
            for s in splits
        ],
    )
    print()
    print("objects per class (difficult ones in parentheses; images holding the class)")
    rows = []
    for name in stats["classes"]:
        row = [name]
        for s in splits:
            c = table[s]["classes"][name]
            row.append(f"{c['objects']} ({c['difficult']}) in {c['images']}")
        rows.append(row)
    _print_table(["class", *splits], rows)
    print()
    print("images per size bin (box area / image area, %; an image counts when all its")
    print(
        "non-difficult objects share the bin; 'mixed' images are left out of the bins)"
    )
    rows = [[b, *(table[s]["bins"][b] for s in splits)] for b in SIZE_BINS]
    rows.append(["mixed", *(table[s]["unbinned"] for s in splits)])
    _print_table(["bin", *splits], rows)
    return 0


def _print_table(header: list[str], rows: list[list]) -> None:
    cells = [header, *([str(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        first, *rest = row
        print(
            "  ".join(
                [
                    first.ljust(widths[0]),
                    *(c.rjust(w) for c, w in zip(rest, widths[1:])),
                ]
            )
        )


def _check(args: argparse.Namespace) -> int:
    from ssdstudy.data.checks import check_dataset

    report = check_dataset(args.root, years=args.years, progress=not args.quiet)
    for problem in report.problems:
        print(problem)
    folders = ", ".join(f.name for f in report.folders)
    if report.problems:
        print(
            f"{len(report.problems)} bad file(s) in {args.root} ({folders}); "
            f"{report.annotations} annotations and {report.images} images read",
            file=sys.stderr,
        )
        return 1
    print(
        f"ok: {report.annotations} annotations read and {report.images} images decoded in {args.root} ({folders})"
    )
    return 0
