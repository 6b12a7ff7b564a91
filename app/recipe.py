"""The recipe schema (frozen dataclasses), loading recipe files, `--set` overrides and static checks.

A recipe is a plain Python file in `recipes/` that assigns dicts to the section names `data`, `model`,
`loss` and `train` (and optionally `base = "other.py"` to start from another recipe). Every key is
checked against the schema below before any image is read or model built; all problems are
reported at once. This module imports nothing heavy, so validating a recipe takes milliseconds.
"""

import ast
import dataclasses
import difflib
import runpy
import typing
from dataclasses import dataclass, field
from pathlib import Path

from app.errors import TrashError


@dataclass(frozen=True)
class Data:
    annotations: str = ""  # COCO json of the training images
    images: str = ""  # folder the json's `file_name`s are relative to
    valid_annotations: str = ""  # optional second json for validation (the competition ships val.json)
    valid_images: str = ""  # folder for valid_annotations; "" = same as `images`
    valid_fraction: float = 0.2  # used when valid_annotations is "": seeded share of images held out
    split: str = ""  # folder written by `trash data split`; with `fold`, replaces annotations/valid_annotations
    fold: int = -1  # which fold of `split` to train (`trash fit --fold K`); -1 = no split
    overlap: str = "largest-first"  # paint order of overlapping annotations (app/coco.py OVERLAP_RULES)
    drop_bad_annotations: bool = False  # drop (and list) what `trash data check` reports instead of refusing
    size: int = 256  # side (px) images are squished to for training and prediction
    stages: tuple[tuple[int, int], ...] = ()  # progressive resizing ((size, epochs), ...); overrides size/epochs
    batch_size: int = 8
    workers: int = 0  # DataLoader worker processes (0 = main process; measured fastest on 2 cores)
    augment: str = "light"  # augmentation preset name, see app/augment.py
    crop: int = 0  # > 0: train on crop x crop windows of the resized image, centred on objects when there are any
    rare_classes: tuple[str, ...] = ()  # targets of copy_paste / mosaic / sampler; () = in < 10% of train images
    copy_paste: float = 0.0  # probability that a training image gets rare-class objects pasted from another one
    mosaic: float = 0.0  # probability that a training image is replaced by a 4-image mosaic
    sampler: str = "uniform"  # uniform | balanced (oversample images that contain rare classes)
    mask_cache: str = ""  # folder for rasterized masks; "" = ~/.cache/trash/masks
    pseudo: str = ""  # pseudo-label json from `trash pseudo`, added to the training images (never to validation)
    pseudo_images: str = ""  # folder pseudo's file_names are relative to; "" = same as `images`
    fraction: float = 1.0  # seeded share of the images used (train and valid); `--debug` sets 0.1


@dataclass(frozen=True)
class Model:
    arch: str = "unet"  # unet (fastai DynamicUnet) | smp: smp_unet deeplabv3plus fpn unetplusplus upernet segformer
    encoder: str = "resnet18"  # any timm model with features_only support
    pretrained: bool = False  # timm weights (local cache or hub); fails clearly offline
    weights: str = ""  # local encoder weights file (.safetensors/.pth, timm or torchvision names); implies pretrained
    norm: str = "batch"  # batch | group (small micro-batches) | frozen_bn (pretrained statistics kept)
    blur: bool = False  # DynamicUnet: blur after pixel shuffle (fewer checkerboard artefacts)
    self_attention: bool = False  # DynamicUnet: self-attention in the third-to-last decoder block
    # DynamicUnet: full-resolution ResBlock over decoder output + input image (fastai's default True; costs 10-25%
    # of training speed: docs/benchmarks.md)
    last_cross: bool = False
    bottle: bool = False  # DynamicUnet: bottleneck in that last ResBlock
    # DynamicUnet decoder channels at 1/16, 1/8, 1/4, 1/2, 1/1 of the input, as smp's decoder_channels; () = fastai's
    # widths (up_in/2 + skip channels: 5.7x the FLOPs of the default with resnet18, 2.7x with effb4; docs/benchmarks.md)
    decoder_widths: tuple[int, ...] = (256, 128, 64, 32, 16)
    freeze_epochs: int = 0  # pretrained encoders: epochs with the encoder frozen before unfreezing everything
    encoder_lr_div: float = 10.0  # after unfreezing, the encoder trains at lr / this (discriminative lrs)


