"""Flip TTA: each view is un-flipped before averaging, so predictions are flip-equivariant."""

import torch

from app.tta import FLIPS, predict_probs


def lopsided_model():
    """A model that is NOT flip-equivariant on its own (asymmetric kernel + position-dependent bias)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    ramp = torch.linspace(-2, 2, 16)

    class Model(torch.nn.Module):
        def forward(self, x):
            return conv(x) + ramp.view(1, 1, 1, -1) + 0.5 * ramp.view(1, 1, -1, 1)

    return Model().eval()


def test_flip_tta_is_equivariant_under_every_flip():
    model, x = lopsided_model(), torch.randn(2, 3, 16, 16)
    base = predict_probs(model, x, FLIPS)
    for dims in [(3,), (2,), (2, 3)]:
        assert torch.allclose(predict_probs(model, x.flip(dims), FLIPS), base.flip(dims), atol=1e-6)


def test_without_tta_the_same_model_is_not_equivariant():
    model, x = lopsided_model(), torch.randn(2, 3, 16, 16)
    plain = predict_probs(model, x)
    assert not torch.allclose(predict_probs(model, x.flip(3)), plain.flip(3), atol=1e-3)


def test_probabilities_sum_to_one():
    probs = predict_probs(lopsided_model(), torch.randn(1, 3, 16, 16), FLIPS)
    assert torch.allclose(probs.sum(1), torch.ones(1, 16, 16), atol=1e-5)
