"""Every entry of every registry is built and used once, and every registry in app/ is covered here.

A new name in any registry (an arch, a loss term, a TTA view set...) is exercised by this file without a new test;
a new registry that this file does not know fails `test_every_registry_is_covered`.
"""

import importlib
import pkgutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

import app
from app.registry import Registry

TINY = "test_resnet"  # timm's tiny test model: feature strides 2..32, as every arch wants


def registries() -> set[str]:
    """'module.NAME' of every Registry defined (not just imported) at module level anywhere in app/."""
    import inspect

    found = set()
    for info in pkgutil.walk_packages(app.__path__, "app."):
        if info.name == "app.__main__":
            continue
        module = importlib.import_module(info.name)
        source = inspect.getsource(module)
        for name, value in vars(module).items():
            if isinstance(value, Registry) and (f"\n{name}: Registry" in source or f"\n{name} = Registry" in source):
                found.add(f"{info.name}.{name}")
    return found


def build_arch(name, entry):
    from app.model.build import build_model
    from app.recipe import Model

    model, _, _ = build_model(Model(arch=name, encoder=TINY), n_classes=3, size=64)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def build_norm(name, entry):
    from app.model.build import build_model
    from app.model.norms import apply_norm
    from app.recipe import Model

    model = apply_norm(build_model(Model(encoder=TINY), 3, 64)[0], name)
    with torch.no_grad():
        assert torch.isfinite(model.eval()(torch.randn(2, 3, 64, 64))).all()


def build_loss_term(name, entry):
    from app.model.loss import SegmentationLoss

    logits = torch.randn(2, 4, 16, 16, requires_grad=True)
    target = torch.randint(0, 4, (2, 16, 16))
    value = SegmentationLoss({name: 1.0}, class_weights=[1, 2, 1, 1])(logits, target)
    value.backward()
    assert torch.isfinite(value) and logits.grad.abs().sum() > 0


def build_optimizer(name, entry):
    from app.train.optim import opt_func

    param = torch.nn.Parameter(torch.ones(3))
    opt = opt_func(name)([param], lr=0.1)
    param.grad = torch.ones(3)
    opt.step()
    assert not torch.equal(param.detach(), torch.ones(3))


def _learner():
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner

    x = torch.randn(32, 4)
    items = list(zip(x, x.sum(1, keepdim=True)))
    dls = DataLoaders.from_dsets(items[:24], items[24:], bs=8, device="cpu", num_workers=0)
    return Learner(dls, torch.nn.Linear(4, 1), loss_func=torch.nn.MSELoss())


def build_schedule(name, entry):
    from app.train.schedule import ScheduleOptions, fit

    learn = _learner()
    with learn.no_bar(), learn.no_logging():
        fit(learn, ScheduleOptions(name, step_epochs=(1,)), 2, 1e-2)
    assert len(learn.recorder.lrs) == 6


def build_precision(name, entry):
    from app.errors import TrashError

    learn = _learner()
    if name == "fp16" and not torch.cuda.is_available():
        with pytest.raises(TrashError, match="CUDA"):
            entry(learn)
        return
    entry(learn)
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-3)


def build_averaging(name, entry):
    from app.recipe import Recipe

    assert isinstance(entry(Recipe()), list)


def build_weight_scheme(name, entry):
    from app.data.stats import class_weights

    stats = {"classes": {c: {"pixels": p, "share": p / 100} for c, p in (("bg", 90), ("a", 9), ("b", 1), ("c", 0))}}
    weights = class_weights(stats, name)
    assert weights[-1] == 0 and weights[2] > weights[1] > 0


def build_preset(name, entry):
    from app.data.augment import build_preset

    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:20, 4:12] = 2
    out = build_preset(name, seed=0)(image=image, mask=mask)
    assert out["image"].shape == image.shape and set(np.unique(out["mask"])) <= {0, 2}


def build_sampler(name, entry):
    presence = np.array([[1, 1, 0], [1, 0, 1], [1, 0, 0], [1, 0, 0]], bool)
    weights = entry(presence, [2])
    assert weights is None or (len(weights) == 4 and weights[1] > weights[2])


