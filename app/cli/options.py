"""Options several commands share, declared once: recipe overrides, output folders, and the inference options.

`inference_options(*names)` adds named inference options to a command; their values reach it as one
`app.infer.options.InferenceOptions` in its `options` parameter, so each command's own signature stays short.
"""

import functools
import inspect
import json
from pathlib import Path
from typing import Annotated

import typer

from app.errors import TrashError
from app.infer.options import InferenceOptions
from app.infer.tta import VIEW_SETS

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a recipe value: section.key=value (repeatable), e.g. train.epochs=3"),
]
OutOption = Annotated[
    Path, typer.Option("--out", "-o", help="Folder that receives <recipe>/<timestamp>/ run directories")
]
ModelsArg = Annotated[
    list[str],
    typer.Argument(
        help="Exported models: run directories (or their `latest` link), export.pkl or weights.pth files, fold "
        "groups, or predictions folders (predict --save-probs); several = an ensemble"
    ),
]
ImagesOption = Annotated[Path, typer.Option(help="Folder the json's file_names are relative to")]
#: app/infer/backend.py's ENGINES, named here without importing it (it imports torch; `trash --help` must not);
#: tests/infer/test_backend.py checks that this text names exactly those engines
BACKEND_HELP = (
    "Engine for run directories: auto (the fastest here whose masks agree with PyTorch fp32 on 99.99% of the "
    "pixels, timed on the first batch; from 8 batches of images on), torch (PyTorch fp32, as exported), bf16 "
    "(PyTorch bf16 autocast + channels-last: CPUs with bf16 instructions, GPUs) or onnx (ONNX Runtime on the "
    "network exported in memory, fp32)"
)
_VIEW_HELP = ", ".join(f"{name} ({view_set.help})" for name, view_set in VIEW_SETS.items())


def _parameter(name: str, annotation, default) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


#: option name -> its Typer parameter (each becomes one field of InferenceOptions, see _build)
INFERENCE = {
    "tta": _parameter(
        "tta",
        Annotated[bool, typer.Option("--tta", help="Average flips (h, v, hv), each prediction un-flipped")],
        False,
    ),
    "tta_views": _parameter(
        "tta_views",
        Annotated[str | None, typer.Option(help=f"TTA views instead of flips: {_VIEW_HELP}; or a product, e.g. d4+ms")],
        None,
    ),
    "weights": _parameter(
        "weights",
        Annotated[
            str | None,
            typer.Option(help="Comma-separated weight per model argument, e.g. 0.6,0.4 (a fold group shares its)"),
        ],
        None,
    ),
    "class_weights": _parameter(
        "class_weights",
        Annotated[
            Path | None,
            typer.Option(
                help='JSON with per-class weights per model: {"class_weights": [[w_c...] or null, ...]} '
                "(trash ensemble writes it)"
            ),
        ],
        None,
    ),
    "topk": _parameter(
        "topk",
        Annotated[bool, typer.Option("--topk", help="Use each run's top-k epochs (train.top_k) as an epoch ensemble")],
        False,
    ),
    "tile": _parameter(
        "tile",
        Annotated[
            bool,
            typer.Option(
                "--tile",
                help="Predict at each image's own resolution with overlapping tiles of the training size "
                "(Gaussian-blended)",
            ),
        ],
        False,
    ),
    "min_area": _parameter(
        "min_area",
        Annotated[
            float,
            typer.Option(
                help="Post-processing: drop foreground components under this share of the image, e.g. 0.001 (0 = off)"
            ),
        ],
        0.0,
    ),
    "crf": _parameter(
        "crf",
        Annotated[
            bool,
            typer.Option(
                "--crf", help="Post-processing: dense CRF on the image colours (pydensecrf2; about 1 s/image)"
            ),
        ],
        False,
    ),
    "overlays": _parameter(
        "overlays", Annotated[bool, typer.Option(help="Write overlays/*.jpg and preview.png")], True
    ),
    "save_probs": _parameter(
        "save_probs",
        Annotated[bool, typer.Option(help="Also write probs/*.npy (fp16): the folder can then be an ensemble member")],
        False,
    ),
    "skip_bad_images": _parameter(
        "skip_bad_images",
        Annotated[
            bool, typer.Option(help="Leave corrupt or truncated images out (warned, listed) instead of stopping")
        ],
        False,
    ),
    "backend": _parameter("backend", Annotated[str, typer.Option(help=BACKEND_HELP)], "auto"),
    "batch_size": _parameter("batch_size", Annotated[int, typer.Option(min=1, help="Images per forward pass")], 8),
}


def inference_options(*names: str, **defaults):
    """Decorator: the command gets the shared options `names`, built into one InferenceOptions `options`;
    `defaults` replace an option's default for this command (e.g. backend="torch")."""

    def decorate(command):
        signature = inspect.signature(command)
        own = [p for p in signature.parameters.values() if p.name != "options"]

        @functools.wraps(command)
        def wrapper(**kwargs):
            given = {name: kwargs.pop(name) for name in names}
            return command(**kwargs, options=_build(given))

        shared = [INFERENCE[n].replace(default=defaults[n]) if n in defaults else INFERENCE[n] for n in names]
        wrapper.__signature__ = signature.replace(parameters=[*own, *shared])
        return wrapper

    return decorate


def _build(given: dict) -> InferenceOptions:
    values = {k: v for k, v in given.items() if k not in ("tta", "tta_views", "weights", "class_weights")}
    if "tta" in given or "tta_views" in given:
        values["tta"] = given.get("tta_views") or ("flip" if given.get("tta") else "identity")
    if given.get("weights"):
        values["weights"] = _weights(given["weights"])
    if given.get("class_weights"):
        values["class_weights"] = _class_weights(given["class_weights"])
    if "backend" in values:
        from app.infer.backend import check_backend

        check_backend(values["backend"])  # a typo fails before any model or image is read
    return InferenceOptions(**values)


def _class_weights(path: Path) -> tuple:
    try:
        return tuple(json.loads(path.read_text())["class_weights"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise TrashError(f"--class-weights {path}: expected a json with a 'class_weights' list ({e})") from None


def _weights(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise TrashError(f"--weights {text!r}: expected comma-separated numbers, e.g. 0.6,0.4") from None
