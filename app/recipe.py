"""The recipe schema (frozen dataclasses): building it from section dicts with every type checked, the checks of
values, absolute paths, and rebuilding it from a run's resolved.json.

A recipe is a plain Python file (app/recipe_file.py reads it) that assigns dicts to the section names `data`,
`model`, `loss` and `train`. Every key and type is checked against the schema below, and every range here,
before any image is read or model built; all problems are reported at once. Names (archs, loss terms,
optimizers...) are checked against their registries by app/train/validate.py. This module imports nothing heavy.

The loss section holds term weights by name (`loss = dict(ce=0.9, focal=0.1)`): any key that is not one of
`Loss`'s fields and whose value is a number is a term weight, kept in `Loss.terms`; the term names come from
the loss-term registry (app/model/loss.py), so a new term needs no field here.
"""

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

from app.errors import TrashError
from app.registry import did_you_mean


@dataclass(frozen=True)
class Data:
    annotations: str = ""  # COCO json of the training images
    images: str = ""  # folder the json's `file_name`s are relative to
    valid_annotations: str = ""  # optional second json for validation (the competition ships val.json)
    valid_images: str = ""  # folder for valid_annotations; "" = same as `images`
    valid_fraction: float = 0.2  # used when valid_annotations is "": seeded share of images held out
    split: str = ""  # folder written by `trash data split`; with `fold`, replaces annotations/valid_annotations
    split_command: str = ""  # the command(s) that make `split`: `trash fit` shows them when the folder is missing
    fold: int = -1  # which fold of `split` to train (`trash fit --fold K`); -1 = no split
    overlap: str = "largest-first"  # paint order of overlapping annotations (app/data/masks.py OVERLAP_RULES)
    drop_bad_annotations: bool = False  # drop (and list) what `trash data check` reports instead of refusing
    size: int = 256  # height (px) images are squished to for training and prediction (the side when aspect is 1)
    aspect: float = 1.0  # width / height of that size: 1.75 squishes to size x 1.75*size (width rounded to 32)
    stages: tuple[tuple[int, int], ...] = ()  # progressive resizing ((size, epochs), ...); overrides size/epochs
    batch_size: int = 8
    workers: int = 0  # DataLoader worker processes (0 = main process; measured fastest on 2 cores)
    augment: str = "light"  # augmentation preset (app/data/augment.py PRESETS)
    crop: int = 0  # > 0: train on crop x crop windows of the resized image, centred on objects when there are any
    rare_classes: tuple[str, ...] = ()  # targets of copy_paste / mosaic / sampler; () = in < 10% of train images
    copy_paste: float = 0.0  # probability that a training image gets rare-class objects pasted from another one
    mosaic: float = 0.0  # probability that a training image is replaced by a 4-image mosaic
    sampler: str = "uniform"  # app/data/loaders.py SAMPLERS: uniform | balanced (oversample rare-class images)
    mask_cache: str = ""  # folder for rasterized masks; "" = ~/.cache/trash/masks
    pseudo: str = ""  # pseudo-label json from `trash pseudo`, added to the training images (never to validation)
    pseudo_images: str = ""  # folder pseudo's file_names are relative to; "" = same as `images`
    fraction: float = 1.0  # seeded share of the images used (train and valid); `--debug` sets 0.1


@dataclass(frozen=True)
class Model:
    arch: str = "unet"  # app/model/build.py ARCHS: unet (fastai DynamicUnet) or an smp decoder
    encoder: str = "resnet18"  # any timm model with features_only support
    pretrained: bool = False  # timm weights (local cache or hub); fails clearly offline
    weights: str = ""  # local encoder weights file (.safetensors/.pth, timm or torchvision names); implies pretrained
    norm: str = "batch"  # app/model/norms.py NORMS: batch | group (small micro-batches) | frozen_bn
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
    # the encoder's first stages (stem, 1/2 and 1/4 resolution blocks) that never train: no backward through the
    # highest resolutions (2 stages of Lite0 at 256 px: ~15% less CPU per step), their pretrained filters kept
    freeze_stages: int = 0
    encoder_lr_div: float = 10.0  # after unfreezing, the encoder trains at lr / this (discriminative lrs)


@dataclass(frozen=True)
class Loss:
    # (term, weight) pairs of a weighted sum, written in a recipe as loss = dict(ce=0.9, focal=0.1); term names from
    # app/model/loss.py LOSS_TERMS. CE keeps weight 1 unless the recipe sets `ce`. 0.9 CE + 0.1 focal was the
    # teams' best; focal alone collapsed.
    terms: tuple[tuple[str, float], ...] = (("ce", 1.0),)
    focal_gamma: float = 2.0
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    tversky_alpha: float = 0.5  # false-positive weight (0.3/0.7 favours recall of small objects)
    tversky_beta: float = 0.5  # false-negative weight
    class_weights: tuple[float, ...] = ()  # one per class, background first; () = all 1
    class_weight_scheme: str = ""  # or computed from training pixel shares (app/data/stats.py WEIGHT_SCHEMES)
    adaptive_class_weights: bool = False  # re-weigh classes each epoch from validation IoU (harder = heavier)
    ignore_index: int = 255  # mask value that contributes no loss (unlabelled / unconfident pixels)

    def weights(self) -> dict[str, float]:
        """The non-zero terms of the weighted sum, by name."""
        return {name: weight for name, weight in self.terms if weight}


