"""SegmentationLoss terms against torch / segmentation_models_pytorch, ignore_index, class weights, pickling."""

import pickle

import pytest
import torch
import torch.nn.functional as F
from segmentation_models_pytorch import losses as smp_losses

from app.errors import TrashError
from app.model.loss import LOSS_TERMS, WEIGHTED_TERMS, SegmentationLoss

C = 4
WEIGHTS = [0.5, 1.0, 2.0, 3.0]


def batch(seed=0, n_classes=C, ignore=True):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, n_classes, 8, 8, generator=g)
    target = torch.randint(0, n_classes, (2, 8, 8), generator=g)
    if ignore:
        target[0, :2] = 255
        target[1, :, :3] = 255
    return logits, target


def smp_reference(name, class_weights=None, alpha=0.5, beta=0.5):
    common = dict(mode="multiclass", from_logits=True, ignore_index=255)
    if name == "dice":
        return smp_losses.DiceLoss(**common, class_weights=class_weights)
    if name == "tversky":
        return smp_losses.TverskyLoss(**common, alpha=alpha, beta=beta, class_weights=class_weights)
    if name == "iou":
        return smp_losses.JaccardLoss(**common, class_weights=class_weights)
    return smp_losses.LovaszLoss(**common)


@pytest.mark.parametrize("weights", [None, WEIGHTS])
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_ce_matches_torch_with_weights_ignore_and_label_smoothing(weights, smoothing):
    logits, target = batch()
    ours = SegmentationLoss({"ce": 1.0}, class_weights=weights, label_smoothing=smoothing)(logits, target)
    w = None if weights is None else torch.tensor(weights)
    ref = F.cross_entropy(logits, target, weight=w, ignore_index=255, label_smoothing=smoothing)
    assert torch.allclose(ours, ref, atol=1e-6)


@pytest.mark.parametrize("weights", [None, WEIGHTS])
def test_focal_keeps_the_weighted_formula(weights):
    logits, target = batch(1)
    gamma = 1.5
    ours = SegmentationLoss({"focal": 1.0}, class_weights=weights, focal_gamma=gamma)(logits, target)
    valid = target != 255
    nll = F.cross_entropy(logits, target, ignore_index=255, reduction="none")
    w = valid.float() if weights is None else torch.tensor(weights)[target.clamp_max(C - 1)] * valid
    ref = (w * (1 - torch.exp(-nll)) ** gamma * nll).sum() / w.sum()
    assert torch.allclose(ours, ref, atol=1e-6)


def test_focal_weighs_easy_pixels_less_than_ce():
    logits, target = batch(2)
    values = SegmentationLoss({"ce": 1.0, "focal": 1.0}).term_values(logits, target)
    assert 0 < values["focal"] < values["ce"]


@pytest.mark.parametrize("name", ["dice", "tversky", "lovasz", "iou"])
@pytest.mark.parametrize("weights", [None, WEIGHTS])
def test_region_terms_match_smp(name, weights):
    logits, target = batch(3)
    alpha, beta = 0.3, 0.7
    ours = SegmentationLoss({name: 1.0}, class_weights=weights, tversky_alpha=alpha, tversky_beta=beta)
    ref_weights = weights if name in WEIGHTED_TERMS else None
    ref = smp_reference(name, ref_weights, alpha, beta)(logits, target)
    assert torch.allclose(ours(logits, target), ref, atol=1e-6)


def test_weighted_sum_equals_sum_of_weighted_terms():
    logits, target = batch(4)
    terms = {"ce": 0.5, "focal": 0.1, "dice": 0.2, "tversky": 0.3, "lovasz": 0.4, "iou": 0.6}
    loss = SegmentationLoss(terms, class_weights=WEIGHTS, label_smoothing=0.1)
    values = loss.term_values(logits, target)
    assert set(values) == set(LOSS_TERMS)
    expected = sum(w * values[name] for name, w in terms.items())
    assert abs(float(loss(logits, target)) - expected) < 1e-5


def test_zero_weight_terms_are_reported_but_not_added():
    logits, target = batch(5)
    loss = SegmentationLoss({"ce": 1.0, "dice": 0.0})
    values = loss.term_values(logits, target)
    assert values["dice"] > 0
    assert abs(float(loss(logits, target)) - values["ce"]) < 1e-6


@pytest.mark.parametrize("name", LOSS_TERMS)
def test_ignored_pixels_contribute_nothing_to_any_term(name):
    logits, target = batch(6)
    loss = SegmentationLoss({name: 1.0}, class_weights=WEIGHTS, label_smoothing=0.1)
    ignored = target == 255
    noise = 100 * torch.randn(logits.shape, generator=torch.Generator().manual_seed(0))
    changed = torch.where(ignored.unsqueeze(1), noise, logits)
    assert torch.allclose(loss(logits, target), loss(changed, target), atol=1e-6)
    # and the same change does matter when those pixels are labelled
    labelled = torch.where(ignored, torch.zeros_like(target), target)
    assert abs(float(loss(logits, labelled) - loss(changed, labelled))) > 1e-3


def test_ignored_pixels_get_no_gradient():
    logits, target = batch(7)
    logits.requires_grad_(True)
    SegmentationLoss(dict.fromkeys(LOSS_TERMS, 1.0), class_weights=WEIGHTS)(logits, target).backward()
    assert (logits.grad.permute(0, 2, 3, 1)[target == 255] == 0).all()
    assert logits.grad.abs().sum() > 0


