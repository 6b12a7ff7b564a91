"""ONNX models at inference: a `model.onnx` written by `trash export` run by ONNX Runtime, as an ensemble member.

The file's contract (docs/deployment.md; app/infer/onnx_export.py writes it):

* input `image`: float32 (N, 3, H, W), RGB, pixel values 0..255 (a uint8 frame cast to float32), resized to
  the model's size (the `size` metadata) the way training resized it (PIL bilinear "squish", no crop, no pad);
  normalisation is inside the graph. N is free; H and W are free too (multiples of `stride`) when `dynamic`.
* output `probs`: float32 (N, C, H, W) softmax class probabilities; the mask is their argmax over C.
* metadata_props: `trash_format`, `classes` and `colours` (json), `size` and `train_size` ("HxW"), `stride`,
  `dynamic`, `precision`, `recipe`, `arch`, `encoder`, and the verification figures.

`OnnxModel` is called like a torch model inside `trash` (NCHW tensor in, "logits" out: the log of the
probabilities, so TTA's softmax gives the probabilities back), so TTA views, tiles and ensembles reuse
app/infer/tta.py and app/infer/tiles.py unchanged. The CUDA execution provider is used when ONNX Runtime has it.
"""

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from app.data.images import read_rgb
from app.errors import TrashError
from app.infer.options import InferenceOptions, view_spec
from app.infer.tiles import sliding_window_probs
from app.infer.tta import View, parse_views, predict_probs

ONNX_FORMAT = "trash-onnx/1"
INPUT, OUTPUT = "image", "probs"
ONNX_SUFFIX = ".onnx"
TINY = 1e-30  # probabilities are clamped here before the log: softmax(log p) gives p back, never NaN


def is_onnx(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ONNX_SUFFIX


def providers() -> list[str]:
    """ONNX Runtime's CUDA execution provider when this install has it (onnxruntime-gpu), else the CPU one."""
    import onnxruntime as ort

    found = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in found] or found


def session(path: str | Path, cpu: bool = False):
    """An ONNX Runtime session for `path`; a file that is not an ONNX model fails naming it."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"] if cpu else providers())
    except Exception as e:  # ORT raises its own Fail / InvalidProtobuf / NoSuchFile classes
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise TrashError(f"{path} is not an ONNX model ONNX Runtime can load ({first})") from None


class OnnxModel:
    """A `trash export` ONNX file in an ONNX Runtime session, callable on NCHW 0..255 float tensors.

    Attributes:
        classes, colours: From the metadata.
        size: (H, W) images are resized to (the export size).
        trash_size_multiple: Sides must be multiples of this (the `stride` metadata), as torch models carry it.
        dynamic: Whether H and W may differ from `size`.
    """

    def __init__(self, path: str | Path, cpu: bool = False):
        self.path = Path(path)
        if not self.path.is_file():
            raise TrashError(f"no ONNX model at {path}")
        self.session = session(self.path, cpu)
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("trash_format") != ONNX_FORMAT:
            raise TrashError(
                f"{path} is an ONNX model but not one written by `trash export` (no {ONNX_FORMAT} metadata)"
            )
        self.meta = meta
        self.classes = json.loads(meta["classes"])
        self.colours = json.loads(meta["colours"])
        self.size = parse_size(meta["size"])
        self.trash_size_multiple = int(meta["stride"])
        self.dynamic = meta["dynamic"] == "true"

    def probs(self, x: np.ndarray) -> np.ndarray:
        """(N, C, H, W) probabilities for an (N, 3, H, W) float32 0..255 batch."""
        self.check_shape(tuple(x.shape[-2:]))
        return self.session.run([OUTPUT], {INPUT: np.ascontiguousarray(x, dtype=np.float32)})[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.from_numpy(self.probs(x.detach().cpu().numpy()))
        return torch.log(probs.float().clamp_min(TINY)).to(x.device)

    def check_shape(self, hw: tuple[int, int]) -> None:
        """TrashError when the model cannot take an input of (H, W): fixed size, or a side off the stride."""
        if not self.dynamic and tuple(hw) != tuple(self.size):
            raise TrashError(
                f"{self.path} takes {fmt_size(self.size)} inputs only (exported without --dynamic), not "
                f"{fmt_size(hw)}: TTA scales (ms) and quarter turns of a non-square size change the input size; "
                "export again with --dynamic, or use --tta-views flip"
            )
        bad = [side for side in hw if side % self.trash_size_multiple]
        if bad:
            raise TrashError(
                f"{self.path}: input sides must be multiples of {self.trash_size_multiple}, got {fmt_size(hw)}"
            )

    def check_views(self, views: tuple[View, ...], size: tuple[int, int]) -> None:
        for view in views:
            self.check_shape(view.size(*size))


def parse_size(text: str) -> tuple[int, int]:
    """(H, W) from "HxW" (or one number for a square)."""
    parts = str(text).lower().replace(" ", "").split("x")
    try:
        h, w = (int(parts[0]), int(parts[-1])) if len(parts) <= 2 else (None, None)
    except ValueError:
        h = w = None
    if h is None or h <= 0 or w <= 0:
        raise TrashError(f"size {text!r} is not HxW (e.g. 256x256 or 384x512)")
    return h, w


def fmt_size(hw) -> str:
    return f"{hw[0]}x{hw[1]}"


def resized_pixels(paths: list[Path], size: tuple[int, int]) -> torch.Tensor:
    """(N, 3, H, W) float32 0..255 at `size`: decoded by `read_rgb` and squished with PIL's bilinear resize,
    exactly as fastai's `Resize(method=squish)` prepared the images in training (app/data/loaders.py)."""
    from PIL import Image

    h, w = size
    arrays = [np.asarray(Image.fromarray(read_rgb(p)).resize((w, h), Image.BILINEAR)) for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()


def full_pixels(path: Path) -> torch.Tensor:
    """One image at its own resolution, (3, H, W) float32 0..255 (for tiles)."""
    return torch.from_numpy(np.ascontiguousarray(read_rgb(path))).permute(2, 0, 1).float()


def onnx_member_probs(model: OnnxModel, chunk, sizes, options: InferenceOptions) -> list[torch.Tensor]:
    """An ONNX member's (C, H, W) probabilities for each image of `chunk`, at each image's own size: the same
    views, tiles and resizing back as a run directory's (app/infer/stream.py `member_probs`)."""
    views = parse_views(view_spec(options.tta), multiple=model.trash_size_multiple)
    model.check_views(views, model.size)
    if options.tile:
        tile = model.size
        return [
            sliding_window_probs(model, full_pixels(path), tile, views, options.overlap, options.batch_size)
            for _, path in chunk
        ]
    probs = predict_probs(model, resized_pixels([p for _, p in chunk], model.size), views)
    return [
        F.interpolate(probs[i : i + 1], size=s, mode="bilinear", align_corners=False)[0] for i, s in enumerate(sizes)
    ]
