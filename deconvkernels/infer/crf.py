"""Fully connected CRF post-processing (Krähenbühl & Koltun, NIPS 2011) through pydensecrf2.

The paper's last step. The defaults are the original release's settings
(``generate_EDeconvNet_CRF_results.m``): a smoothness kernel with xy std 3 and weight 3, an
appearance kernel with xy std 20, RGB std 3 and weight 5, 10 mean-field iterations, unaries
``-log p``. pydensecrf2 is the optional ``[crf]`` extra (it builds from source); its import
name is ``pydensecrf``.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np
import torch

__all__ = ["crf_available", "dense_crf", "require_crf"]

_MISSING = "dense CRF needs the optional extra: pip install 'deconvkernels[crf]' (pydensecrf2)"
# Floor of the probabilities before the log, so a hard 0 gives a large finite unary.
_EPS = 1e-8


def _densecrf() -> ModuleType:
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as e:
        raise ImportError(_MISSING) from e
    return dcrf


def crf_available() -> bool:
    """Whether the ``[crf]`` extra (pydensecrf2) is importable."""
    try:
        _densecrf()
    except ImportError:
        return False
    return True


def require_crf() -> None:
    """Raise the ``ImportError`` naming the ``[crf]`` extra unless pydensecrf2 is importable."""
    _densecrf()


def dense_crf(
    image: np.ndarray,
    probabilities: torch.Tensor | np.ndarray,
    iterations: int = 10,
    gaussian_sxy: float = 3.0,
    gaussian_compat: float = 3.0,
    bilateral_sxy: float = 20.0,
    bilateral_srgb: float = 3.0,
    bilateral_compat: float = 5.0,
    return_probabilities: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Refine per-pixel class probabilities with a dense CRF; return the label map.

    Args:
        image: ``(H, W, 3)`` uint8 RGB, the image the probabilities belong to (the
            appearance kernel compares its colours).
        probabilities: ``(C, H, W)`` non-negative scores per pixel, e.g. from
            :func:`~.ensemble.ensemble_scores`; each pixel is renormalised to sum 1.
        iterations: mean-field iterations.
        gaussian_sxy, gaussian_compat: the smoothness kernel's xy std (pixels) and Potts
            weight.
        bilateral_sxy, bilateral_srgb, bilateral_compat: the appearance kernel's xy std,
            colour std (0..255) and Potts weight.
        return_probabilities: also return the CRF's marginals.

    Returns:
        ``(H, W)`` uint8 labels, or ``(labels, marginals (C, H, W) float32)``.

    Raises:
        ImportError: pydensecrf2 is not installed (the message names the extra).
    """
    dcrf = _densecrf()
    image = np.asarray(image)
    probs = torch.as_tensor(probabilities).detach().to("cpu", torch.float32).numpy()
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"dense_crf: expected an (H, W, 3) uint8 image, got "
                         f"{image.dtype} {image.shape}")
    if probs.ndim != 3 or probs.shape[1:] != image.shape[:2]:
        raise ValueError(f"dense_crf: expected probabilities (C, {image.shape[0]}, "
                         f"{image.shape[1]}), got {probs.shape}")
    c, h, w = probs.shape
    if not 1 <= c <= 256:
        raise ValueError(f"dense_crf: {c} classes do not fit uint8 labels")
    if iterations < 0:
        raise ValueError(f"dense_crf: iterations must be >= 0, got {iterations}")
    probs = np.clip(probs, 0, None)
    probs = probs / np.maximum(probs.sum(0, keepdims=True), _EPS)
    unary = np.ascontiguousarray(-np.log(np.maximum(probs, _EPS)).reshape(c, h * w))
    crf = dcrf.DenseCRF2D(w, h, c)
    crf.setUnaryEnergy(unary.astype(np.float32))
    crf.addPairwiseGaussian(sxy=gaussian_sxy, compat=gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=np.ascontiguousarray(image),
        compat=bilateral_compat,
    )
    marginals = np.asarray(crf.inference(int(iterations)), np.float32).reshape(c, h, w)
    labels = marginals.argmax(0).astype(np.uint8)
    return (labels, marginals) if return_probabilities else labels