@dataclass(frozen=True)
class Loss:
    # Weights of the terms of a weighted sum (0 = term off). 0.9 CE + 0.1 focal was the teams' best;
    # focal alone collapsed.
    ce: float = 1.0
    focal: float = 0.0
    dice: float = 0.0
    tversky: float = 0.0
    lovasz: float = 0.0
    iou: float = 0.0
    focal_gamma: float = 2.0
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    tversky_alpha: float = 0.5  # false-positive weight (0.3/0.7 favours recall of small objects)
    tversky_beta: float = 0.5  # false-negative weight
    class_weights: tuple[float, ...] = ()  # one per class, background first; () = all 1
    class_weight_scheme: str = ""  # or computed from training pixel shares: inverse | log | sqrt
    adaptive_class_weights: bool = False  # re-weigh classes each epoch from validation IoU (harder = heavier)
    ignore_index: int = 255  # mask value that contributes no loss (unlabelled / unconfident pixels)

    def terms(self) -> dict[str, float]:
        """The non-zero terms of the weighted sum, by name."""
        return {name: getattr(self, name) for name in LOSS_TERMS if getattr(self, name)}


@dataclass(frozen=True)
class Train:
    epochs: int = 10
    lr: float = 1e-3  # peak learning rate of the schedule
    wd: float = 1e-2  # weight decay
    optimizer: str = "adamw"  # adam | adamw | sgd | radam | ranger | lookahead_adam | adamp (app/optim.py)
    schedule: str = "one_cycle"  # one_cycle | flat_cos | warmup_cosine | step | plateau (app/schedule.py)
    warmup_pct: float = 0.1  # warmup_cosine: share of training spent warming up
    step_epochs: tuple[int, ...] = ()  # step: epochs at which the lr is multiplied by step_gamma
    step_gamma: float = 0.1
    plateau_patience: int = 2  # plateau: epochs without validation improvement before the lr drops
    precision: str = "fp32"  # fp32 | bf16 | fp16 | auto (fp16 on CUDA, bf16 autocast on CPU)
    channels_last: bool = False  # NHWC memory layout (pays off with bf16 on CPU and with fp16 on GPU)
    effective_batch: int = 0  # gradient accumulation up to this many samples per step; 0 = batch_size
    averaging: str = "none"  # none | ema | swa: weights averaged over training replace the last ones
    ema_decay: float = 0.999
    swa_start: float = 0.75  # swa: fraction of the epochs after which weights are averaged (once per epoch)
    top_k: int = 0  # keep the k best epochs' weights (models/epoch_<n>.pth) for an epoch ensemble
    cutmix: float = 0.0  # probability per batch of segmentation CutMix (a box of image and mask from another sample)
    tensorboard: bool = False  # also log to <run>/tensorboard (needs the tensorboard package)
    seed: int = 42


