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
        # In a cycle (whether DDP makes one itself depends on what else torch has loaded:
        # in the whole suite it did not), the wrapper outlives its last reference until a
        # collection, holding the process group.
        ddp.__dict__["cycle"] = [ddp]
        alive = weakref.ref(ddp)
        del ddp
        assert alive() is not None
        shutdown_distributed(succeeded=True)
        assert alive() is None
        assert not dist.is_initialized()
    finally:
        gc.enable()