def build_overlap_rule(name, entry):
    from app.data.coco import CocoImage, CocoSet
    from app.data.masks import rasterize

    big = {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[0, 0, 9, 0, 9, 9, 0, 9]]}
    small = {"id": 2, "image_id": 1, "category_id": 2, "segmentation": [[2, 2, 5, 2, 5, 5, 2, 5]]}
    categories = [{"id": 1, "name": "big"}, {"id": 2, "name": "small"}]
    coco = CocoSet(None, [CocoImage(1, "a.png", 10, 10)], categories, {1: [big, small]})
    mask = rasterize(coco, coco.images[0], name)
    assert set(np.unique(mask)) <= {0, 1, 2} and mask[3, 3] in (1, 2) and mask[8, 8] == 1


def build_view_set(name, entry):
    from app.infer.tta import parse_views, predict_probs

    model = torch.nn.Conv2d(3, 4, 3, padding=1)
    probs = predict_probs(model, torch.randn(1, 3, 64, 64), parse_views(name))
    assert probs.shape == (1, 4, 64, 64) and torch.allclose(probs.sum(1), torch.ones(1, 64, 64), atol=1e-5)


def build_onnx_precision(name, entry):
    import copy

    from app.infer.onnx_export import Deployed, check_tolerance, verify, write_graph
    from app.model.build import build_model
    from app.recipe import Model

    model = build_model(Model(encoder=TINY, pretrained=False, last_cross=False), 3, 64)[0]
    norm = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    reference = Deployed(model, *norm)
    graph = Deployed(copy.deepcopy(model), *norm, half=True) if entry.half else reference
    path = Path(tempfile.mkdtemp()) / "m.onnx"
    write_graph(graph, (64, 64), False, path)
    check_tolerance(verify(reference, path, torch.rand(2, 3, 64, 64) * 255, 0), entry, path)


def build_engine(name, entry):
    from app.infer.backend import Unavailable, same_pixels
    from app.model.build import build_model
    from app.recipe import Model

    model = build_model(Model(encoder=TINY, pretrained=False, last_cross=False), 3, 64)[0].eval()
    x = torch.randn(2, 3, 64, 64)
    try:
        net = entry.make(model, {(64, 64)})
    except Unavailable as e:  # bf16 on a CPU without bf16 instructions: the reason is the point
        assert name == "bf16" and "bf16" in str(e)
        return
    with torch.no_grad():
        reference = model(x)
    assert net(x).shape == reference.shape and same_pixels(net, reference.argmax(1), x) >= 0.99


BUILDERS = {
    "app.model.build.ARCHS": build_arch,
    "app.model.norms.NORMS": build_norm,
    "app.model.loss.LOSS_TERMS": build_loss_term,
    "app.train.optim.OPTIMIZERS": build_optimizer,
    "app.train.schedule.SCHEDULES": build_schedule,
    "app.train.learner.PRECISIONS": build_precision,
    "app.train.learner.AVERAGING": build_averaging,
    "app.data.stats.WEIGHT_SCHEMES": build_weight_scheme,
    "app.data.augment.PRESETS": build_preset,
    "app.data.loaders.SAMPLERS": build_sampler,
    "app.data.masks.OVERLAP_RULES": build_overlap_rule,
    "app.infer.tta.VIEW_SETS": build_view_set,
    "app.infer.onnx_export.ONNX_PRECISIONS": build_onnx_precision,
    "app.infer.backend.ENGINES": build_engine,
}


def test_every_registry_is_covered():
    assert set(registries()) == set(BUILDERS)


def _entries():
    for path, builder in BUILDERS.items():
        module, name = path.rsplit(".", 1)
        registry = getattr(importlib.import_module(module), name)
        for entry in registry:
            yield pytest.param(builder, entry, registry[entry], id=f"{name}:{entry}")


@pytest.mark.parametrize("builder,name,entry", list(_entries()))
def test_every_entry_builds(builder, name, entry):
    builder(name, entry)


def test_an_unknown_name_names_the_closest_and_all():
    from app.errors import TrashError
    from app.model.build import ARCHS

    with pytest.raises(TrashError) as e:
        ARCHS["deeplab"]
    assert "did you mean 'deeplabv3plus'" in str(e.value) and ARCHS.names() in str(e.value)
