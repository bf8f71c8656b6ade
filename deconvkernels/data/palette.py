"""PASCAL VOC class names, colour map and label-image I/O.

Label images are *palette* PNGs: each pixel stores a class id and the file's palette says how
to draw it. OpenCV can neither write nor (reliably) read the indices of such files, so this
module uses Pillow when it is importable (it comes with matplotlib) and otherwise falls back to
OpenCV with plain RGB files whose colours are mapped back through :func:`voc_palette`.
"""

from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np

try:  # Pillow is optional: it is what makes true palette PNGs possible.
    from PIL import Image as _PILImage
except ImportError:  # pragma: no cover - exercised only where Pillow is missing
    _PILImage = None

#: The 21 PASCAL VOC classes, background first, so ``VOC_CLASSES[label_id]`` names a label.
VOC_CLASSES: tuple[str, ...] = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

#: True when palette PNGs are written and read through Pillow.
HAS_PIL = _PILImage is not None


@functools.cache
def _palette() -> np.ndarray:
    # The devkit's bit-interleaving map: bits 0/1/2 of the id go to the top bits of R/G/B, bits
    # 3/4/5 to the next ones, ... It is a bijection, so colours can be mapped back to ids.
    ids = np.arange(256)
    pal = np.zeros((256, 3), np.int64)
    c = ids.copy()
    for shift in range(7, -1, -1):
        for ch in range(3):
            pal[:, ch] |= ((c >> ch) & 1) << shift
        c >>= 3
    pal = pal.astype(np.uint8)
    pal.setflags(write=False)
    return pal


def voc_palette() -> np.ndarray:
    """The standard PASCAL VOC colour map: ``(256, 3)`` uint8 RGB, row ``i`` is label ``i``."""
    return _palette().copy()


def colorize(label: np.ndarray) -> np.ndarray:
    """Draw a label map ``(H, W)`` of ids as an ``(H, W, 3)`` uint8 RGB image (VOC colours)."""
    return _palette()[np.asarray(label, np.uint8)]


def overlay(image: np.ndarray, label: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the colourised ``label`` over an RGB ``image``; background (0) stays untouched.

    ``alpha`` is the weight of the label colour where a pixel is not background.
    """
    colour = colorize(label).astype(np.float32)
    out = image.astype(np.float32)
    fg = (np.asarray(label) != 0)[..., None]
    out = np.where(fg, (1.0 - alpha) * out + alpha * colour, out)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def save_palette_png(path: str | Path, label: np.ndarray) -> None:
    """Write a uint8 id map as a PNG.

    With Pillow this is a real mode-'P' palette PNG (the ids are the pixel values, the VOC
    colours its palette), exactly like the devkit's files. Without Pillow it is an RGB PNG of
    the VOC colours written by OpenCV; :func:`read_label_png` maps those back to ids.
    """
    label = np.asarray(label)
    if label.ndim != 2 or label.dtype != np.uint8:
        raise ValueError(f"label must be a 2-D uint8 array, got {label.dtype} {label.shape}")
    path = Path(path)
    if _PILImage is not None:
        # frombytes("P") keeps the ids as the pixel values on every Pillow version (fromarray's
        # ``mode`` argument is deprecated).
        h, w = label.shape
        img = _PILImage.frombytes("P", (w, h), np.ascontiguousarray(label).tobytes())
        img.putpalette(_palette().reshape(-1).tolist())
        img.save(path, format="PNG")
        return
    bgr = cv2.cvtColor(colorize(label), cv2.COLOR_RGB2BGR)  # pragma: no cover
    if not cv2.imwrite(str(path), bgr):  # pragma: no cover
        raise OSError(f"could not write {path}")


def read_label_png(path: str | Path) -> np.ndarray:
    """Read a label PNG as a uint8 ``(H, W)`` id map.

    A palette ('P') or grey-scale PNG stores the ids directly. An RGB(A) one is mapped back
    through the VOC palette; a colour that is not in it becomes 255 (ignore).

    Raises:
        FileNotFoundError: the file does not exist.
        OSError / ValueError: the file is not a decodable PNG (e.g. truncated).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such label file: {path}")
    if _PILImage is not None:
        with _PILImage.open(path) as img:
            img.load()  # decode now: a truncated file must fail here, not later
            if img.mode in ("P", "L"):
                return np.array(img, dtype=np.uint8)
            if img.mode in ("RGB", "RGBA"):
                return rgb_to_label(np.asarray(img.convert("RGB")))
            raise ValueError(f"{path}: unsupported label image mode {img.mode!r}")
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # pragma: no cover
    if arr is None:  # pragma: no cover
        raise OSError(f"could not decode {path}")
    if arr.ndim == 2:  # pragma: no cover
        return arr.astype(np.uint8)
    return rgb_to_label(cv2.cvtColor(arr[..., :3], cv2.COLOR_BGR2RGB))  # pragma: no cover


def rgb_to_label(rgb: np.ndarray) -> np.ndarray:
    """Map an ``(H, W, 3)`` RGB image of VOC colours back to ids; unknown colours -> 255."""
    rgb = np.asarray(rgb, np.uint8)
    key = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    pal = _palette().astype(np.int32)
    pal_key = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
    order = np.argsort(pal_key)
    pos = np.clip(np.searchsorted(pal_key[order], key), 0, 255)
    ids = order[pos]
    return np.where(pal_key[ids] == key, ids, 255).astype(np.uint8)
