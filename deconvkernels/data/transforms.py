"""Image <-> tensor conversion with the ImageNet normalisation of torchvision's VGG16 weights."""

from __future__ import annotations

import numpy as np
import torch

#: Per-channel RGB mean and standard deviation (0..1 scale) that torchvision's VGG16 expects.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: The mean colour as uint8 RGB, used to pad crops: it normalises to within 0.01 of zero.
#: (``round(255 * IMAGENET_MEAN)``, written out so it is a plain constant.)
MEAN_PIXEL: tuple[int, int, int] = (124, 116, 104)

_MEAN = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 RGB -> ``(3, H, W)`` float32, scaled to 0..1 then normalised."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    return t.sub_(_MEAN).div_(_STD)


def denormalize(tensor: torch.Tensor) -> np.ndarray:
    """Undo :func:`to_tensor`: ``(3, H, W)`` -> ``(H, W, 3)`` uint8 RGB.

    A batch ``(N, 3, H, W)`` gives ``(N, H, W, 3)``. Values are rounded and clipped to 0..255.
    """
    t = tensor.detach().to("cpu", torch.float32)
    if t.dim() not in (3, 4) or t.shape[-3] != 3:
        raise ValueError(f"expected (3, H, W) or (N, 3, H, W), got {tuple(t.shape)}")
    t = (t * _STD + _MEAN).mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
    return t.movedim(-3, -1).contiguous().numpy()


def label_to_tensor(label: np.ndarray) -> torch.Tensor:
    """``(H, W)`` uint8 ids -> ``(H, W)`` int64, the dtype ``cross_entropy`` targets need."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"expected an (H, W) label map, got shape {label.shape}")
    return torch.from_numpy(label.astype(np.int64))
