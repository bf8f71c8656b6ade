"""Inference: whole-image prediction and evaluation, the paper's instance-wise inference
over object proposals, the FCN-8s ensemble (EDeconvNet) and the dense CRF."""

from __future__ import annotations

from .crf import crf_available, dense_crf, require_crf
from .ensemble import ensemble_scores, normalize_scores
from .instance import (
    aggregate_box_scores,
    evaluate_instances,
    predict_instances,
    segment_instances,
    select_proposals,
)
from .whole import (
    eval_mode,
    evaluate,
    evaluate_images,
    network_input_size,
    predict_scores,
    segment,
)

__all__ = [
    "aggregate_box_scores",
    "crf_available",
    "dense_crf",
    "ensemble_scores",
    "eval_mode",
    "evaluate",
    "evaluate_images",
    "evaluate_instances",
    "network_input_size",
    "normalize_scores",
    "predict_instances",
    "predict_scores",
    "require_crf",
    "segment",
    "segment_instances",
    "select_proposals",
]
