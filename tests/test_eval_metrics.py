"""mIoU / mAcc / aAcc from the bincount confusion matrix, on cases worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ifseg_deploy.evaluation.metrics import ConfusionMatrix


def test_hand_built_case_with_ignore_and_an_absent_class():
    gt = np.array([[0, 0, 1], [1, 255, 2]])
    pred = np.array([[0, 1, 1], [1, 3, 0]])  # the 3 sits on an ignored pixel: it must not count
    cm = ConfusionMatrix(4)
    cm.update(gt, pred)
    s = cm.scores()
    # class 0: I=1, U=3; class 1: I=2, U=3; class 2: I=0, U=1; class 3: in neither -> NaN, left out
    np.testing.assert_allclose(s.iou[:3], [1 / 3, 2 / 3, 0.0])
    assert math.isnan(s.iou[3])
    np.testing.assert_allclose(s.acc[:3], [1 / 2, 1.0, 0.0])
    assert s.miou == pytest.approx(1 / 3)
    assert s.macc == pytest.approx(0.5)
    assert s.aacc == pytest.approx(3 / 5)
    assert s.pixels == 5
    assert s.union.tolist() == [3, 3, 1, 0] and s.pred_pixels.tolist() == [2, 3, 0, 0]


def test_class_only_in_predictions_counts_in_miou_not_in_macc():
    cm = ConfusionMatrix(4)
    cm.update(np.array([0, 0]), np.array([0, 3]))
    s = cm.scores()
    assert s.iou[0] == pytest.approx(0.5) and s.iou[3] == 0.0
    assert math.isnan(s.acc[3]) and math.isnan(s.iou[1]) and math.isnan(s.iou[2])
    assert s.miou == pytest.approx(0.25)  # (0.5 + 0) / 2
    assert s.macc == pytest.approx(0.5)
    d = s.as_dict(["a", "b", "c", "d"])
    assert d["per_class"][1]["iou"] is None and d["classes_evaluated"] == 2


def test_sums_over_the_set_not_a_mean_of_images():
    cm = ConfusionMatrix(2)
    cm.update(np.zeros((10, 10), int), np.zeros((10, 10), int))  # 100 px of class 0, all right
    cm.update(np.array([[1]]), np.array([[0]]))  # 1 px of class 1, wrong
    s = cm.scores()
    assert s.iou[0] == pytest.approx(100 / 101) and s.iou[1] == 0.0
    assert s.aacc == pytest.approx(100 / 101)


def test_matches_brute_force_on_random_maps():
    rng = np.random.default_rng(0)
    n = 6
    cm = ConfusionMatrix(n)
    gts, preds = [], []
    for shape in [(13, 7), (5, 20), (1, 1)]:
        gt = rng.integers(0, n, shape)
        gt[rng.random(shape) < 0.2] = 255
        pred = rng.integers(0, n - 1, shape)  # class n-1 never predicted
        cm.update(gt, pred)
        gts.append(gt.ravel())
        preds.append(pred.ravel())
    gt, pred = np.concatenate(gts), np.concatenate(preds)
    valid = gt != 255
    ious = []
    for c in range(n):
        inter = np.sum((gt == c) & (pred == c) & valid)
        union = np.sum(((gt == c) | (pred == c)) & valid)
        if union:
            ious.append(inter / union)
    s = cm.scores()
    assert s.miou == pytest.approx(np.mean(ious))
    assert s.aacc == pytest.approx(np.mean(gt[valid] == pred[valid]))


def test_errors_and_empty():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="differ"):
        cm.update(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="prediction ids"):
        cm.update(np.zeros((2, 2), int), np.full((2, 2), 3))
    s = cm.scores()
    assert math.isnan(s.miou) and math.isnan(s.aacc)
    cm.update(np.full((2, 2), 255), np.zeros((2, 2), int))  # nothing labelled: nothing counted
    assert cm.mat.sum() == 0
