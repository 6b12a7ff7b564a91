"""TTA: each view is inverted before averaging, so predictions are equivariant under the view set's group."""

import pytest
import torch
import torch.nn.functional as F

from app.errors import TrashError
from app.infer.tta import FLIPS, View, parse_views, predict_probs

FLIP_DIMS = [(3,), (2,), (2, 3)]


def lopsided_model():
    """A model that is NOT flip-equivariant on its own (asymmetric kernel + position-dependent bias)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    ramp = torch.linspace(-2, 2, 16)

    class Model(torch.nn.Module):
        def forward(self, x):
            return conv(x) + ramp.view(1, 1, 1, -1) + 0.5 * ramp.view(1, 1, -1, 1)

    return Model().eval()


def lopsided_any_size_model():
    """Like `lopsided_model` for any H, W: neither flip- nor rotation-equivariant (the H and W ramps differ)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    class Model(torch.nn.Module):
        def forward(self, x):
            h, w = x.shape[-2:]
            return conv(x) + torch.linspace(-2, 2, w).view(1, 1, 1, -1) + 0.5 * torch.linspace(-1, 3, h).view(-1, 1)

    return Model().eval()


def pointwise_model():
    """A 1x1 conv: equivariant under every flip and rotation by itself, but not under rescaling."""
    torch.manual_seed(0)
    return torch.nn.Conv2d(3, 4, 1).eval()


def rot90(x, k=1):
    return torch.rot90(x, k, dims=(2, 3))


# (spec, model, multiple, whether rotations by 90 degrees commute). The lopsided model breaks every symmetry, so
# only the view set's group makes the result equivariant; `ms` alone has no geometric views, so it is checked on
# a model that is equivariant by itself: rescaling must not break that.
CASES = [
    ("flip", lopsided_any_size_model, False),
    ("d4", lopsided_any_size_model, True),
    ("ms", pointwise_model, True),
    ("flip+ms", lopsided_any_size_model, False),
    ("d4+ms", lopsided_any_size_model, True),
]
ALL_SPECS = [spec for spec, _, _ in CASES]


def test_flip_tta_is_equivariant_under_every_flip():
    model, x = lopsided_model(), torch.randn(2, 3, 16, 16)
    base = predict_probs(model, x, FLIPS)
    for dims in FLIP_DIMS:
        assert torch.allclose(predict_probs(model, x.flip(dims), FLIPS), base.flip(dims), atol=1e-6)


def test_without_tta_the_same_model_is_not_equivariant():
    model, x = lopsided_model(), torch.randn(2, 3, 16, 16)
    plain = predict_probs(model, x)
    assert not torch.allclose(predict_probs(model, x.flip(3)), plain.flip(3), atol=1e-3)


def test_probabilities_sum_to_one():
    probs = predict_probs(lopsided_model(), torch.randn(1, 3, 16, 16), FLIPS)
    assert torch.allclose(probs.sum(1), torch.ones(1, 16, 16), atol=1e-5)


def test_the_any_size_models_are_not_equivariant_without_tta():
    x = torch.randn(2, 3, 48, 48)
    model = lopsided_any_size_model()
    plain = predict_probs(model, x)
    for dims in FLIP_DIMS:
        assert not torch.allclose(predict_probs(model, x.flip(dims)), plain.flip(dims), atol=1e-3)
    assert not torch.allclose(predict_probs(model, rot90(x)), rot90(plain), atol=1e-3)
    assert not torch.allclose(
        predict_probs(model, x, parse_views("flip")).transpose(2, 3),
        predict_probs(model, x.transpose(2, 3), parse_views("flip")),
        atol=1e-3,
    )
    # Rescaling breaks the pointwise model's scale invariance: `ms` really changes the prediction.
    ms = predict_probs(pointwise_model(), x, parse_views("ms", multiple=8))
    assert not torch.allclose(ms, predict_probs(pointwise_model(), x), atol=1e-3)


