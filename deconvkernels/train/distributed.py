"""Multi-process training through ``torchrun``: process group set-up from its environment.

``torchrun --nproc_per_node=N [--nnodes=M --node_rank=R --rdzv_endpoint=HOST:PORT] -m
deconvkernels.train ARGS`` (or ``deconvnet train ARGS`` under torchrun) starts one process per
GPU (or N CPU processes); each calls :func:`init_distributed`, which reads ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` and joins the group: NCCL on GPUs, gloo on the CPU.
"""

from __future__ import annotations

import gc
import os

import torch
import torch.distributed as dist

__all__ = ["init_distributed", "is_main_process", "rank_and_world", "shutdown_distributed"]


def init_distributed(device: str = "auto") -> torch.device | None:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1); returns this
    process's device (``cuda:LOCAL_RANK`` or the CPU), or ``None`` when not distributed."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    if dist.is_initialized():
        return _device(device)
    dev = _device(device)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend=backend)
    return dev


def _device(device: str) -> torch.device:
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(device)


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Rank 0 (or not distributed): the process that logs and writes checkpoints."""
    return rank_and_world()[0] == 0


def shutdown_distributed(*, succeeded: bool) -> None:
    """Leave the process group at the end of a run (no-op outside one).

    After a run that ``succeeded`` on this rank, every rank first meets at a barrier, so none
    tears its connections down while another still works on the group (rank 0 writes the
    checkpoint and plots after the last step, the others had nothing left to do). Then the
    ``DistributedDataParallel`` wrappers, which can sit in reference cycles (after a CLI
    run one outlived ``cmd_train`` until a collection) and hold the group, are collected
    while the interpreter is whole, and the group is destroyed here rather
    than during interpreter finalisation. A rare CI failure, ``terminate called without an
    active exception`` (SIGABRT) in a rank that had finished, came from this teardown; which
    of the two orderings caused it could not be reproduced on demand, so both are fixed.

    After a failure the barrier would wait on ranks that may never come, and destroying an
    NCCL group whose peers are inside a collective can hang: the process just exits, and
    torchrun stops the other ranks.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if not succeeded:
        return
    dist.barrier()
    gc.collect()
    dist.destroy_process_group()
