"""One run trained by several processes (``torchrun``): the process group and who does what.

``torchrun --nproc-per-node N -m ssdstudy train RUN.yaml`` starts N processes and tells
each its place in the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``). ``ssdstudy train`` joins them into one process group
(:func:`process_group`: NCCL on CUDA, one GPU per process, the one of its local rank;
gloo on the CPU) and the :class:`~ssdstudy.train.Trainer` then trains with
:class:`~torch.nn.parallel.DistributedDataParallel`:

* the global batch stays ``train.batch_size``: each process takes
  ``batch_size // N`` images of it (:func:`per_process_batch`) from its own shard of a
  new shuffle each epoch (:func:`sampler`), and the gradients are averaged over the
  processes after every step; the optimiser steps and learning rates are the
  single-process run's;
* on CUDA the BatchNorm layers are synchronised (:class:`~torch.nn.SyncBatchNorm`):
  with small per-process batches their statistics would otherwise come from a few
  images each. torch synchronises BatchNorm on GPUs only; on the CPU each process
  normalises by its own batch (and DDP copies process 0's running statistics to the
  others at each step), one of the reasons two CPU processes do not reproduce one
  process's run exactly;
* only the first process (rank 0, :func:`is_main`) writes: the checkpoint, the history,
  the run's configuration, and after training the metrics, timing and provenance. It
  alone validates and scores the run; the others leave when training ends (waiting for
  a long scoring or timing step could pass the process group's time-out). A step the
  first process does alone before the others may go on (mending a checkpoint, making
  the dataset) goes through :func:`on_main`, which hands its error to every process,
  so that none waits for a process that has stopped.

The run id does not depend on the number of processes (it is the hash of the run's
parameters): a run trained on two processes resumes on one and the other way round
(the checkpoint holds the unwrapped model's state, with the keys of a single-process
run). ``provenance.json`` records how many processes trained it (:func:`describe`).

In a process torchrun did not start (or with ``--nproc-per-node 1``) every function
here is a no-op and training computes exactly what it always did.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from ssdstudy.errors import UserError

T = TypeVar("T")


def launched_world_size() -> int:
    """How many processes torchrun started for this run (1 when it did not start us)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise UserError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number of processes") from None


def local_rank() -> int:
    """This process's index on its machine (torchrun's ``LOCAL_RANK``; 0 without it)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def active() -> bool:
    """Whether this process belongs to a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """Whether this is the process that writes the run's files (rank 0, or the only one)."""
    return rank() == 0


def backend() -> str | None:
    """The process group's backend (``"nccl"``, ``"gloo"``); None in a single process."""
    return str(dist.get_backend()) if active() else None


def backend_for(device: torch.device) -> str:
    """NCCL for CUDA devices, gloo for the CPU."""
    if device.type == "cuda":
        return "nccl"
    if device.type == "cpu":
        return "gloo"
    raise UserError(f"train.device: {device.type} cannot train on several processes (use cuda or cpu)")


@contextlib.contextmanager
def process_group(device: str = "auto") -> Iterator[None]:
    """Join the process group that torchrun describes in the environment for the block,
    and leave it however the block ends (an error included, so that no process is left
    waiting for this one). Does nothing in a process torchrun did not start, in a group
    of one, or when a process group is already set up (whoever set it up ends it).

    Args:
        device: the run's ``train.device``: ``cuda`` (each process takes the GPU of its
            local rank) or ``cpu``; ``auto`` picks as :func:`~ssdstudy.workspace.resolve_device`.
    """
    if launched_world_size() <= 1 or (dist.is_available() and dist.is_initialized()):
        yield
        return
    if not dist.is_available():
        raise UserError("this torch was built without torch.distributed: train on one process")
    from ssdstudy.workspace import resolve_device

    dev = resolve_device(device)
    name = backend_for(dev)
    if dev.type == "cuda":
        if dev.index is not None:
            raise UserError(f"train.device: {device} names one GPU; with several processes name 'cuda' "
                            "(each process takes the GPU of its local rank)")
        if local_rank() >= torch.cuda.device_count():
            raise UserError(f"process of local rank {local_rank()}: only {torch.cuda.device_count()} "
                            "GPUs here; start at most one process per GPU")
        torch.cuda.set_device(local_rank())
    dist.init_process_group(name)
    try:
        yield
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process (nothing to wait for in a single process)."""
    if not active():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


class OtherProcessFailed(UserError):
    """Raised in the other processes when a step of the first process failed."""


def on_main(fn: Callable[[], T]) -> T:
    """Call ``fn`` in the first process while the others wait, then hand every process
    its result, or its error: the first process re-raises it, the others raise
    :class:`OtherProcessFailed` with its message. In a single process: ``fn()``.

    For what one process does alone before the others may go on: check and prepare the
    run's folder, make the dataset, mend a checkpoint. ``fn``'s result must pickle.
    """
    if not active():
        return fn()
    box: list[Any] = [None]
    error: BaseException | None = None
    if is_main():
        try:
            box[0] = ("ok", fn())
        except BaseException as err:  # noqa: BLE001 - handed to the others, then re-raised
            error = err
            message = str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
            box[0] = ("error", message)
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    status, value = box[0]
    if status == "error":
        raise OtherProcessFailed(f"process 0 stopped: {value}")
    return value


def per_process_batch(batch_size: int) -> int:
    """Each process's share of the global batch ``train.batch_size``."""
    n = world_size()
    if batch_size % n:
        raise UserError(f"train.batch_size={batch_size} does not divide among {n} processes: the global "
                        f"batch stays train.batch_size, so it must be a multiple of the number of processes")
    return batch_size // n


