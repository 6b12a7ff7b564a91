"""Model factory: every arch x encoder family, sizes, norms, parameter groups, the table; names and weights files."""

import io
from collections import Counter

import pytest
import torch

from app.errors import TrashError
from app.export import OldPathsUnpickler
from app.model.build import ARCHS, build_model, check_model, check_size, model_table
from app.model.encoders import (
    FeatureRunner,
    check_encoder,
    count_parameters,
    create_timm,
    model_encoder,
    model_splitter,
)
from app.model.norms import apply_norm, norm_warning
from app.recipe import Model

FAMILIES = ["resnet18", "efficientnet_b0", "mobilenetv3_small_100", "regnetx_002", "convnext_atto"]
CNN, TRANSFORMER = "resnet18", "pvt_v2_b0"  # PVTv2-b0: a 3.7M-parameter hierarchical transformer (1/4 .. 1/32)
SMP_ARCHS = [a for a in ARCHS if a != "unet"]


@pytest.mark.parametrize("encoder", FAMILIES)
def test_output_is_one_logit_map_per_class_at_input_size(encoder):
    model, mean, std = build_model(Model(encoder=encoder), n_classes=5, size=64)
    assert len(mean) == 3 and len(std) == 3
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5, 64, 64)
        assert model(torch.randn(1, 3, 96, 96)).shape == (1, 5, 96, 96)  # progressive resizing reuses the model


def round_trip(model):
    buffer = io.BytesIO()
    torch.save(model, buffer)  # what learn.export does (pickles the module objects)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def trains_at_two_sizes(model, sizes=(32, 64)) -> None:
    """A training forward and backward at each size: logits at the input size, finite input gradients; then eval."""
    model.train()
    for size in sizes:
        x = torch.randn(2, 3, size, size, requires_grad=True)
        out = model(x)
        assert out.shape == (2, 3, size, size)
        out.square().mean().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
    model.eval()


@pytest.mark.parametrize(
    "arch,encoder",
    [(a, CNN) for a in ARCHS] + [(a, TRANSFORMER) for a in ARCHS if a != "deeplabv3plus"],
)
def test_every_arch_trains_at_two_sizes_exports_and_splits(arch, encoder):
    model, _, _ = build_model(Model(arch=arch, encoder=encoder, last_cross=False), n_classes=3, size=32)
    trains_at_two_sizes(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(round_trip(model)(x), expected)
    encoder_params, rest = model_splitter(model)
    assert encoder_params and rest
    assert {id(p) for p in encoder_params} | {id(p) for p in rest} == {id(p) for p in model.parameters()}
    assert {id(p) for p in encoder_params}.isdisjoint(id(p) for p in rest)
    assert {id(p) for p in encoder_params} == {id(p) for p in model_encoder(model).parameters()}


@pytest.mark.parametrize("encoder", ["efficientnet_b0", "convnext_atto"])
def test_cnn_families_fit_every_smp_arch(encoder):
    for arch in SMP_ARCHS:
        model, _, _ = build_model(Model(arch=arch, encoder=encoder), n_classes=2, size=32)
        with torch.no_grad():
            assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 2, 32, 32), arch


def test_swin_channels_last_features_reach_unet_and_smp_decoders():
    # Swin's feature maps are NHWC: unet runs timm's features_only extractor behind FeatureTaps (NCHW).
    for arch in ("unet", "upernet"):
        model, mean, _ = build_model(Model(arch=arch, encoder="swin_tiny_patch4_window7_224"), 2, size=32)
        if arch == "unet":
            assert isinstance(model[0][0], FeatureRunner) and len(model[0]) == 4
            assert [h.stored.shape[1] for h in model.sfs] == [384, 192, 96]  # deepest skip first, channels 2nd
        out = model.train()(torch.randn(2, 3, 64, 64))
        assert out.shape == (2, 2, 64, 64)
        out.mean().backward()
    assert mean == (0.485, 0.456, 0.406)