@dataclass(frozen=True)
class Recipe:
    data: Data = field(default_factory=Data)
    model: Model = field(default_factory=Model)
    loss: Loss = field(default_factory=Loss)
    train: Train = field(default_factory=Train)
    name: str = "recipe"  # the recipe file's stem; names the run folder
    description: str = ""  # the recipe file's docstring, first line

    def stages(self) -> tuple[tuple[int, int], ...]:
        """(size, epochs) per progressive-resizing stage; one stage when `data.stages` is empty."""
        return self.data.stages or ((self.data.size, self.train.epochs),)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS = {"data": Data, "model": Model, "loss": Loss, "train": Train}
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
LOSS_TERMS = ("ce", "focal", "dice", "tversky", "lovasz", "iou")
OPTIMIZERS = ("adam", "adamw", "sgd", "radam", "ranger", "lookahead_adam", "adamp")
SCHEDULES = ("one_cycle", "flat_cos", "warmup_cosine", "step", "plateau")
AVERAGING = ("none", "ema", "swa")
SAMPLERS = ("uniform", "balanced")
NORMS = ("batch", "group", "frozen_bn")
PATH_KEYS = (
    "data.annotations",
    "data.images",
    "data.valid_annotations",
    "data.valid_images",
    "data.split",
    "data.pseudo",
    "data.pseudo_images",
    "model.weights",
)
WEIGHT_SCHEMES = ("inverse", "log", "sqrt")  # app/stats.py computes them; listed here to validate without numpy


def load_recipe(path: str | Path, overrides: typing.Sequence[str] = (), check_files: bool = True) -> Recipe:
    """Reads a recipe file, applies `key=value` overrides and validates everything.

    Args:
        path: The recipe file (plain Python assigning dicts to data/model/loss/train).
        overrides: `section.key=value` strings; values are Python literals or bare strings.
        check_files: Also check that the data files named in the recipe exist.

    Raises:
        TrashError: Listing every problem found, one per line.
    """
    path = Path(path)
    sections, description = _read_sections(path)
    errors: list[str] = []
    for item in overrides:
        _apply_override(sections, item, errors)
    recipe = _build(sections, errors)
    if recipe is not None:
        recipe = dataclasses.replace(recipe, name=path.stem, description=description)
        errors += check_recipe(recipe, check_files)
    if errors:
        raise TrashError("\n".join(f"recipe {path}: {e}" for e in errors))
    return recipe


def _read_sections(path: Path, _seen: tuple[Path, ...] = ()) -> tuple[dict[str, dict], str]:
    """Runs the recipe file and returns its sections (merged over its `base`, if any) and docstring."""
    if not path.is_file():
        raise TrashError(f"recipe file not found: {path}")
    if path.resolve() in _seen:
        raise TrashError(f"recipe {path}: `base` chain loops back to itself")
    try:
        ns = runpy.run_path(str(path))
    except Exception as e:  # a recipe is user code: report its error in one line
        raise TrashError(f"recipe {path}: cannot be executed: {type(e).__name__}: {e}") from None
    description = (ns.get("__doc__") or "").strip().splitlines()[0] if ns.get("__doc__") else ""
    sections: dict[str, dict] = {name: {} for name in SECTIONS}
    base = ns.get("base")
    if base is not None:
        if not isinstance(base, str):
            raise TrashError(f"recipe {path}: `base` must be a file name string, got {type(base).__name__}")
        sections, base_description = _read_sections(path.parent / base, (*_seen, path.resolve()))
        description = description or base_description
    errors = []
    for name, value in ns.items():
        if name.startswith("_") or name == "base" or isinstance(value, type(typing)):
            continue
        if name not in SECTIONS:
            errors.append(f"unknown section {name!r}{_suggest(name, SECTIONS)}; sections: {', '.join(SECTIONS)}")
        elif not isinstance(value, dict):
            errors.append(f"section {name!r} must be a dict, got {type(value).__name__}")
        else:
            sections[name] = {**sections[name], **value}
    if errors:
        raise TrashError("\n".join(f"recipe {path}: {e}" for e in errors))
    return sections, description


def _apply_override(sections: dict[str, dict], item: str, errors: list[str]) -> None:
    """Applies one `section.key=value` override in place, recording malformed ones in `errors`."""
    key, sep, raw = item.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot:
        errors.append(f"override {item!r} must look like section.key=value, e.g. train.epochs=3")
        return
    if section not in SECTIONS:
        errors.append(f"unknown key {key.strip()!r}{_suggest(section, SECTIONS)}")
        return
    sections[section][name] = _parse_literal(raw.strip())


