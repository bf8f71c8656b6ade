"""Evaluation metrics against a hand-computed confusion matrix."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deconvkernels.metrics import ConfusionMatrix


def test_confusion_matrix_by_hand():
    target = np.array([[0, 0, 1, 1],
                       [2, 2, 255, 1]])
    pred = np.array([[0, 1, 1, 1],
                     [2, 0, 2, 0]])
    cm = ConfusionMatrix(4)
    cm.update(pred, target)
    # rows: truth, cols: prediction; the 255 pixel is left out.
    expected = np.array([[1, 1, 0, 0],
                         [1, 2, 0, 0],
                         [1, 0, 1, 0],
                         [0, 0, 0, 0]])
    np.testing.assert_array_equal(cm.matrix, expected)
    iou = cm.iou()
    # class 0: TP 1, FP 2 (two truths of 1, 2 predicted 0), FN 1 -> 1/4
    # class 1: TP 2, FP 1, FN 1 -> 2/4; class 2: TP 1, FP 0, FN 1 -> 1/2; class 3: absent.
    np.testing.assert_allclose(iou[:3], [0.25, 0.5, 0.5])
    assert math.isnan(iou[3])
    assert cm.miou() == pytest.approx((0.25 + 0.5 + 0.5) / 3)
    assert cm.pixel_accuracy() == pytest.approx(4 / 7)
    assert cm.mean_accuracy() == pytest.approx((1 / 2 + 2 / 3 + 1 / 2) / 3)
    d = cm.to_dict(["bg", "a", "b", "c"])
    assert d["per_class_iou"] == {"bg": 0.25, "a": 0.5, "b": 0.5, "c": None}
    assert d["confusion_matrix"] == expected.tolist()
    table = cm.table(["bg", "a", "b", "c"])
    assert "n/a" in table and "41.67" in table  # mIoU in percent


def test_confusion_matrix_accumulates_and_merges():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 3, size=(5, 7, 9))
    p = rng.integers(0, 3, size=(5, 7, 9))
    whole = ConfusionMatrix(3)
    whole.update(torch.from_numpy(p), torch.from_numpy(t))
    parts = ConfusionMatrix(3)
    for i in range(5):
        part = ConfusionMatrix(3)
        part.update(p[i], t[i])
        parts.merge(part)
    np.testing.assert_array_equal(whole.matrix, parts.matrix)
    brute = np.zeros((3, 3), np.int64)
    for a, b in zip(t.ravel(), p.ravel(), strict=True):
        brute[a, b] += 1
    np.testing.assert_array_equal(whole.matrix, brute)


def test_confusion_matrix_rejects_bad_input():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="shapes"):
        cm.update(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="target"):
        cm.update(np.zeros((2, 2)), np.full((2, 2), 7))
    with pytest.raises(ValueError, match="prediction"):
        cm.update(np.full((2, 2), 3), np.zeros((2, 2)))