@dataclass(frozen=True)
class Train:
    epochs: int = 10
    lr: float = 1e-3  # peak learning rate of the schedule
    wd: float = 1e-2  # weight decay
    optimizer: str = "adamw"  # app/train/optim.py OPTIMIZERS
    schedule: str = "one_cycle"  # app/train/schedule.py SCHEDULES
    warmup_pct: float = 0.1  # warmup_cosine: share of training spent warming up
    step_epochs: tuple[int, ...] = ()  # step: epochs at which the lr is multiplied by step_gamma
    step_gamma: float = 0.1
    plateau_patience: int = 2  # plateau: epochs without validation improvement before the lr drops
    precision: str = "fp32"  # app/train/learner.py PRECISIONS: fp32 | bf16 | fp16 | auto
    channels_last: bool = False  # NHWC memory layout
    effective_batch: int = 0  # gradient accumulation up to this many samples per step; 0 = batch_size
    averaging: str = "none"  # app/train/learner.py AVERAGING: none | ema | swa
    ema_decay: float = 0.999
    swa_start: float = 0.75  # swa: fraction of the epochs after which weights are averaged (once per epoch)
    top_k: int = 0  # keep the k best epochs' weights (models/epoch_<n>.pth) for an epoch ensemble
    cutmix: float = 0.0  # probability per batch of segmentation CutMix (a box of image and mask from another sample)
    tensorboard: bool = False  # also log to <run>/tensorboard (needs the tensorboard package)
    seed: int = 42
    threads: int = 0  # torch (and OpenCV) threads; 0 = torch's default. 1 uses the least CPU time per image
    # > 0: the whole `trash fit` process may use this many CPU-seconds (user + sys): the schedule runs on the share
    # of this budget used, training stops in time to validate and export within it; train.epochs is then a cap
    cpu_budget: float = 0.0


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

    def shape(self, size: int) -> tuple[int, int]:
        """(height, width) images are squished to at a stage of height `size` (`data.aspect`, width to 32)."""
        if self.data.aspect == 1:
            return size, size
        return size, max(32, round(size * self.data.aspect / 32) * 32)

    def to_dict(self) -> dict:
        """Plain values, the loss terms flattened into their section (`loss.ce`), as a recipe file writes them."""
        values = dataclasses.asdict(self)
        values["loss"] = {**dict(values["loss"].pop("terms")), **values["loss"]}
        return values

    def get(self, key: str):
        """The value of a dotted key such as "model.arch"."""
        section, _, name = key.partition(".")
        return getattr(getattr(self, section), name)


SECTIONS = {"data": Data, "model": Model, "loss": Loss, "train": Train}
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


def _fold_loss_terms(values: dict, hints: dict) -> dict:
    """The loss section with its term weights (numbers under keys that are not fields) folded into `terms`."""
    values, terms = dict(values), {}
    if "terms" in values:
        ok, given = _coerce(values["terms"], hints["terms"])
        if not ok:
            return values  # reported as a wrong type by _build
        terms = dict(given)
        del values["terms"]
    for key in [k for k, v in values.items() if k not in hints and _is_number(v)]:
        terms[key] = float(values.pop(key))
    values["terms"] = tuple({"ce": 1.0, **terms}.items())
    return values


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def build_recipe(sections: dict[str, dict], errors: list[str]) -> Recipe | None:
    """Turns section dicts into the frozen schema, collecting unknown keys and wrong types."""
    built = {}
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        given = _fold_loss_terms(sections[section], hints) if cls is Loss else sections[section]
        values = {}
        for key, value in given.items():
            if key not in hints:
                errors.append(f"unknown key '{section}.{key}'{did_you_mean(key, hints, section + '.')}")
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
        ok = _is_number(value)
        return ok, float(value) if ok else value
    if hint is str:
        return isinstance(value, str), value
    if typing.get_origin(hint) is tuple:
        return _coerce_tuple(value, typing.get_args(hint))
    return False, value


def _coerce_tuple(value: object, args: tuple) -> tuple[bool, object]:
    if not isinstance(value, list | tuple):
        return False, value
    item_hints = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
    if len(item_hints) != len(value):
        return False, value
    results = [_coerce(v, h) for v, h in zip(value, item_hints)]
    return all(ok for ok, _ in results), tuple(v for _, v in results)


def _type_name(hint: object) -> str:
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if args[-1] is Ellipsis:
            return f"a list of {_type_name(args[0])}"
        return "(" + ", ".join(_type_name(a) for a in args) + ")"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def check_recipe(recipe: Recipe, check_files: bool = True) -> list[str]:
    """Checks of values that need no registry or model (ranges, sizes, files); returns every problem found."""
    errors = _check_files(recipe) if check_files else []
    return errors + _check_data(recipe.data, recipe.stages()) + _check_loss(recipe.loss) + _check_train(recipe)