def test_sizes_an_encoder_cannot_take_name_the_allowed_multiple():
    with pytest.raises(TrashError, match="multiples of 32"):
        build_model(Model(arch="fpn"), 2, size=80)
    with pytest.raises(TrashError, match="multiples of 64"):  # MaxViT at 80 px: windows of 80 // 32 = 2
        build_model(Model(arch="unet", encoder="maxvit_pico_rw_256"), 2, size=80)
    model, _, _ = build_model(Model(arch="fpn", encoder="maxvit_pico_rw_256"), 2, size=64)
    assert model.trash_size_multiple == 64
    check_size(model, 128)
    with pytest.raises(TrashError, match="multiples of 64"):
        check_size(model, 96)
    unet, _, _ = build_model(Model(encoder="regnetx_002"), 2, size=64)
    check_size(unet, 100)  # plain CNN unet: DynamicUnet resizes, any size
    # every progressive-resizing stage, checked up front without building (MaxViT's windows follow stage 1)
    assert check_model(Model(arch="upernet", encoder="maxvit_pico_rw_256"), (128, 256)) == 128
    with pytest.raises(TrashError, match="192 px .*multiples of 128"):
        check_model(Model(arch="upernet", encoder="maxvit_pico_rw_256"), (128, 192))


def test_encoders_without_a_feature_pyramid_are_refused():
    with pytest.raises(TrashError, match="shrink level by level; strides \\[16, 16, 16\\]"):
        check_model(Model(encoder="vit_small_patch16_224"))


def test_deeplab_needs_a_dilatable_encoder():
    with pytest.raises(TrashError, match="output_stride=16.*fpn, upernet or segformer"):
        build_model(Model(arch="deeplabv3plus", encoder=TRANSFORMER), 2, size=64)


def test_unknown_encoder_suggests_close_names():
    with pytest.raises(TrashError, match="resnet18"):
        check_encoder("resnet_18")


def test_unknown_arch_and_norm_suggest_close_names():
    with pytest.raises(TrashError, match="did you mean .*unetplusplus"):
        build_model(Model(arch="unet++"), 2, 64)
    with pytest.raises(TrashError, match="did you mean .*deeplabv3plus"):
        build_model(Model(arch="deeplabv3"), 2, 64)
    with pytest.raises(TrashError, match="did you mean .*group"):
        build_model(Model(norm="groups"), 2, 64)


def norm_types(model) -> Counter:
    return Counter(type(m).__name__ for m in model.modules() if "Norm" in type(m).__name__)


def test_group_norm_replaces_every_batchnorm_keeping_affine_and_activations():
    batch, _, _ = build_model(Model(encoder="efficientnet_b0"), 2, size=32)
    stem_norm = batch[0][0][1]
    with torch.no_grad():
        stem_norm.weight.uniform_(0.5, 1.5)
    stem_weight = stem_norm.weight.clone()
    n_bn_act, n_bn = norm_types(batch)["BatchNormAct2d"], norm_types(batch)["BatchNorm2d"]
    acts = [type(m.act).__name__ for m in batch.modules() if type(m).__name__ == "BatchNormAct2d"]
    apply_norm(batch, "group")
    types = norm_types(batch)
    assert types == Counter(GroupNormAct=n_bn_act, GroupNorm=n_bn) and n_bn_act > 40 and n_bn > 0
    assert [type(m.act).__name__ for m in batch.modules() if type(m).__name__ == "GroupNormAct"] == acts
    groups = {m.num_channels: m.num_groups for m in batch.modules() if isinstance(m, torch.nn.GroupNorm)}
    assert groups[32] == 32 and groups[24] == 8 and groups[16] == 16 and groups[320] == 32
    assert type(batch[0][0][1]).__name__ == "GroupNormAct"
    assert torch.equal(batch[0][0][1].weight, stem_weight)  # affine parameters copied
    fpn, _, _ = build_model(Model(arch="fpn", norm="group"), 2, size=32)
    assert "BatchNorm2d" not in norm_types(fpn)  # decoder too
    assert fpn(torch.randn(1, 3, 32, 32)).shape == (1, 2, 32, 32)  # GroupNorm trains with one image


