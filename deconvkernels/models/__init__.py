"""Segmentation networks on the library's ops: DeconvNet, SegNet and FCN-8s.

    model = DeconvNet(num_classes=21)                   # the paper's network, 251.8M parameters
    load_vgg16_(model, "vgg16.pth")                     # encoder + fc6/fc7 from a local file
    small = DeconvNet(num_classes=6, width=0.125, input_size=64)   # for quick CPU runs
"""

from __future__ import annotations

from torch import nn

from .deconvnet import DeconvNet
from .fcn import FCN8s
from .init import init_decoder_, load_vgg16_, read_state_dict
from .segnet import SegNet

__all__ = [
    "DeconvNet",
    "FCN8s",
    "SegNet",
    "build_model",
    "init_decoder_",
    "load_vgg16_",
    "model_config",
    "read_state_dict",
]

MODELS = {"deconvnet": DeconvNet, "segnet": SegNet, "fcn8s": FCN8s}


def build_model(
    name: str, num_classes: int, width: float = 1.0, input_size: int = 224
) -> nn.Module:
    """A model by name (``"deconvnet"``, ``"segnet"``, ``"fcn8s"``); ``input_size`` is
    DeconvNet's only."""
    key = name.lower()
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    if key == "deconvnet":
        return DeconvNet(num_classes, width=width, input_size=input_size)
    return MODELS[key](num_classes, width=width)


def model_config(model: nn.Module) -> dict:
    """The :func:`build_model` arguments that rebuild ``model`` (saved in checkpoints)."""
    for name, cls in MODELS.items():
        if type(model) is cls:
            cfg = {"name": name, "num_classes": model.num_classes, "width": model.width}
            if hasattr(model, "input_size"):
                cfg["input_size"] = model.input_size
            return cfg
    raise TypeError(f"no model_config for {type(model).__name__}")
