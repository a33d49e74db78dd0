"""``ssdstudy study``: run the experiments of a profile and build the book."""

from __future__ import annotations

import argparse

from ssdstudy.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="run the study's experiments and build the book",
                       description="Expand a profile's experiments into runs, execute the missing "
                       "ones with papermill, execute the chapters, build the book.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--profile", default="default", help="parameters/profiles/<PROFILE>.yaml")
    common.add_argument("--no-progress", action="store_true")

    r = actions.add_parser("run", parents=[common], help="train the missing runs and execute the chapters",
                           description="Train every missing run (a run shared by several experiments is "
                           "trained once), then execute the chapter notebooks. Rerunning skips what is done "
                           "and resumes interrupted runs.")
    r.add_argument("--only", nargs="+", metavar="EXPERIMENT", help="only these experiments")
    r.add_argument("--runs", nargs="+", metavar="RUN_ID",
                   help="compute only these runs of the plan (in this order) and execute no chapter")
    r.add_argument("--workers", type=int, metavar="N",
                   help="compute N runs at once on a local Dask cluster (the CPU threads divided between them)")
    r.add_argument("--scheduler", metavar="ADDRESS",
                   help="compute the runs on the workers of this Dask cluster (they must share results/)")
    r.add_argument("--nproc-per-node", type=int, default=1, metavar="N",
                   help="train each run with N data-parallel processes (torchrun: gloo on the CPU, NCCL on "
                   "GPUs; the global batch and the run ids stay the same)")
    r.add_argument("--dry-run", action="store_true", help="list the plan and an estimate of its time")
    r.set_defaults(func=run)

    t = actions.add_parser("train", parents=[common], help="train runs of the plan side by side, no notebooks",
                           description="Train the given runs of the plan, AT_ONCE at a time, each in its own "
                           "`ssdstudy train` process (one GPU is shared best by several runs), the CPUs divided "
                           "between them; score and time each, but execute no notebook (`ssdstudy study run` "
                           "executes them later without training). For a machine held for a limited time: "
                           "--minutes stops the runs still going, --pack saves each finished run's files (no "
                           "checkpoint) as soon as it finishes.")
    t.add_argument("--runs", nargs="+", metavar="RUN_ID", required=True, help="runs of the plan, in this order")
    t.add_argument("--at-once", type=int, default=1, metavar="N", help="runs trained at the same time (default 1)")
    t.add_argument("--minutes", type=float, metavar="M",
                   help="stop the runs still going after M minutes (they resume from their last epoch)")
    t.add_argument("--pack", metavar="DIR", help="write DIR/<run id>.tar.gz of each run as it finishes "
                   "(unpack into results/<profile>/runs/)")
    t.add_argument("--logs", metavar="DIR", help="each run's output in DIR/<run id>.log (default: a temporary folder)")
    t.add_argument("--loader-workers", type=int, metavar="N",
                   help="data-loader processes per run (default: its share of the CPUs, less one)")
    t.add_argument("--device", help="cuda, cpu or mps (default: the profile's train.device)")
    t.set_defaults(func=train)

    b = actions.add_parser("book", parents=[common], help="build the book from the executed chapters")
    b.set_defaults(func=book)

    a = actions.add_parser("all", parents=[common], help="data, runs, chapters and the book")
    a.add_argument("--no-train", action="store_true",
                   help="train nothing: build the chapters and the book from the runs found (the published "
                   "study); runs still to compute are listed")
    a.set_defaults(func=run_all)

    v = actions.add_parser("claims", parents=[common], help="the verdict on each of the study's claims",
                           description="Each of the original study's eight claims, its verdict and its checks "
                           "(statement, outcome, the numbers behind it), from the results at hand: the same as "
                           "the conclusions chapter.")
    v.add_argument("--json", action="store_true",
                   help='print a JSON list of {"claim", "status", "scope", "checks": [{"statement", "outcome", '
                   '"detail"}]}')
    v.set_defaults(func=claims)

    c = actions.add_parser("check", parents=[common], help="check the published runs",
                           description="Check every finished run of the profile: its config hashes to "
                           "its id, its metrics equal its outcomes scored again, its commit is in this "
                           "repository, it was computed by the code at hand, and its files name no path "
                           "of the machine that made them. Lists the plan's runs still to compute.")
    c.set_defaults(func=check)

    f = actions.add_parser("fields", parents=[common], help="publish the receptive fields of the trained baselines",
                           description="Measure the theoretical and effective receptive fields of the source maps "
                           "of the profile's baselines (effective ones from their checkpoints, which only the "
                           "machine that trained them has) and write results/<profile>/receptive-fields.json "
                           "for the receptive-fields chapter.")
    f.add_argument("--images", type=int, default=50, help="test images averaged for an effective field")
    f.set_defaults(func=fields)


def claims(args: argparse.Namespace) -> int:
    import json

    from ssdstudy.study import profile_verdicts

    verdicts = profile_verdicts(args.profile)
    if args.json:
        print(json.dumps([v.to_dict() for v in verdicts], indent=2))
        return 0
    for v in verdicts:
        scope = f"; {v.scope}" if v.scope else ""
        print(f"claim {v.number}: {v.status}{scope} ({v.summary()})")
        for c in v.checks:
            print(f"  - {c.statement}: {c.outcome}" + (f" ({c.detail})" if c.detail else ""))
    return 0


def fields(args: argparse.Namespace) -> int:
    from ssdstudy.receptive import write_fields

    if args.images < 1:
        raise UserError(f"--images must be at least 1, got {args.images}")
    path = write_fields(args.profile, images=args.images)
    print(f"receptive fields: {path}")
    return 0


