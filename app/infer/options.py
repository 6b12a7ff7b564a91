"""How a model (or an ensemble) predicts: one frozen dataclass, declared once, passed whole.

`predict`, `evaluate`, `pseudo` and `ensemble` take an `InferenceOptions`; the CLI builds it from the options
every inference command shares (app/cli/options.py declares them once). Defaults predict each image once,
resized to the model's training size, with every member weighted equally.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class InferenceOptions:
    """Attributes:
    tta: TTA view-set spec (app/infer/tta.py VIEW_SETS): "identity", "flip", "d4", "ms" or e.g. "d4+ms".
    weights: One ensemble weight per model argument (a fold group shares its own); () = equal weights.
    class_weights: Per model argument, one weight per class or None (as `trash ensemble` writes them).
    topk: Replace each run's export by the epochs it kept with `train.top_k` (an epoch ensemble).
    tile: Predict each image at its own resolution with overlapping tiles of the training size (app/infer/tiles.py)
        instead of resizing it to the training size.
    overlap: Share of a tile overlapping its neighbour, with `tile`.
    min_area: Post-processing: drop foreground components under this share of the image (0 = off).
    crf: Post-processing: dense CRF on the image colours (app/infer/postprocess.py).
    batch_size: Images (or tiles) per forward pass.
    skip_bad_images: Leave corrupt or truncated images out (listed) instead of refusing them all.
    overlays: predict: also write overlays/*.jpg and preview.png.
    save_probs: predict: also write probs/*.npy (fp16), so the folder can be an ensemble member later.
    backend: Which engine runs each run directory's network (app/infer/backend.py): "torch" (fp32, the library's
        default: scores reproducible on every machine), "bf16", "onnx", or "auto" (`trash predict`'s default:
        the fastest here whose masks agree with fp32, measured on the first batch).
    """

    tta: str = "identity"
    weights: tuple[float, ...] = ()
    class_weights: tuple | None = None
    topk: bool = False
    tile: bool = False
    overlap: float = 0.5
    min_area: float = 0.0
    crf: bool = False
    batch_size: int = 8
    skip_bad_images: bool = False
    overlays: bool = True
    save_probs: bool = False
    backend: str = "torch"


def view_spec(tta: bool | str) -> str:
    """TTA views as a view-set spec: False = none, True = flips, or a spec such as "d4+ms"."""
    if isinstance(tta, str):
        return tta
    return "flip" if tta else "identity"