def _parse_literal(raw: str) -> object:
    """`3` → 3, `1e-3` → 0.001, `(1, 2)` → (1, 2), `true` → True; anything else stays a string."""
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def _build(sections: dict[str, dict], errors: list[str]) -> Recipe | None:
    """Turns section dicts into the frozen schema, collecting unknown keys and wrong types."""
    built = {}
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        values = {}
        for key, value in sections[section].items():
            if key not in hints:
                errors.append(f"unknown key '{section}.{key}'{_suggest(key, hints, section + '.')}")
                continue
            ok, coerced = _coerce(value, hints[key])
            if ok:
                values[key] = coerced
            else:
                errors.append(f"'{section}.{key}' must be {_type_name(hints[key])}, got {value!r}")
        built[section] = cls(**values)
    return None if errors else Recipe(**built)


def _coerce(value: object, hint: object) -> tuple[bool, object]:
    """Checks `value` against a schema type, converting lists to tuples and ints to floats."""
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if hint is str:
        return isinstance(value, str), value
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)):
            return False, value
        args = typing.get_args(hint)
        item_hints = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
        if len(item_hints) != len(value):
            return False, value
        results = [_coerce(v, h) for v, h in zip(value, item_hints)]
        return all(ok for ok, _ in results), tuple(v for _, v in results)
    return False, value


