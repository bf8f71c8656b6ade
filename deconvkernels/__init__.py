"""deconvkernels: DeconvNet's pooling-with-switches, unpooling and fused kernels for PyTorch.

Public ops (CPU and CUDA, forward and backward, ``torch.compile``-able)::

    y, switches = deconvkernels.max_pool2d_with_switches(x, 2)
    x_hat = deconvkernels.max_unpool2d_with_switches(y, switches, 2, output_size=x.shape[-2:])

``deconvkernels.use_backend("reference")`` runs everything on the pure-PyTorch twins instead.
"""

from __future__ import annotations

import torch  # noqa: F401  (loads libtorch before the extension)

from . import nn, reference
from ._backend import get_backend, set_backend, use_backend
from ._ext import available_cpu_isas, build_info, cpu_isa, extension_available, set_cpu_isa
from .ops import (
    indices_to_switches,
    max_pool2d_with_switches,
    max_unpool2d_with_switches,
    switches_to_indices,
    unpool_deconv2d,
)

__version__ = "0.1.0"

__all__ = [
    "available_cpu_isas",
    "build_info",
    "cpu_isa",
    "extension_available",
    "get_backend",
    "indices_to_switches",
    "max_pool2d_with_switches",
    "max_unpool2d_with_switches",
    "nn",
    "reference",
    "set_backend",
    "set_cpu_isa",
    "switches_to_indices",
    "unpool_deconv2d",
    "use_backend",
]
