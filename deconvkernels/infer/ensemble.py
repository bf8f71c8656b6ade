"""EDeconvNet: DeconvNet's scores combined with FCN-8s's (the paper's Sec. 4.3).

What the original release does (``generate_EDeconvNet_CRF_results.m``): DeconvNet's raw
scores (the ``seg-score`` blob, pre-softmax) are max-merged into a zero-initialised map, so
they are clipped at 0 in effect; FCN-8s's raw ``score`` blob is clipped at 0 explicitly;
the two are multiplied element-wise and the argmax taken; the CRF gets the softmax of that
product. The paper's text describes the mean of the two nets' probabilities instead; both
are offered here.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["ensemble_scores", "normalize_scores"]

EnsembleMode = Literal["product", "mean"]


def normalize_scores(scores: torch.Tensor) -> torch.Tensor:
    """Non-negative scores ``(..., C, H, W)`` divided by their sum over the classes.

    A pixel whose scores are all zero (no evidence at all) gets the uniform distribution
    ``1 / C``: its argmax is class 0 (background, ``argmax`` takes the first of equal
    values, as the original's all-zero pixels did) and a CRF fills it from its neighbours.
    """
    total = scores.sum(-3, keepdim=True)
    uniform = torch.full_like(scores, 1.0 / scores.shape[-3])
    return torch.where(total > 0, scores / total.clamp_min(torch.finfo(scores.dtype).tiny), uniform)


def ensemble_scores(
    deconvnet_scores: torch.Tensor, fcn_scores: torch.Tensor, mode: EnsembleMode = "product"
) -> torch.Tensor:
    """Combine two nets' class maps ``(C, H, W)`` (or ``(N, C, H, W)``) into probabilities.

    * ``"product"`` (the original code): negatives clipped to 0, then the element-wise
      product. With this library's probabilities (:func:`~.instance.predict_instances`,
      :func:`~.whole.predict_scores`) the clip does nothing; with raw scores (logits) it is
      the original's ``max(0, score)``, without which two negative scores would multiply to a
      positive one.
    * ``"mean"`` (the paper's text): the mean of two probability maps. Negative inputs are
      an error here: they mean logits were passed where probabilities belong.

    The result is normalised over the classes (:func:`normalize_scores`) so it is a
    distribution per pixel, ready for :func:`~.crf.dense_crf`; normalising does not change
    the argmax, the prediction. For the product of probabilities this is the renormalised
    product of experts (the original fed ``softmax(product)`` of logits to its CRF, which
    only makes sense on logit scales). Pixels where the product is 0 for every class get
    the uniform distribution.

    Returns:
        float32 probabilities, the shape of the inputs.
    """
    a = torch.as_tensor(deconvnet_scores).float()
    b = torch.as_tensor(fcn_scores).float().to(a.device)
    if a.shape != b.shape or a.dim() not in (3, 4):
        raise ValueError(
            "ensemble_scores: expected two (C, H, W) or (N, C, H, W) maps of one shape, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )
    if mode == "product":
        combined = a.clamp_min(0) * b.clamp_min(0)
    elif mode == "mean":
        if bool((a < 0).any()) or bool((b < 0).any()):
            raise ValueError(
                "ensemble_scores(mode='mean') averages probabilities; got negative scores "
                "(logits?): pass softmax outputs"
            )
        combined = 0.5 * (a + b)
    else:
        raise ValueError(f"ensemble_scores: mode must be 'product' or 'mean', got {mode!r}")
    return normalize_scores(combined)
