"""Inference: whole-image prediction and evaluation (proposal-based inference, the FCN
ensemble and the CRF build on these)."""

from __future__ import annotations

from .whole import evaluate, network_input_size, predict_scores, segment

__all__ = ["evaluate", "network_input_size", "predict_scores", "segment"]
