"""Checkpoints: written atomically, read back with clear errors, models rebuilt from them."""

from __future__ import annotations

import os
import tempfile
from typing import Any

import torch
from torch import nn

from ..models import build_model, model_config

__all__ = ["save_checkpoint", "load_checkpoint", "load_model", "load_weights"]


def save_checkpoint(path: str | os.PathLike, model: nn.Module, **extra: Any) -> str:
    """Write ``model``'s weights, its constructor arguments (``model_config``) and ``extra``
    to ``path``: a temporary file in the same folder, flushed to disk, then renamed over
    ``path``, so a run killed mid-write never leaves a half-written checkpoint."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    module = model.module if hasattr(model, "module") else model
    payload = {"model": module.state_dict(), "model_config": model_config(module), **extra}
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (on the CPU)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path!r}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated or foreign file
        raise ValueError(f"checkpoint {path!r} is unreadable (truncated or corrupt?): {e}") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        raise ValueError(f"{path!r} is not a deconvkernels checkpoint (no model / model_config)")
    return ckpt


def load_weights(model: nn.Module, ckpt: dict[str, Any], path: str | os.PathLike) -> None:
    """Copy a checkpoint's weights into ``model`` (or a DDP wrapper's module); a checkpoint
    of another architecture is a ``ValueError`` naming ``path``."""
    module = model.module if hasattr(model, "module") else model
    try:
        module.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise ValueError(f"checkpoint {os.fspath(path)!r} does not fit this model: {e}") from e


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint was saved from; returns ``(model in eval mode, ckpt)``."""
    ckpt = load_checkpoint(path)
    model = build_model(**ckpt["model_config"])
    load_weights(model, ckpt, path)
    return model.to(device).eval(), ckpt
