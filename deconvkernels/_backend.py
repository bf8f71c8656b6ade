"""Which implementation the public ops run: the compiled extension or the reference."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator

from ._ext import extension_available, import_error

BACKENDS = ("extension", "reference")
_ENV_VAR = "DECONVKERNELS_BACKEND"


def _from_env() -> str:
    name = os.environ.get(_ENV_VAR, "extension").strip().lower() or "extension"
    if name not in BACKENDS:
        raise ValueError(f"{_ENV_VAR} must be one of {BACKENDS}, got {name!r}")
    return name


_requested = _from_env()
_warned = False


def _effective(name: str) -> str:
    global _warned
    if name == "extension" and not extension_available():
        if not _warned:
            warnings.warn(
                "deconvkernels: the compiled extension is not available "
                f"({import_error()!r}); using the pure-PyTorch reference ops. "
                "Build it with `pip install --no-build-isolation .`.",
                RuntimeWarning,
                stacklevel=3,
            )
            _warned = True
        return "reference"
    return name


def get_backend() -> str:
    """The backend the public ops use now: ``"extension"`` or ``"reference"``."""
    return _effective(_requested)


def set_backend(name: str) -> None:
    """Switch every op, and so every model, to ``name`` ("extension" or "reference")."""
    global _requested
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    _requested = name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager: run the enclosed code on backend ``name``, then restore the previous one.

    >>> with deconvkernels.use_backend("reference"):
    ...     y, switches = deconvkernels.max_pool2d_with_switches(x, 2)
    """
    global _requested
    previous = _requested
    set_backend(name)
    try:
        yield
    finally:
        _requested = previous


def use_extension() -> bool:
    return get_backend() == "extension"
