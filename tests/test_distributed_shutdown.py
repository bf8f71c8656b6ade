"""shutdown_distributed: the end of a torchrun run, in one process (a gloo group of one)."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
import torch.distributed as dist
from torch import nn

from deconvkernels.train.distributed import shutdown_distributed


@pytest.fixture
def group_of_one(tmp_path):
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def test_outside_a_group_it_does_nothing():
    assert not dist.is_initialized()
    shutdown_distributed(succeeded=True)
    shutdown_distributed(succeeded=False)


def test_a_failed_run_leaves_the_group_alone(group_of_one):
    shutdown_distributed(succeeded=False)
    assert dist.is_initialized()


def test_a_finished_run_frees_ddp_and_the_group(group_of_one):
    gc.collect()
    gc.disable()  # as if the collector had not run since the DDP wrapper was dropped
    try:
        ddp = nn.parallel.DistributedDataParallel(nn.Linear(3, 2))
        ddp(torch.randn(4, 3)).sum().backward()
        alive = weakref.ref(ddp)
        del ddp
        # The wrapper sits in reference cycles: without a collection it outlives its last
        # reference, holding the process group (which then dies at interpreter exit).
        assert alive() is not None
        shutdown_distributed(succeeded=True)
        assert alive() is None
        assert not dist.is_initialized()
    finally:
        gc.enable()
