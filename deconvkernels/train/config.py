"""Training settings of one stage, with the paper's optimiser as defaults."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TrainConfig"]


@dataclass
class TrainConfig:
    """One training stage.

    Defaults follow the paper's stage 1: SGD with learning rate 0.01, momentum 0.9, weight
    decay 5e-4, the rate times ``lr_gamma`` (0.1) at each of ``lr_steps``; effective batch
    ``batch_size * accumulate`` (the original: 8 x 8 = 64). ``iterations`` counts optimiser
    steps. ``log_every`` sets how often a line reaches ``metrics.jsonl``; ``eval_every``
    (0: only at the end) how often the evaluation callback runs.

    ``amp``: ``"none"`` (float32), ``"bf16"`` (autocast to bfloat16, CPU or CUDA) or
    ``"fp16"`` (autocast to float16 with a gradient scaler, CUDA). ``checkpoint_every``
    (0: only at the end) writes a resumable checkpoint every so many steps, keeping the last
    ``keep_last``.
    """

    iterations: int = 20000
    batch_size: int = 8
    accumulate: int = 8
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_steps: tuple[int, ...] = (9000,)
    lr_gamma: float = 0.1
    num_workers: int = 0
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0
    device: str = "auto"
    channels_last: bool = False
    amp: str = "none"
    sync_bn: bool = False
    checkpoint_every: int = 0
    keep_last: int = 3
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        positive = ("iterations", "batch_size", "accumulate", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):  # a NaN passes `lr <= 0`
            raise ValueError(f"TrainConfig.lr must be finite and > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"TrainConfig.momentum must be in [0, 1), got {self.momentum}")
        if self.amp not in ("none", "bf16", "fp16"):
            raise ValueError(f"TrainConfig.amp must be 'none', 'bf16' or 'fp16', got {self.amp!r}")
        if self.checkpoint_every < 0 or self.keep_last < 1:
            raise ValueError("TrainConfig: checkpoint_every must be >= 0 and keep_last >= 1")
        if self.num_workers < 0 or self.eval_every < 0 or self.weight_decay < 0:
            raise ValueError("TrainConfig: num_workers, eval_every, weight_decay must be >= 0")
        self.lr_steps = tuple(int(s) for s in self.lr_steps)
        # The scheduler counts finished steps from 0 and decays when the count reaches a
        # milestone, so a milestone 0 never decays; a repeated one decays twice at once.
        if any(s < 1 for s in self.lr_steps):
            raise ValueError(f"TrainConfig.lr_steps must all be >= 1, got {list(self.lr_steps)}")
        if list(self.lr_steps) != sorted(set(self.lr_steps)):
            raise ValueError(
                f"TrainConfig.lr_steps must be strictly increasing, got {list(self.lr_steps)}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready)."""
        d = dataclasses.asdict(self)
        d["lr_steps"] = list(self.lr_steps)
        return d