@pytest.mark.parametrize("batch_views", [False, True])
@pytest.mark.parametrize(("spec", "make_model", "rotations"), CASES)
def test_every_view_set_is_equivariant_under_its_group(spec, make_model, rotations, batch_views):
    model, views = make_model(), parse_views(spec, multiple=8)  # 8: the scales give distinct sizes
    for x in [torch.randn(2, 3, 48, 48), torch.randn(2, 3, 40, 56)]:
        base = predict_probs(model, x, views, batch_views=batch_views)
        for dims in FLIP_DIMS:
            flipped = predict_probs(model, x.flip(dims), views, batch_views=batch_views)
            assert torch.allclose(flipped, base.flip(dims), atol=1e-5), (spec, dims)
        if rotations:  # non-square inputs too: each side is scaled and rounded on its own
            for k in (1, 2, 3):
                rotated = predict_probs(model, rot90(x, k), views, batch_views=batch_views)
                assert torch.allclose(rotated, rot90(base, k), atol=1e-5), (spec, k)


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_batched_and_per_view_forwards_agree(spec):
    model = lopsided_any_size_model()
    for x in [torch.randn(2, 3, 48, 48), torch.randn(2, 3, 40, 56)]:
        views = parse_views(spec, multiple=8)
        batched = predict_probs(model, x, views, batch_views=True)
        assert torch.allclose(batched, predict_probs(model, x, views, batch_views=False), atol=1e-5)


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_probabilities_sum_to_one_for_every_view_set(spec):
    probs = predict_probs(lopsided_any_size_model(), torch.randn(2, 3, 40, 56), parse_views(spec))
    assert probs.shape == (2, 4, 40, 56) and probs.dtype == torch.float32
    assert torch.allclose(probs.sum(1), torch.ones(2, 40, 56), atol=1e-5)
    assert probs.min() >= 0


def recording(model, shapes):
    class Recording(torch.nn.Module):
        def forward(self, x):
            shapes.append(tuple(x.shape))
            return model(x)

    return Recording().eval()


def test_batching_groups_views_by_the_shape_the_model_sees():
    x, shapes = torch.randn(2, 3, 64, 96), []
    model = recording(lopsided_any_size_model(), shapes)
    predict_probs(model, x, parse_views("d4+ms"), batch_views=True)
    # Scales 0.75, 1.0, 1.25 -> (48, 72), (64, 96), (80, 120) rounded to 32 -> (64, 64), (64, 96), (96, 128).
    # (64, 64) is square, so all 8 of its views share one forward; the others split into 4 unrotated + 4 rotated.
    assert sorted(shapes) == sorted([(16, 3, 64, 64), (8, 3, 64, 96), (8, 3, 96, 64), (8, 3, 96, 128), (8, 3, 128, 96)])
    shapes.clear()
    predict_probs(model, x, parse_views("d4+ms"), batch_views=False)
    assert len(shapes) == 24 and all(s[0] == 2 for s in shapes)


def test_batch_views_defaults_to_one_forward_per_view_on_cpu():
    shapes = []
    predict_probs(recording(lopsided_model(), shapes), torch.randn(2, 3, 16, 16), FLIPS)
    assert shapes == [(2, 3, 16, 16)] * 4


def test_names_view_objects_and_spec_strings_are_the_same_views():
    model, x = lopsided_any_size_model(), torch.randn(2, 3, 32, 32)
    by_name = predict_probs(model, x, FLIPS)
    assert torch.equal(by_name, predict_probs(model, x, parse_views("flip")))
    assert torch.equal(by_name, predict_probs(model, x, "flip"))
    assert [v.name for v in parse_views("flip")] == list(FLIPS)
    assert torch.equal(predict_probs(model, x, ("identity",)), predict_probs(model, x, parse_views("identity")))
    d4 = parse_views("d4")
    assert torch.equal(predict_probs(model, x, d4), predict_probs(model, x, tuple(v.name for v in d4)))


