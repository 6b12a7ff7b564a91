"""Model factory: timm encoders of several families inside DynamicUnet; names and weights files."""

import pytest
import torch

from app.errors import TrashError
from app.models import build_model, check_encoder, create_timm
from app.recipe import Model

FAMILIES = ["resnet18", "efficientnet_b0", "mobilenetv3_small_100", "regnetx_002", "convnext_atto"]


@pytest.mark.parametrize("encoder", FAMILIES)
def test_output_is_one_logit_map_per_class_at_input_size(encoder):
    model, mean, std = build_model(Model(encoder=encoder), n_classes=5, size=64)
    assert len(mean) == 3 and len(std) == 3
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5, 64, 64)
        assert model(torch.randn(1, 3, 96, 96)).shape == (1, 5, 96, 96)  # progressive resizing reuses the model


def test_unknown_encoder_suggests_close_names():
    with pytest.raises(TrashError, match="resnet18"):
        check_encoder("resnet_18")


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
