"""Loss against torch's cross-entropy; confusion-matrix mIoU against scikit-learn."""

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import confusion_matrix as sk_confusion

from app.model.loss import SegmentationLoss
from app.model.metrics import confusion_matrix, iou_per_class, mean_iou


def batch(seed=0, n_classes=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, n_classes, 8, 8, generator=g), torch.randint(0, n_classes, (2, 8, 8), generator=g)


def test_ce_matches_torch_with_class_weights_and_ignore_index():
    logits, target = batch()
    target[0, :2] = 255
    weights = [0.5, 1.0, 2.0, 3.0]
    ours = SegmentationLoss(terms={"ce": 1.0}, class_weights=weights)(logits, target)
    ref = F.cross_entropy(logits, target, weight=torch.tensor(weights), ignore_index=255)
    assert torch.allclose(ours, ref, atol=1e-6)


def test_ignored_pixels_contribute_nothing():
    logits, target = batch(1)
    loss = SegmentationLoss(terms={"ce": 0.9, "focal": 0.1})
    changed = logits.clone()
    changed[0, :, :3] = 100 * torch.randn_like(changed[0, :, :3])
    ignored = target.clone()
    ignored[0, :3] = 255
    assert torch.allclose(loss(logits, ignored), loss(changed, ignored))
    assert not torch.allclose(loss(logits, target), loss(changed, target))


def test_focal_weighs_easy_pixels_less_than_ce():
    logits, target = batch(2)
    ce, focal = (
        SegmentationLoss(terms={"ce": 1.0})(logits, target),
        SegmentationLoss(terms={"focal": 1.0})(logits, target),
    )
    assert 0 < focal < ce


def test_confusion_matrix_and_miou_match_sklearn():
    rng = np.random.default_rng(0)
    target, pred = rng.integers(0, 5, 1000), rng.integers(0, 5, 1000)
    target[:50] = 255
    cm = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), 5).numpy()
    keep = target != 255
    np.testing.assert_array_equal(cm, sk_confusion(target[keep], pred[keep], labels=range(5)))
    inter, union = np.diag(cm), cm.sum(0) + cm.sum(1) - np.diag(cm)
    assert np.isclose(mean_iou(cm), np.mean(inter / union))


def test_absent_class_does_not_count():
    cm = np.array([[5, 0, 0], [1, 3, 0], [0, 0, 0]])
    iou = iou_per_class(cm)
    assert np.isnan(iou[2]) and np.isclose(mean_iou(cm), np.mean(iou[:2]))