def _check_data(d: Data, stages: tuple[tuple[int, int], ...]) -> list[str]:
    errors = []
    if not d.annotations and not d.split:
        errors.append("'data.annotations' is empty: name the COCO json of the training images")
    if d.split and d.fold < 0:
        errors.append("'data.split' is set: choose a fold with `trash fit RECIPE --fold K` or data.fold=K")
    if d.size < 32 or d.size % 32:
        errors.append(f"'data.size' must be a multiple of 32 and at least 32, got {d.size}")
    for size, epochs in d.stages:
        if size < 32 or size % 32 or epochs < 1:
            errors.append(f"'data.stages' entry ({size}, {epochs}): size must be a multiple of 32, epochs >= 1")
    if d.crop and (d.crop % 32 or d.crop > max(size for size, _ in stages) * min(1.0, d.aspect)):
        errors.append(f"'data.crop' must be a multiple of 32 no larger than the image size, got {d.crop}")
    if not 0.25 <= d.aspect <= 4:
        errors.append(f"'data.aspect' (width / height) must be between 0.25 and 4, got {d.aspect}")
    if not (0 <= d.copy_paste <= 1 and 0 <= d.mosaic <= 1):
        errors.append("'data.copy_paste' and 'data.mosaic' are probabilities between 0 and 1")
    if d.batch_size < 1 or d.workers < 0:
        errors.append(f"'data.batch_size' must be >= 1 and 'data.workers' >= 0, got {d.batch_size}, {d.workers}")
    if not 0 < d.valid_fraction < 1:
        errors.append(f"'data.valid_fraction' must be between 0 and 1, got {d.valid_fraction}")
    if not 0 < d.fraction <= 1:
        errors.append(f"'data.fraction' must be in (0, 1], got {d.fraction}")
    return errors


def _check_loss(lo: Loss) -> list[str]:
    errors = []
    weights = [w for _, w in lo.terms]
    if min(weights) < 0 or sum(weights) == 0:
        errors.append(f"loss term weights ({', '.join('loss.' + n for n, _ in lo.terms)}) must be >= 0, not all 0")
    if lo.class_weight_scheme and lo.class_weights:
        errors.append("'loss.class_weight_scheme' and 'loss.class_weights' cannot be used together")
    if not 0 <= lo.label_smoothing <= 1:
        errors.append(f"'loss.label_smoothing' must be in [0, 1], got {lo.label_smoothing}")
    return errors


def _check_train(recipe: Recipe) -> list[str]:
    t, errors = recipe.train, []
    if t.epochs < 1 or t.lr <= 0:
        errors.append(f"'train.epochs' must be >= 1 and 'train.lr' > 0, got {t.epochs} and {t.lr}")
    if t.effective_batch and t.effective_batch < recipe.data.batch_size:
        errors.append(
            f"'train.effective_batch' ({t.effective_batch}) is below 'data.batch_size' ({recipe.data.batch_size})"
        )
    if not 0 <= t.cutmix <= 1 or not 0 <= t.swa_start < 1:
        errors.append("'train.cutmix' must be in [0, 1] and 'train.swa_start' in [0, 1)")
    if recipe.model.freeze_stages < 0:
        errors.append(f"'model.freeze_stages' must be >= 0, got {recipe.model.freeze_stages}")
    if t.top_k < 0 or t.threads < 0 or t.cpu_budget < 0:
        errors.append("'train.top_k', 'train.threads' and 'train.cpu_budget' must be >= 0")
    if t.cpu_budget and (len(recipe.stages()) > 1 or recipe.model.freeze_epochs):
        errors.append("'train.cpu_budget' drives one phase: use it without data.stages and model.freeze_epochs")
    return errors


def _check_files(recipe: Recipe) -> list[str]:
    errors = []
    for key in PATH_KEYS:
        value = recipe.get(key)
        if value and not Path(value).exists():
            how = (
                f"; make it with: {recipe.data.split_command}"
                if key == "data.split" and recipe.data.split_command
                else ""
            )
            errors.append(f"'{key}' names a missing file or folder: {value}{how}")
    return errors


def resolve_paths(recipe: Recipe, root: Path | None = None) -> Recipe:
    """Returns the recipe with every path made absolute (relative to `root`, default the working dir)."""
    root = Path(root or Path.cwd())
    sections = {}
    for section in SECTIONS:
        values = {}
        for key in PATH_KEYS:
            sec, name = key.split(".")
            value = recipe.get(key)
            if sec == section and value:
                values[name] = str((root / value).resolve())
        sections[section] = dataclasses.replace(getattr(recipe, section), **values)
    return dataclasses.replace(recipe, **sections)


def recipe_from_dict(values: dict) -> Recipe:
    """Rebuilds a Recipe from `Recipe.to_dict()` output (as stored in a run's resolved.json or weights.pth).

    Also reads what older versions stored (the loss terms as they still are, flat in their section).
    """
    errors: list[str] = []
    recipe = build_recipe({s: dict(values.get(s, {})) for s in SECTIONS}, errors)
    if recipe is None:
        raise TrashError("; ".join(errors))
    return dataclasses.replace(recipe, name=values.get("name", "recipe"), description=values.get("description", ""))
