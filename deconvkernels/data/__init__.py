"""Data for DeconvNet: samples, datasets, the paper's two crop samplers, transforms, palettes.

* :class:`Sample`: the record every dataset returns (image, labels, instances, boxes).
* :class:`SyntheticScenes`: procedural scenes, no download; :class:`VOCSegmentation`: PASCAL
  VOC 2012 (+ SBD), tolerant of bad files; :func:`write_voc_folder` writes the VOC layout.
* :class:`GTCropDataset` / :class:`ProposalCropDataset`: stage-1 / stage-2 training crops;
  :func:`crop_resize` is their padded crop, shared with inference.
* :func:`to_tensor` / :func:`denormalize`: ImageNet normalisation for VGG16 weights.
"""

from __future__ import annotations

from .palette import (
    VOC_CLASSES,
    colorize,
    overlay,
    read_label_png,
    rgb_to_label,
    save_palette_png,
    voc_palette,
)
from .sample import IGNORE_INDEX, Sample, boxes_from_instances
from .samplers import (
    CropItem,
    GTCropDataset,
    ProposalCropDataset,
    ProposalFn,
    box_iou,
    context_window,
    crop_resize,
    jittered_gt_proposals,
)
from .synthetic import SHAPE_FAMILIES, SyntheticScenes
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MEAN_PIXEL,
    denormalize,
    label_to_tensor,
    to_tensor,
)
from .voc import (
    BadSampleWarning,
    VOCSegmentation,
    collate_skip_none,
    find_voc_root,
    read_rgb,
    write_voc_folder,
)

__all__ = [
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MEAN_PIXEL",
    "SHAPE_FAMILIES",
    "VOC_CLASSES",
    "BadSampleWarning",
    "CropItem",
    "GTCropDataset",
    "ProposalCropDataset",
    "ProposalFn",
    "Sample",
    "SyntheticScenes",
    "VOCSegmentation",
    "box_iou",
    "boxes_from_instances",
    "collate_skip_none",
    "colorize",
    "context_window",
    "crop_resize",
    "denormalize",
    "find_voc_root",
    "jittered_gt_proposals",
    "label_to_tensor",
    "overlay",
    "read_label_png",
    "read_rgb",
    "rgb_to_label",
    "save_palette_png",
    "to_tensor",
    "voc_palette",
    "write_voc_folder",
]
