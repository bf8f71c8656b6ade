"""BatchNorm calibration, the paper's third step: population statistics recomputed after
training over many batches, in forward passes only."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

__all__ = ["calibrate_bn"]


@torch.no_grad()
def calibrate_bn(
    model: nn.Module, batches: Iterable[torch.Tensor], num_batches: int | None = None,
    progress: bool = True,
) -> int:
    """Recompute every BatchNorm layer's ``running_mean``/``running_var`` as the plain average
    over ``batches`` (image tensors ``(N, 3, H, W)``; the first ``num_batches`` of them).

    Training updates those statistics by an exponential average of the last batches, taken
    while the weights still moved and on training crops; the paper recomputes them with the
    final weights before inference. Each layer is reset and switched to a cumulative average
    (``momentum=None``) for the passes; only BN buffers change. Returns the batches used.
    The model is left in eval mode.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        model.eval()
        return 0
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    device = next(model.parameters()).device
    model.train()
    used = 0
    try:
        for x in tqdm(batches, total=num_batches, desc="BN calibration", unit="batch",
                      disable=not progress, leave=False):
            if num_batches is not None and used >= num_batches:
                break
            model(x.to(device))
            used += 1
    finally:
        for m, momentum in zip(bns, momenta, strict=True):
            m.momentum = momentum
        model.eval()
    if used == 0:
        raise ValueError(
            "calibrate_bn: no batches: num_batches is 0, or the data gave fewer crops than one "
            "batch (the loader drops an incomplete last batch)"
        )
    return used