def test_d4_is_the_eight_distinct_dihedral_views_and_each_inverts():
    x = torch.randn(1, 3, 8, 8)
    views = parse_views("d4")
    outs = [v.apply(x) for v in views]
    assert len(views) == 8 and len({tuple(o.flatten().tolist()) for o in outs}) == 8
    for view, out in zip(views, outs):
        assert torch.equal(view.invert(out), x)
    square = parse_views("d4")
    assert [v.k for v in square] == [0, 1, 2, 3] * 2 and [v.flips for v in square] == [()] * 4 + [(3,)] * 4


def test_ms_scales_round_to_a_multiple_and_resize_back():
    views = parse_views("ms")
    assert [v.scale for v in views] == [0.75, 1.0, 1.25]
    assert [v.size(100, 200) for v in views] == [(64, 160), (100, 200), (128, 256)]  # 1.0 never resizes
    assert [v.size(16, 16) for v in views] == [(32, 32), (16, 16), (32, 32)]  # never below one multiple
    assert [v.size(100, 200) for v in parse_views("ms", multiple=8)] == [(72, 152), (100, 200), (128, 248)]
    assert [v.size(40, 56) for v in parse_views("d4+ms", multiple=8)][:2] == [(32, 40), (40, 32)]
    x = torch.randn(1, 3, 100, 200)
    for view in views:
        assert tuple(view.apply(x).shape[-2:]) == view.size(100, 200)
        assert view.invert(view.apply(x), (100, 200)).shape == x.shape
    assert [v.name for v in parse_views("flip+ms")][:5] == ["identity@0.75", "h@0.75", "v@0.75", "hv@0.75", "identity"]


def test_bilinear_resize_commutes_with_flips_and_quarter_turns():
    """Why `ms` keeps equivariance: F.interpolate(bilinear, align_corners=False) is flip- and transpose-symmetric.

    Exactly so in float64; in float32 the mirrored interpolation weights round differently, about 2e-5 on
    randn inputs (under 1e-5 on probabilities, see the view-set tests).
    """
    x = torch.randn(2, 3, 40, 56, dtype=torch.float64)

    def resize(t, size):
        return F.interpolate(t, size=size, mode="bilinear", align_corners=False)

    for size in [(32, 40), (48, 72), (37, 61)]:
        for t, atol in [(x, 1e-12), (x.float(), 1e-4)]:
            for dims in FLIP_DIMS:
                assert torch.allclose(resize(t.flip(dims), size), resize(t, size).flip(dims), atol=atol)
            for k in (1, 2, 3):
                turned = size[::-1] if k % 2 else size
                assert torch.allclose(resize(rot90(t, k), turned), rot90(resize(t, size), k), atol=atol)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [("d8", "'d8'"), ("", "''"), ("d4+bogus", "'bogus'"), ("d4+flip", "at most one"), ("ms+ms", "at most one")],
)
def test_parse_views_rejects_bad_specs_listing_the_valid_sets(spec, needle):
    with pytest.raises(TrashError, match="valid: identity, flip, d4, ms") as err:
        parse_views(spec)
    assert needle in str(err.value) and err.value.exit_code == 2


def test_parse_views_is_lenient_about_case_and_spaces():
    assert parse_views(" D4 + MS ") == parse_views("d4+ms")


def test_unknown_or_missing_view_names_are_trash_errors():
    model, x = lopsided_model(), torch.randn(1, 3, 16, 16)
    with pytest.raises(TrashError, match="unknown TTA view 'diagonal'"):
        predict_probs(model, x, ("identity", "diagonal"))
    with pytest.raises(TrashError, match="no TTA views"):
        predict_probs(model, x, ())


def test_a_view_is_a_frozen_value():
    view = View("h", flips=(3,))
    with pytest.raises(AttributeError):
        view.k = 1
    assert view == parse_views("flip")[1]