def check(args: argparse.Namespace) -> int:
    import pandas as pd

    from ssdstudy.checks import MAP_FLOOR
    from ssdstudy.published import check_published
    from ssdstudy.results import FLAT_GAIN, LOSS_JUMP, clipped_text, curve_end, jump_text, loss_jumps
    from ssdstudy.study import make_plan

    problems = check_published(args.profile)
    plan = make_plan(args.profile)
    longest = max((cfg.train.epochs for cfg in plan.runs.values()), default=0)
    rising, short, unlearned, jumped = [], [], [], []
    for run_id, found in problems.items():
        curve = ""
        history = plan.paths(run_id).history
        if not found and history.is_file():  # a run with problems is reported by them alone
            frame = pd.read_csv(history)
            end = curve_end(frame)
            if end["val_map"] < MAP_FLOOR:  # a flat end below the floor is not convergence
                curve = (f"; did not learn: validation VOC07 mAP {end['val_map']:.3f} at its end, "
                         f"below the floor of {MAP_FLOOR:g}")
                unlearned.append(run_id)
            elif end["curve_flat"] is not None:
                curve = (f"; validation curve {'flat' if end['curve_flat'] else 'still rising'} at its end "
                         f"(last step {end['val_last_gain']:+.3f}, limit {FLAT_GAIN:g})")
                if not end["curve_flat"]:
                    cfg = plan.runs.get(run_id)
                    (short if cfg is not None and cfg.train.epochs < longest else rising).append(run_id)
            jumps = loss_jumps(frame)
            if jumps:
                curve += f"; training loss jumped at {jump_text(jumps)}"
                jumped.append(run_id)
            if clipped_text(frame):
                curve += f"; {clipped_text(frame)}"
        print(f"{run_id}: {'ok' if not found else '; '.join(found)}{curve}")
    missing = plan.missing()
    print(f"{sum(not p for p in problems.values())} of {len(plan.runs)} runs of the {args.profile} plan "
          f"published and sound; {len(missing)} still to compute")
    if rising:
        print(f"{len(rising)} published runs were stopped while their validation curve still rose: "
              f"{', '.join(rising)}")
    if short:
        print(f"{len(short)} runs of a short protocol (fewer epochs than the plan's {longest}, as mining's) "
              f"still rose when they stopped, by design: {', '.join(short)}")
    if jumped:
        print(f"{len(jumped)} published runs had their mean training loss jump by more than {LOSS_JUMP:g}x from one "
              f"epoch to the next (an unstable recipe; the chapters name them): {', '.join(jumped)}")
    if unlearned:
        print(f"{len(unlearned)} published runs did not learn (below the mAP floor; the claims cannot test "
              f"with them): {', '.join(unlearned)}")
    return 1 if any(problems.values()) else 0


def run(args: argparse.Namespace) -> int:
    from ssdstudy.study import Study, describe, make_plan

    if args.dry_run:
        print(describe(make_plan(args.profile, args.only)))
        return 0
    if args.nproc_per_node < 1:
        raise UserError(f"--nproc-per-node must be at least 1, got {args.nproc_per_node}")
    if args.nproc_per_node > 1 and (args.workers or args.scheduler):
        raise UserError("--nproc-per-node trains one run at a time on this machine; it does not combine "
                        "with --workers or --scheduler")
    study = Study(args.profile, only=args.only, progress=not args.no_progress, processes=args.nproc_per_node)
    unknown = [r for r in args.runs or [] if r not in study.plan.runs]
    if unknown:
        raise UserError(f"parameters/profiles/{args.profile}.yaml: no run {', '.join(unknown)} in this "
                        "profile's plan (`ssdstudy study run --dry-run` lists its runs)")
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    with study.exclusive():
        study.prepare_data()
        missing = set(study.plan.missing())
        ids = [r for r in args.runs if r in missing] if args.runs else None
        if args.workers or args.scheduler:
            from ssdstudy.cluster import client, run_runs_on

            with client(args.workers, args.scheduler) as dask_client:
                run_runs_on(study, dask_client, ids)
        else:
            study.run_runs(ids)
        if not args.runs:
            study.run_chapters()
    print(study.report())
    return 1 if study.failures else 0


def train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ssdstudy.batch import train_runs

    if args.minutes is not None and args.minutes <= 0:
        raise UserError(f"--minutes must be positive, got {args.minutes}")
    if args.loader_workers is not None and args.loader_workers < 0:
        raise UserError(f"--loader-workers must be 0 or more, got {args.loader_workers}")
    outcomes = train_runs(
        args.profile, args.runs, at_once=args.at_once, until=None if args.minutes is None else args.minutes * 60,
        pack=Path(args.pack) if args.pack else None, logs=Path(args.logs) if args.logs else None,
        loader_workers=args.loader_workers, device=args.device, report=lambda line: print(line, flush=True),
    )
    finished = [r for r, o in outcomes.items() if o.state == "finished"]
    print(f"{len(finished)} of {len(outcomes)} runs finished" + (f": {', '.join(finished)}" if finished else ""))
    return 0 if len(finished) == len(outcomes) else 1


def book(args: argparse.Namespace) -> int:
    from ssdstudy.study import Study

    index = Study(args.profile, progress=not args.no_progress).build_book()
    print(f"book: {index}")
    return 0


def run_all(args: argparse.Namespace) -> int:
    from ssdstudy.study import run_study

    study = run_study(args.profile, progress=not args.no_progress, train=not args.no_train)
    print(study.report())
    if study.failures:
        return 1
    print(f"book: {study.root / '_build' / 'html' / 'index.html'} ({study.seconds / 60:.1f} min)")
    return 0