@pytest.mark.parametrize("name", WEIGHTED_TERMS)
def test_class_weights_change_weighted_terms(name):
    logits, target = batch(8)
    uniform = SegmentationLoss({name: 1.0})(logits, target)
    weighted = SegmentationLoss({name: 1.0}, class_weights=WEIGHTS)(logits, target)
    assert not torch.allclose(uniform, weighted, atol=1e-5)


def test_class_weights_do_not_apply_to_lovasz():
    logits, target = batch(8)
    uniform = SegmentationLoss({"lovasz": 1.0})(logits, target)
    weighted = SegmentationLoss({"lovasz": 1.0}, class_weights=WEIGHTS)(logits, target)
    assert torch.allclose(uniform, weighted)


def test_set_class_weights_takes_effect_and_none_restores_uniform():
    logits, target = batch(9)
    terms = {"ce": 0.9, "focal": 0.1, "dice": 0.5}
    loss = SegmentationLoss(terms)
    uniform = loss(logits, target)
    loss.set_class_weights(WEIGHTS)
    assert torch.equal(loss.class_weights, torch.tensor(WEIGHTS))
    assert torch.allclose(loss(logits, target), SegmentationLoss(terms, class_weights=WEIGHTS)(logits, target))
    assert not torch.allclose(loss(logits, target), uniform)
    loss.set_class_weights(None)
    assert loss.class_weights is None
    assert torch.allclose(loss(logits, target), uniform)
    loss.set_class_weights(torch.ones(C))  # a tensor works too; all-ones is uniform
    assert torch.allclose(loss(logits, target), uniform)


@pytest.mark.parametrize("name", ["dice", "lovasz", "iou", "tversky"])
def test_perfect_prediction_gives_near_zero_region_loss(name):
    _, target = batch(10)
    logits = 50.0 * F.one_hot(target.clamp_max(C - 1), C).permute(0, 3, 1, 2).float()
    assert float(SegmentationLoss({name: 1.0})(logits, target)) < 1e-4


def test_pickle_round_trip_gives_same_value():
    logits, target = batch(11)
    loss = SegmentationLoss(dict.fromkeys(LOSS_TERMS, 0.5), class_weights=WEIGHTS, label_smoothing=0.1)
    before = loss(logits, target)  # builds the smp modules, which are not pickled
    restored = pickle.loads(pickle.dumps(loss))
    assert torch.equal(restored(logits, target), before)
    assert restored.terms == loss.terms and torch.equal(restored.class_weights, loss.class_weights)


def test_loads_a_pickle_from_before_named_terms():
    logits, target = batch(12)
    old = SegmentationLoss.__new__(SegmentationLoss)
    old.__setstate__(dict(ce=0.9, focal=0.1, gamma=2.0, ignore_index=255, class_weights=torch.tensor(WEIGHTS)))
    new = SegmentationLoss({"ce": 0.9, "focal": 0.1}, class_weights=WEIGHTS)
    assert torch.equal(old(logits, target), new(logits, target))


def test_float32_under_autocast():
    logits, target = batch(13)
    loss = SegmentationLoss(dict.fromkeys(LOSS_TERMS, 1.0), class_weights=WEIGHTS)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(logits.bfloat16(), target)
    assert value.dtype == torch.float32
    assert torch.allclose(value, loss(logits.bfloat16().float(), target), atol=1e-5)


def test_default_is_plain_ce():
    logits, target = batch(14)
    assert torch.allclose(SegmentationLoss()(logits, target), F.cross_entropy(logits, target, ignore_index=255))


def test_unknown_term_names_the_valid_ones():
    with pytest.raises(TrashError) as err:
        SegmentationLoss({"ce": 1.0, "bce": 0.5})
    assert "'bce'" in str(err.value) and all(name in str(err.value) for name in LOSS_TERMS)


@pytest.mark.parametrize("terms", [{"ce": -1.0}, {"ce": 0.0, "focal": 0.0}, {}])
def test_negative_or_all_zero_weights_raise(terms):
    with pytest.raises(TrashError):
        SegmentationLoss(terms)


@pytest.mark.parametrize("weights", [[1.0, -1.0, 1.0, 1.0], [0.0] * C, [1.0, float("nan"), 1.0, 1.0]])
def test_bad_class_weights_raise(weights):
    with pytest.raises(TrashError):
        SegmentationLoss(class_weights=weights)


def test_class_weight_count_must_match_classes():
    logits, target = batch(15)
    with pytest.raises(TrashError, match="3 class weights"):
        SegmentationLoss(class_weights=[1.0, 2.0, 3.0])(logits, target)


def test_activation_and_decodes():
    logits, _ = batch(16)
    loss = SegmentationLoss()
    probs = loss.activation(logits)
    assert torch.allclose(probs.sum(1), torch.ones(2, 8, 8))
    assert torch.equal(loss.decodes(probs), logits.argmax(1))


@pytest.mark.parametrize("ignore", [True, False])
def test_dice_gradient_matches_smp(ignore):
    """trash's own dice (a gather instead of smp's one-hot) trains exactly as smp's: same gradient."""
    logits, target = batch(14, ignore=ignore)
    logits.requires_grad_(True)
    (ours,) = torch.autograd.grad(SegmentationLoss({"dice": 1.0}, class_weights=WEIGHTS)(logits, target), logits)
    (ref,) = torch.autograd.grad(smp_reference("dice", WEIGHTS)(logits, target), logits)
    assert torch.allclose(ours, ref, atol=1e-7) and ours.abs().sum() > 0
