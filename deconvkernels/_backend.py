"""Which implementation the public ops run: the compiled extension or the reference."""

from __future__ import annotations

import contextlib
import contextvars
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


# The process-wide choice (DECONVKERNELS_BACKEND, set_backend), and use_backend's override
# for the current thread or asyncio task only, as torch.no_grad and autocast are per thread:
# a `with use_backend(...)` in one thread neither changes nor can leave behind the backend
# another thread runs on.
_process_backend = _from_env()
_override: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "deconvkernels_backend", default=None
)
_warned = False


def _checked(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return name


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
    """The backend the public ops use now, in this thread: ``"extension"`` or ``"reference"``."""
    name = _override.get()
    return _effective(_process_backend if name is None else name)


def set_backend(name: str) -> None:
    """Switch every op, and so every model, to ``name`` ("extension" or "reference"), in every
    thread. A :func:`use_backend` block active in a thread still decides there."""
    global _process_backend
    _process_backend = _checked(name)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager: run the enclosed code on backend ``name``, then restore the previous one.

    The choice holds for the current thread (and asyncio task) only; other threads keep
    theirs, as with ``torch.no_grad()``.

    >>> with deconvkernels.use_backend("reference"):
    ...     y, switches = deconvkernels.max_pool2d_with_switches(x, 2)
    """
    token = _override.set(_checked(name))
    try:
        yield
    finally:
        _override.reset(token)


def use_extension() -> bool:
    return get_backend() == "extension"
