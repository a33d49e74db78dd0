"""``ssdstudy train PARAMS.yaml``: train, evaluate and time one run.

``torchrun --nproc-per-node N -m ssdstudy train PARAMS.yaml`` trains the same run on N
processes (see :mod:`ssdstudy.distributed`): the first checks and locks the run's
folder, writes its files and scores it; the run id and the folder are those of the
single-process run.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from ssdstudy.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train, evaluate and time one run",
        description="Train the run described by PARAMS.yaml (a RunConfig, optionally with "
        "'profile: NAME' to build on a profile), then evaluate and time it. Results go to "
        "results/<profile>/runs/<run id>/ unless --run-dir is given. A checkpoint is written "
        "every epoch; Ctrl-C keeps the last one and --resume continues from it. "
        "Under torchrun (torchrun --nproc-per-node N -m ssdstudy train ...) the run is trained "
        "on N processes (DistributedDataParallel; NCCL on CUDA, gloo on the CPU) with the same "
        "global batch, in the same folder.",
    )
    p.add_argument("params", help="parameter file (YAML)")
    p.add_argument("--run-dir", help="where the run's files go")
    p.add_argument("--profile", default="adhoc", help="results/<PROFILE>/ folder name (default: adhoc)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    group.add_argument("--restart", action="store_true",
                       help="discard the run's files (only those: other files in the folder stay) and start again")
    p.add_argument("--device", help="cpu, cuda or mps (default: the parameter file's train.device)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ssdstudy.train import flush_denormals

    flush_denormals()  # before anything starts torch's threads
    from ssdstudy import distributed
    from ssdstudy.config import load_run_config
    from ssdstudy.runs import RESULTS, RunPaths

    config = load_run_config(args.params)
    if args.device:
        config.train.device = args.device
    paths = RunPaths(Path(args.run_dir) if args.run_dir else RESULTS / args.profile / "runs" / config.run_id)
    with distributed.process_group(config.train.device):  # started by torchrun: join the others
        return _train(args, config, paths)


def _train(args: argparse.Namespace, config, paths) -> int:
    from ssdstudy import distributed
    from ssdstudy.locks import delegated
    from ssdstudy.pipeline import execute_run

    with contextlib.ExitStack() as held:

        def prepare() -> None:
            """The checks, the lock and --restart: by the first process alone (the only
            one that writes), before any process starts training."""
            other = _run_in(paths)
            if other is not None and other != config.run_id and not args.restart:
                # checked before anything is written: the folder's files keep describing its run
                raise UserError(f"{paths.root}: holds run {other}, not {config.run_id} (other parameters); "
                                "choose another --run-dir, or --restart to replace that run's files")
            if paths.checkpoint.exists() and not (args.resume or args.restart):
                raise UserError(f"{paths.root}: this run has a checkpoint; pass --resume to continue it or --restart")
            holder = held.enter_context(paths.locked())
            if holder is not None and not delegated(holder):  # a study training the run with torchrun holds it
                raise UserError(f"{paths.root}: another process is computing this run now ({holder})")
            if args.restart:
                paths.clear()  # the run's own files only: anything else in the folder stays
            # a generated dataset is made here, once, by one writer at a time (another run or
            # study may be making the same one)
            from ssdstudy.runs import locked_workspace

            locked_workspace(config, progress=not args.no_progress)

        distributed.on_main(prepare)
        try:
            result = execute_run(config, paths.root, progress=not args.no_progress)
        except KeyboardInterrupt:
            if distributed.is_main():
                print(f"interrupted: the last finished epoch is saved in {paths.checkpoint}; continue with --resume")
            return 130
    if result is None:  # another process than the first of a distributed run: it reports
        return 0
    m = result["metrics"]
    print(f"run {config.run_id}: VOC07 mAP {m['voc07_map']:.4f}, all-point mAP {m['voc_map']:.4f}")
    print(f"results in {paths.root}")
    return 0


def _run_in(paths) -> str | None:
    """The id of the run whose files are in ``paths`` (from its config.yaml), or None
    when the folder holds no run."""
    from ssdstudy.runs import read_config

    if not paths.config.is_file():
        return None
    try:
        return read_config(paths.config).run_id
    except Exception:  # noqa: BLE001 - an unreadable config.yaml: not ours to judge here
        return None