def _type_name(hint: object) -> str:
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if args[-1] is Ellipsis:
            return f"a list of {_type_name(args[0])}"
        return "(" + ", ".join(_type_name(a) for a in args) + ")"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def _suggest(name: str, choices: typing.Iterable[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(name, list(choices), n=3)
    return f" (did you mean {' or '.join(repr(prefix + c) for c in close)}?)" if close else ""


def check_recipe(recipe: Recipe, check_files: bool = True) -> list[str]:
    """Static checks on values (ranges, names, files); returns every problem found."""
    d, t = recipe.data, recipe.train
    errors = []
    if check_files:
        errors += _check_files(recipe)
    if not d.annotations and not d.split:
        errors.append("'data.annotations' is empty: name the COCO json of the training images")
    if d.split and d.fold < 0:
        errors.append("'data.split' is set: choose a fold with `trash fit RECIPE --fold K` or data.fold=K")
    from app.coco import OVERLAP_RULES  # numpy only

    if d.overlap not in OVERLAP_RULES:
        errors.append(f"'data.overlap' is {d.overlap!r}; choose one of {', '.join(OVERLAP_RULES)}")
    scheme = recipe.loss.class_weight_scheme
    if scheme and (scheme not in WEIGHT_SCHEMES or recipe.loss.class_weights):
        errors.append(
            f"'loss.class_weight_scheme' {scheme!r}: use one of {', '.join(WEIGHT_SCHEMES)}, "
            "and not together with loss.class_weights"
        )
    if d.size < 32 or d.size % 32:
        errors.append(f"'data.size' must be a multiple of 32 and at least 32, got {d.size}")
    for size, epochs in d.stages:
        if size < 32 or size % 32 or epochs < 1:
            errors.append(f"'data.stages' entry ({size}, {epochs}): size must be a multiple of 32, epochs >= 1")
    if d.crop and (d.crop % 32 or d.crop > max([d.size, *(s for s, _ in d.stages)])):
        errors.append(f"'data.crop' must be a multiple of 32 no larger than the image size, got {d.crop}")
    if not (0 <= d.copy_paste <= 1 and 0 <= d.mosaic <= 1):
        errors.append("'data.copy_paste' and 'data.mosaic' are probabilities between 0 and 1")
    if d.sampler not in SAMPLERS:
        errors.append(f"'data.sampler' is {d.sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if d.batch_size < 1:
        errors.append(f"'data.batch_size' must be >= 1, got {d.batch_size}")
    if not 0 < d.valid_fraction < 1:
        errors.append(f"'data.valid_fraction' must be between 0 and 1, got {d.valid_fraction}")
    from app.augment import PRESETS  # light: albumentations is imported lazily there

    if d.augment not in PRESETS:
        errors.append(f"'data.augment' is {d.augment!r}{_suggest(d.augment, PRESETS)}; presets: {', '.join(PRESETS)}")
    if recipe.model.norm not in NORMS:
        errors.append(f"'model.norm' is {recipe.model.norm!r}; choose one of {', '.join(NORMS)}")
    if t.precision not in PRECISIONS:
        errors.append(f"'train.precision' is {t.precision!r}; choose one of {', '.join(PRECISIONS)}")
    if t.epochs < 1 or t.lr <= 0:
        errors.append(f"'train.epochs' must be >= 1 and 'train.lr' > 0, got {t.epochs} and {t.lr}")
    if t.effective_batch and t.effective_batch < d.batch_size:
        errors.append(f"'train.effective_batch' ({t.effective_batch}) is below 'data.batch_size' ({d.batch_size})")
    weights = [getattr(recipe.loss, name) for name in LOSS_TERMS]
    if min(weights) < 0 or sum(weights) == 0:
        errors.append(f"loss term weights ({', '.join('loss.' + n for n in LOSS_TERMS)}) must be >= 0, not all 0")
    for key, value, choices in (
        ("train.optimizer", t.optimizer, OPTIMIZERS),
        ("train.schedule", t.schedule, SCHEDULES),
        ("train.averaging", t.averaging, AVERAGING),
    ):
        if value not in choices:
            errors.append(f"'{key}' is {value!r}{_suggest(value, choices)}; choose one of {', '.join(choices)}")
    if not 0 < d.fraction <= 1 or not 0 <= t.cutmix <= 1 or not 0 <= t.swa_start < 1:
        errors.append("'data.fraction' must be in (0, 1], 'train.cutmix' in [0, 1], 'train.swa_start' in [0, 1)")
    if t.top_k < 0:
        errors.append(f"'train.top_k' must be >= 0, got {t.top_k}")
    return errors


def _check_files(recipe: Recipe) -> list[str]:
    errors = []
    for key in PATH_KEYS:
        section, name = key.split(".")
        value = getattr(getattr(recipe, section), name)
        if value and not Path(value).exists():
            errors.append(f"'{key}' names a missing file or folder: {value}")
    return errors


def resolve_paths(recipe: Recipe, root: Path | None = None) -> Recipe:
    """Returns the recipe with every path made absolute (relative to `root`, default the working dir)."""
    root = Path(root or Path.cwd())
    sections = {}
    for section in SECTIONS:
        values = {}
        for key in PATH_KEYS:
            sec, name = key.split(".")
            value = getattr(getattr(recipe, sec), name)
            if sec == section and value:
                values[name] = str((root / value).resolve())
        sections[section] = dataclasses.replace(getattr(recipe, section), **values)
    return dataclasses.replace(recipe, **sections)


def recipe_from_dict(values: dict) -> Recipe:
    """Rebuilds a Recipe from `Recipe.to_dict()` output (as stored in a run's resolved.json)."""
    errors: list[str] = []
    recipe = _build({s: dict(values.get(s, {})) for s in SECTIONS}, errors)
    if recipe is None:
        raise TrashError("; ".join(errors))
    return dataclasses.replace(recipe, name=values.get("name", "recipe"), description=values.get("description", ""))


def describe_recipes(folder: str | Path = "recipes") -> list[tuple[str, str]]:
    """(file name, one-line description) of every recipe file in `folder`; unloadable ones say why."""
    found = []
    for path in sorted(Path(folder).glob("*.py")):
        try:
            found.append((path.name, load_recipe(path, check_files=False).description))
        except TrashError as e:
            found.append((path.name, f"(invalid: {str(e).splitlines()[0]})"))
    return found
