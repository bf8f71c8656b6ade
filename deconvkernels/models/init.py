"""Initialisation as in the original release, and VGG16 weights from a local file.

The encoder comes from a torchvision-format VGG16 state dict (``vgg16`` or ``vgg16_bn``,
e.g. ``torchvision.models.vgg16(weights=...).state_dict()`` saved with ``torch.save``); fc6
and fc7 take the classifier's first two ``Linear`` weights reshaped to convolutions. What is
not loaded is drawn as the original did: decoder (de)convolutions Gaussian with std 0.01 and
zero bias, every BatchNorm scale 1 and shift 0.001. Nothing is downloaded.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

__all__ = ["init_decoder_", "load_vgg16_", "read_state_dict"]

# torchvision's VGG16 ``features`` indices of the 13 convolutions; with BN every conv is
# followed by BN and ReLU, so the indices shift.
_VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_VGG16_BN_CONVS = (0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40)
_BN_KEYS = ("weight", "bias", "running_mean", "running_var")


def init_decoder_(model: nn.Module, std: float = 0.01, bn_shift: float = 0.001) -> None:
    """Initialise ``model`` in place as the original release: the encoder (attribute
    ``encoder``) as torchvision's VGG (He normal, fan-out), every other convolution and
    deconvolution Gaussian with ``std`` and zero bias, every BatchNorm scale 1 and shift
    ``bn_shift``."""
    encoder = getattr(model, "encoder", None)
    encoder_modules = {id(m) for m in encoder.modules()} if encoder is not None else set()
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            if id(m) in encoder_modules:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            else:
                nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(m.weight)
            nn.init.constant_(m.bias, bn_shift)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a state dict saved with ``torch.save`` (plain, or under ``state_dict``/``model``)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path!r}")
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise ValueError(f"cannot read weights file {path!r}: {e}") from e
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path!r} does not hold a state dict of tensors")
    return obj


def _copy(dst: torch.Tensor, src: torch.Tensor, key: str, path: str) -> None:
    if dst.numel() != src.numel():
        raise ValueError(
            f"{path!r}: key {key!r} has shape {tuple(src.shape)}, the model expects "
            f"{tuple(dst.shape)} (VGG16 weights fit width=1 only)"
        )
    with torch.no_grad():
        dst.copy_(src.reshape(dst.shape))


@torch.no_grad()
def load_vgg16_(
    model: nn.Module, path: str | os.PathLike, include_fc: bool | None = None
) -> list[str]:
    """Copy VGG16 weights from a torchvision-format state-dict file into ``model``'s encoder.

    ``model`` has an ``encoder`` (:class:`~deconvkernels.models.deconvnet.Encoder`) and, for
    DeconvNet, ``fc6``/``fc7``. With a ``vgg16_bn`` file the BN parameters and statistics are
    copied too. ``include_fc`` (default: when the model has fc6) also maps
    ``classifier.0``/``classifier.3`` to fc6/fc7, which needs ``width=1, input_size=224``.
    Returns the keys used. A missing key or shape mismatch is a ``ValueError`` naming them.
    """
    path = os.fspath(path)
    state = read_state_dict(path)
    batchnorm = "features.1.running_mean" in state
    convs = _VGG16_BN_CONVS if batchnorm else _VGG16_CONVS
    wanted = [f"features.{i}.{p}" for i in convs for p in ("weight", "bias")]
    if batchnorm:
        wanted += [f"features.{i + 1}.{p}" for i in convs for p in _BN_KEYS]
    if include_fc is None:
        include_fc = hasattr(model, "fc6")
    if include_fc:
        wanted += [f"classifier.{i}.{p}" for i in (0, 3) for p in ("weight", "bias")]
    missing = [k for k in wanted if k not in state]
    if missing:
        raise ValueError(
            f"{path!r} is not a torchvision VGG16 state dict: missing keys {missing[:8]}"
            + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        )
    blocks = [block for stage in model.encoder.stages for block in stage]
    if len(blocks) != len(convs):
        raise ValueError(f"model encoder has {len(blocks)} convolutions, VGG16 has 13")
    for block, i in zip(blocks, convs, strict=True):
        conv, bn = block[0], block[1]
        _copy(conv.weight, state[f"features.{i}.weight"], f"features.{i}.weight", path)
        _copy(conv.bias, state[f"features.{i}.bias"], f"features.{i}.bias", path)
        if batchnorm:
            for p in _BN_KEYS:
                key = f"features.{i + 1}.{p}"
                _copy(getattr(bn, p), state[key], key, path)
    if include_fc:
        for layer, i in ((model.fc6, 0), (model.fc7, 3)):
            for p in ("weight", "bias"):
                key = f"classifier.{i}.{p}"
                _copy(getattr(layer[0], p), state[key], key, path)
    return wanted