def sampler(dataset: Any, seed: int, epoch: int) -> torch.utils.data.DistributedSampler | None:
    """This process's shard of ``epoch``'s shuffle of ``dataset`` (a permutation seeded
    by ``seed + epoch``, its tail dropped so that every process gets as many images);
    None in a single process (the data loader shuffles)."""
    if not active():
        return None
    from torch.utils.data import DistributedSampler

    out = DistributedSampler(dataset, num_replicas=world_size(), rank=rank(), shuffle=True, seed=seed,
                             drop_last=True)
    out.set_epoch(epoch)
    return out


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The network to train: ``model`` itself in a single process; otherwise ``model``
    with its BatchNorm layers made synchronised (on CUDA; changed in place, so that
    ``model`` keeps being the module to save and score) inside
    :class:`~torch.nn.parallel.DistributedDataParallel`. Call it once ``model`` is on
    ``device``."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        if isinstance(model, torch.nn.modules.batchnorm._BatchNorm):
            raise TypeError("wrap: the model must contain its BatchNorm layers, not be one")
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # replaces model's layers
        return DistributedDataParallel(model, device_ids=[torch.cuda.current_device()])
    return DistributedDataParallel(model)


def sum_over_processes(sums: np.ndarray, count: int, device: torch.device) -> tuple[np.ndarray, int]:
    """``sums`` and ``count`` added up over the processes (unchanged in a single one)."""
    if not active():
        return sums, count
    if dist.get_backend() != "nccl":
        device = torch.device("cpu")
    totals = torch.as_tensor(np.append(np.asarray(sums, dtype=np.float64), count), device=device)
    dist.all_reduce(totals)
    totals = totals.cpu().numpy()
    return totals[:-1], round(float(totals[-1]))


#: What torchrun sets for the processes it starts: a launch from inside another
#: distributed job drops them, so that it starts a process group of its own.
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def train_command(config: os.PathLike | str, run_dir: os.PathLike | str, processes: int,
                  *options: str) -> list[str]:
    """The command that trains the run of ``config`` in ``run_dir`` (``ssdstudy train``
    with ``options``) on ``processes`` processes: under ``torchrun --standalone`` (which
    picks a free port; torchrun is ``python -m torch.distributed.run``) when more than one,
    in this interpreter either way."""
    cmd = [sys.executable]
    if processes > 1:
        cmd += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    return cmd + ["-m", "ssdstudy", "train", str(config), "--run-dir", str(run_dir), *options]


def launch_env(threads: int, **more: str) -> dict[str, str]:
    """This process's environment for :func:`train_command`: each process computes with
    ``threads`` threads, and no variable of an enclosing torchrun job
    (:data:`LAUNCH_VARIABLES`) is passed on."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), **more}
    for name in LAUNCH_VARIABLES:
        env.pop(name, None)
    return env


def describe() -> dict[str, Any]:
    """What ``provenance.json`` records: ``{"processes": N, "distributed_backend": name or None}``."""
    return {"processes": world_size(), "distributed_backend": backend()}


__all__ = [
    "LAUNCH_VARIABLES", "OtherProcessFailed", "active", "backend", "backend_for", "barrier", "describe",
    "is_main", "launch_env", "launched_world_size", "local_rank", "on_main", "per_process_batch",
    "process_group", "rank", "sampler", "sum_over_processes", "train_command", "world_size", "wrap",
]
