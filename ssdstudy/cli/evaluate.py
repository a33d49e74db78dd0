"""``ssdstudy eval``: score a checkpoint or a detections file on a dataset split."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="VOC, COCO and size-bin mAP of a checkpoint or a detections file",
        description="Score detections on a split: VOC07 11-point and all-point AP per class, "
        "COCO metrics (pycocotools) and mAP per object-size bin.",
    )
    p.add_argument("--data", required=True, help="dataset root (VOCdevkit layout)")
    p.add_argument("--split", default="test", help="image set (default: test)")
    p.add_argument("--years", nargs="*", help="VOC years to read (default: every year with the split)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="an ssdstudy checkpoint")
    src.add_argument("--detections", help='a JSON list of {"image_id", "label", "bbox": [x1,y1,x2,y2], "score"}')
    p.add_argument("--difficult", choices=["ignore", "drop"], default="ignore",
                   help="difficult objects: ignore (VOC's rule and the study runs': neither true nor "
                   "false positives; default) or drop (a detection of one is a false positive)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ssdstudy.data import load_split, read_class_names
    from ssdstudy.evaluate import evaluate, format_table, read_detections, to_json
    from ssdstudy.workspace import resolve_device

    if args.checkpoint:
        from ssdstudy.pipeline import detect_records, load_model

        device = resolve_device(args.device)
        model, config, class_names = load_model(args.checkpoint, device)
        records = load_split(args.data, args.split, years=args.years, class_names=class_names,
                             keep_difficult=args.difficult == "ignore")
        detections = detect_records(model, records, config, torch.device(device), progress=not args.json)
    else:
        class_names = tuple(read_class_names(args.data))
        records = load_split(args.data, args.split, years=args.years, class_names=class_names,
                             keep_difficult=args.difficult == "ignore")
        detections = read_detections(args.detections, records, class_names)
    result = evaluate(records, detections, class_names)
    if args.json:
        print(json.dumps(to_json(result)))
    else:
        print(format_table(result))
    return 0