def test_frozen_bn_freezes_encoder_statistics_and_affine_only():
    model, _, _ = build_model(Model(arch="fpn", norm="frozen_bn"), 2, size=32)
    assert norm_types(model_encoder(model)) == Counter(FrozenBatchNorm2d=20)
    assert norm_types(model)["GroupNorm"] > 0  # smp's FPN decoder keeps its own norms
    frozen = {k: v.clone() for k, v in model_encoder(model).state_dict().items() if "bn" in k}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    model(torch.randn(2, 3, 32, 32)).square().mean().backward()
    opt.step()
    after = model_encoder(model).state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items())
    assert not any("bn" in n for n, _ in model_encoder(model).named_parameters())
    unet, _, _ = build_model(Model(norm="frozen_bn"), 2, size=32)
    assert norm_types(unet[0]) == Counter(FrozenBatchNorm2d=20) and norm_types(unet)["BatchNorm2d"] == 5


def test_fastai_freeze_and_discriminative_lrs_use_the_splitter():
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner

    model, _, _ = build_model(Model(arch="segformer", encoder="regnetx_002"), 2, size=32)
    learn = Learner(DataLoaders(), model, loss_func=torch.nn.functional.cross_entropy, splitter=model_splitter)
    learn.freeze()
    encoder = model_encoder(model)
    trainable = [n for n, p in encoder.named_parameters() if p.requires_grad]
    assert trainable and all(".bn" in n or "bn." in n or "norm" in n for n in trainable)  # fastai train_bn
    assert all(p.requires_grad for p in model.net.decoder.parameters())
    learn.unfreeze()
    learn.opt.set_hypers(lr=slice(1e-4, 1e-3))
    assert [h["lr"] for h in learn.opt.hypers] == [1e-4, 1e-3]
    # learners built before the wings name it app.models.unet_splitter: their exports still find it
    assert OldPathsUnpickler(io.BytesIO(b"")).find_class("app.models", "unet_splitter") is model_splitter


def test_norm_warning_only_for_small_accumulated_batchnorm_batches():
    assert "model.norm=group" in norm_warning(4, 32, "batch")
    assert "\n" not in norm_warning(4, 32, "batch")
    assert norm_warning(4, 4, "batch") is None  # no accumulation
    assert norm_warning(8, 64, "batch") is None
    assert norm_warning(2, 16, "group") is None


def test_model_table_lists_archs_params_and_flops():
    quick = model_table(quick=True)
    assert {"resnet18", "tf_efficientnet_lite0", "swin_tiny_patch4_window7_224"} <= {r["encoder"] for r in quick}
    row = next(r for r in quick if r["encoder"] == TRANSFORMER)
    assert "deeplabv3plus" not in row["archs"] and "fpn" in row["archs"] and row["encoder_params_m"] > 3
    (full,) = model_table(["regnetx_002"], sizes=(32, 64))
    assert full["archs"] == list(ARCHS) and full["params_m"] > full["encoder_params_m"]
    assert 3.5 < full["gflops_64"] / full["gflops_32"] < 4.5  # convolutions scale with the pixel count


def test_local_weights_file_is_loaded(tmp_path):
    reference = create_timm(Model(encoder="resnet18"))
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    loaded = create_timm(Model(encoder="resnet18", weights=str(path)))
    assert torch.equal(loaded.conv1.weight, reference.conv1.weight)
    assert not torch.equal(create_timm(Model(encoder="resnet18")).conv1.weight, reference.conv1.weight)


def test_unreadable_weights_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(TrashError, match="broken.pth"):
        create_timm(Model(encoder="resnet18", weights=str(bad)))


def test_count_parameters():
    assert count_parameters(torch.nn.Linear(3, 2)) == 8


# -- decoder options (model.decoder_widths, last_cross, blur, self_attention) ---------------------------------------


SMP_WIDTHS = (256, 128, 64, 32, 16)


def decoder_channels(model) -> list[tuple[int, int]]:
    """(output channels, output side) of each decoder block and of the final pixel shuffle, for a 64 px input."""
    from fastai.layers import PixelShuffle_ICNR
    from fastai.vision.models.unet import UnetBlock

    found = []
    hooks = [
        m.register_forward_hook(lambda _, __, out: found.append((out.shape[1], out.shape[-1])))
        for m in model
        if isinstance(m, (UnetBlock, PixelShuffle_ICNR))
    ]
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, 64, 64))
    for h in hooks:
        h.remove()
    return found


