"""Training: the stage loop, its settings, checkpoints and plots."""

from __future__ import annotations

from .checkpoint import load_checkpoint, load_model, save_checkpoint
from .config import TrainConfig
from .plots import plot_metrics, read_metrics
from .trainer import IGNORE_INDEX, Trainer, resolve_device

__all__ = [
    "IGNORE_INDEX",
    "TrainConfig",
    "Trainer",
    "load_checkpoint",
    "load_model",
    "plot_metrics",
    "read_metrics",
    "resolve_device",
    "save_checkpoint",
]
