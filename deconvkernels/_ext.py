"""Loads the compiled extension ``deconvkernels._C`` and says what it holds."""

from __future__ import annotations

import importlib
import types
from typing import Any

import torch

_C: types.ModuleType | None
_IMPORT_ERROR: BaseException | None
try:
    # Loading the library registers the torch.ops.deconvkernels schemas and kernels.
    _C = importlib.import_module("deconvkernels._C")

    _IMPORT_ERROR = None
except ImportError as exc:  # not built, or built against another torch
    _C = None
    _IMPORT_ERROR = exc


def extension_available() -> bool:
    """True when the compiled kernels are loaded (``torch.ops.deconvkernels`` is populated)."""
    return _C is not None


def import_error() -> BaseException | None:
    """Why the extension could not be loaded, or None."""
    return _IMPORT_ERROR


def build_info() -> dict[str, Any]:
    """What was compiled: CUDA or not, CUDA archs, CPU ISA variants, the torch it was built for.

    Also reports the CPU ISA variant chosen on this machine and whether a GPU is visible.
    """
    if _C is None:
        return {
            "extension": False,
            "error": repr(_IMPORT_ERROR),
            "torch_version": torch.__version__,
            "cuda_available": torch.cuda.is_available(),
        }
    info = dict(_C.build_info())
    info["extension"] = True
    info["cpu_isa_selected"] = _C.cpu_isa()
    info["torch_version_runtime"] = torch.__version__
    info["cuda_available"] = torch.cuda.is_available()
    return info


def cpu_isa() -> str:
    """The CPU kernel variant in use ("DEFAULT", "AVX2", "AVX512" or "AVX512_BF16")."""
    if _C is None:
        raise RuntimeError("deconvkernels: the compiled extension is not available")
    return _C.cpu_isa()


def set_cpu_isa(name: str | None) -> str:
    """Force a CPU kernel variant (tests and benchmarks); ``None`` returns to the CPU's best.

    Returns the variant now in use. Asking for one the CPU or the build lacks is a ValueError.
    """
    if _C is None:
        raise RuntimeError("deconvkernels: the compiled extension is not available")
    try:
        return _C.set_cpu_isa("" if name is None else name)
    except RuntimeError as exc:
        raise ValueError(str(exc)) from None


def available_cpu_isas() -> list[str]:
    """CPU kernel variants that are both compiled in and runnable on this CPU."""
    if _C is None:
        return []
    return list(_C.available_cpu_isas())