def test_empty_decoder_widths_build_fastais_dynamic_unet_exactly():
    from fastai.vision.all import DynamicUnet

    from app.model.encoders import create_timm, encoder_stages
    from app.model.unet import Unet

    cfg = Model(encoder="regnetx_002", decoder_widths=(), last_cross=True)  # fastai's defaults
    torch.manual_seed(0)
    ours = build_model(cfg, 3, 64)[0]
    torch.manual_seed(0)
    fastai = DynamicUnet(encoder_stages(create_timm(cfg)), 3, (64, 64))
    assert isinstance(ours, Unet) and isinstance(ours, DynamicUnet)
    assert [type(m).__name__ for m in ours] == [type(m).__name__ for m in fastai]
    assert count_parameters(ours) == count_parameters(fastai)
    assert decoder_channels(ours) == decoder_channels(fastai)


@pytest.mark.parametrize("encoder", ["resnet18", "efficientnet_b0"])
def test_decoder_widths_set_the_channels_at_each_resolution(encoder):
    model = build_model(Model(encoder=encoder, decoder_widths=SMP_WIDTHS, last_cross=False), 3, 64)[0]
    assert decoder_channels(model) == [(256, 4), (128, 8), (64, 16), (32, 32), (16, 64)]  # 1/16 .. 1/1
    norms = [type(m).__name__ for part in list(model)[1:] for m in part.modules() if "Norm" in type(m).__name__]
    assert norms == ["BatchNorm2d"] * 5  # fastai's: the encoder output and the four skips, no norm in the convs


def test_decoder_widths_fit_a_transformer_whose_finest_skip_is_at_one_quarter():
    model = build_model(Model(encoder=TRANSFORMER, decoder_widths=SMP_WIDTHS), 3, 64)[0]
    assert decoder_channels(model) == [(256, 4), (128, 8), (64, 16), (32, 32)]  # then a nearest resize to 64
    assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_width_at_maps_strides_to_levels_and_clamps():
    from app.model.unet import width_at

    assert [width_at(SMP_WIDTHS, s) for s in (32, 16, 8, 4, 2, 1)] == [256, 256, 128, 64, 32, 16]
    assert [width_at((64, 32), s) for s in (16, 2, 1)] == [64, 64, 32]  # short tuples: the last two levels


@pytest.mark.parametrize(
    "options",
    [
        dict(last_cross=True),
        dict(last_cross=True, bottle=True),
        dict(last_cross=True, bottle=True, decoder_widths=()),  # fastai's own head ignored the bottleneck
        dict(blur=True),
        dict(self_attention=True),
    ],
)
def test_decoder_options_train_at_two_sizes_and_export(options):
    options = {"decoder_widths": (64, 32, 16, 16, 8), **options}
    model = build_model(Model(encoder="resnet18", **options), 3, 32)[0]
    trains_at_two_sizes(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(round_trip(model)(x), model(x))


def test_skip_gradient_is_dense_in_its_inputs_layout_and_unchanged():
    from app.model.unet import _SkipGrad

    x = torch.randn(2, 4, 8, 8).to(memory_format=torch.channels_last).requires_grad_(True)
    seen = []
    x.register_hook(lambda g: seen.append(g))
    torch.cat([torch.ones(2, 3, 8, 8), _SkipGrad.apply(x)], 1).to(memory_format=torch.channels_last).sum().backward()
    (grad,) = seen
    assert grad.is_contiguous(memory_format=torch.channels_last) and torch.equal(grad, torch.ones_like(x))


def test_default_decoder_is_no_slower_than_fastais_by_flops():
    from app.model.build import forward_flops

    default = build_model(Model(), 3, 64)[0]
    fastai = build_model(Model(decoder_widths=()), 3, 64)[0]
    assert forward_flops(default, 64) <= forward_flops(fastai, 64)
