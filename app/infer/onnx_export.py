"""`trash export --format onnx`: a run's network as one ONNX file that stands alone, verified after writing.

The graph takes float32 RGB NCHW pixels 0..255 and returns softmax probabilities (the contract is in
app/infer/onnx_runtime.py and docs/deployment.md): the run's normalisation is inside it, the batch is dynamic,
and with `dynamic` so are height and width (multiples of the arch's stride). Class names, colours, sizes,
stride, the recipe's name and the verification figures are in its `metadata_props`.

Every export is verified before it is renamed into place: ONNX Runtime (CPU) and PyTorch predict the same
images (the run's validation images, or given ones) and the largest |difference of probability| and the share
of identical argmax pixels must be within the precision's tolerance (`ONNX_PRECISIONS`); otherwise
`ExportMismatch` (app/errors.py, exit code 5) and no file is written.

torch.onnx's TorchScript exporter (`dynamo=False`, opset 17) exports every arch of `trash models` here
(tests/infer/test_onnx.py; the dynamo exporter was not tried); UPerNet only at a fixed size whose sides are
multiples of 192 (`refusal`, `EXPORT_MULTIPLE`), refused up front otherwise.
"""

import copy
import io
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from app.atomic import atomic_path
from app.data.images import list_images
from app.errors import BAD_INPUT, ExportMismatch, TrashError
from app.export import find_export, load_export
from app.infer.members import Member
from app.infer.onnx_runtime import INPUT, ONNX_FORMAT, OUTPUT, fmt_size, resized_pixels, session
from app.plots import palette
from app.registry import Registry
from app.runs import RESOLVED

OPSET = 17
NO_DYNAMIC_SIZE = {"upernet": "its pyramid pooling (adaptive_avg_pool2d) has no ONNX form for a free input size"}
#: arch -> (multiple, why): sides a fixed-size graph needs beyond the model's own multiple. UPerNet pools its
#: stride-32 map into 1, 2, 3 and 6 bins; ONNX has that only where each divides the map: 32 x 6 = 192 px
EXPORT_MULTIPLE = {"upernet": (192, "its pyramid pooling bins (1, 2, 3, 6) must divide the stride-32 feature map")}


@dataclass(frozen=True)
class Precision:
    """How the graph computes and how close to PyTorch fp32 it must stay (probabilities in [0, 1])."""

    help: str
    half: bool
    max_prob_diff: float
    min_same_pixels: float


ONNX_PRECISIONS: Registry[Precision] = Registry(
    "ONNX precision",
    {
        "fp32": Precision("float32 weights and arithmetic", False, 1e-3, 0.999),
        # fp16 rounds every activation to 11 bits: 1e-3 is out of reach, a few hundredths are typical
        "fp16": Precision("float16 weights and arithmetic, float32 input and output", True, 5e-2, 0.99),
    },
)


class Deployed(nn.Module):
    """The network as deployed: 0..255 RGB in, normalised inside, softmax probabilities (float32) out."""

    def __init__(self, model: nn.Module, mean, std, half: bool = False):
        super().__init__()
        self.net, self.fp16 = (model.half() if half else model.float()).eval(), half
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255)
        self.eval()  # torch.onnx.export restores the mode it found, recursively: train mode would reach BatchNorm

    def forward(self, x):
        x = (x - self.pixel_mean) / self.pixel_std
        logits = self.net(x.half() if self.fp16 else x)
        return torch.softmax(logits.float(), dim=1)


def export_onnx(
    model: str | Path,
    out: str | Path,
    size: tuple[int, int] | None = None,
    dynamic: bool = False,
    precision: str = "fp32",
    images: str | Path | None = None,
    n_images: int = 8,
) -> dict:
    """Writes `out` (an ONNX file) from a run directory or export, after verifying it; returns the report.

    Args:
        size: (H, W) the graph takes; default the run's training size.
        dynamic: Free height and width (multiples of the stride) instead of one size.
        precision: An `ONNX_PRECISIONS` name.
        images: Folder of images to verify on; default the run's validation images.
        n_images: Images verified (the first ones).
    """
    tol = ONNX_PRECISIONS[precision]
    learn = load_export(find_export(model), cpu=True)
    info = run_info(Path(model), learn)
    shape = checked_size(size or info["train_size"], info, dynamic)
    pixels = verification_pixels(Path(model), images, shape, n_images)
    reference = Deployed(learn.model, *learn.trash_norm)  # fp32 PyTorch: what every precision is held to
    graph = Deployed(copy.deepcopy(learn.model), *learn.trash_norm, half=True) if tol.half else reference
    with atomic_path(out) as tmp:
        write_graph(graph, shape, dynamic, tmp)
        report = verify(reference, tmp, pixels, info["stride"] if dynamic else 0)
        report.update(precision=precision, tolerance={"max_prob_diff": tol.max_prob_diff, "same": tol.min_same_pixels})
        check_tolerance(report, tol, out)
        stride = info["stride"] if dynamic else info["multiple"]  # a fixed graph takes its size, whatever it is
        meta = {**info, "size": fmt_size(shape), "stride": stride, "dynamic": dynamic, "precision": precision}
        write_metadata(tmp, meta, report)
    return {**report, "out": str(out), "size": list(shape), "dynamic": dynamic, "classes": info["classes"]}


def run_info(model: Path, learn) -> dict:
    """What the metadata says about the run: classes, colours, training size, stride, recipe, arch, encoder."""
    folder = model if model.is_dir() else model.parent
    resolved = json.loads((folder / RESOLVED).read_text()) if (folder / RESOLVED).is_file() else {}
    classes = list(learn.trash_classes)
    return {
        "classes": classes,
        "colours": palette(len(classes)).tolist(),
        "train_size": Member(str(model), learn).train_size,
        "stride": onnx_stride(learn.model),
        "multiple": int(getattr(learn.model, "trash_size_multiple", 32) or 1),
        "recipe": resolved.get("name", folder.resolve().parent.name),
        "arch": resolved.get("model", {}).get("arch", ""),
        "encoder": resolved.get("model", {}).get("encoder", ""),
    }


def onnx_stride(model: nn.Module) -> int:
    """Sides the graph takes are multiples of this: the model's own multiple, but 32 where that is 1 (a plain-CNN
    DynamicUnet resizes odd feature maps with a branch that tracing fixes at the traced size's decision)."""
    multiple = int(getattr(model, "trash_size_multiple", 32) or 1)
    return multiple if multiple > 1 else 32


def refusal(info: dict, dynamic: bool) -> str | None:
    """Why this run cannot be exported as asked, or None."""
    if dynamic and info["arch"] in NO_DYNAMIC_SIZE:
        return f"arch {info['arch']} cannot take a free input size in ONNX: {NO_DYNAMIC_SIZE[info['arch']]}"
    return None


def checked_size(size: tuple[int, int], info: dict, dynamic: bool) -> tuple[int, int]:
    """(H, W) to export at, refused when the arch cannot or a side is not a multiple of the stride."""
    problem = refusal(info, dynamic)
    if problem:
        raise TrashError(f"cannot export with --dynamic: {problem}; export with --size HxW instead")
    stride = info["stride"] if dynamic else info["multiple"]
    extra, why = EXPORT_MULTIPLE.get(info["arch"], (1, ""))
    stride = math.lcm(stride, extra)
    if any(side % stride or side <= 0 for side in size):
        reason = f": {why}" if extra > 1 else ""
        raise TrashError(
            f"--size {fmt_size(size)}: sides must be positive multiples of the model's stride {stride} "
            f"(arch {info['arch'] or '?'}{reason}), e.g. {fmt_size([max(stride, s // stride * stride) for s in size])}"
        )
    return tuple(int(s) for s in size)


def verification_pixels(model: Path, images, size: tuple[int, int], n: int) -> torch.Tensor:
    """(N, 3, H, W) 0..255 pixels of the first `n` verification images: given ones, else the run's validation
    images (its validation json, else its training json)."""
    data = None
    if images is None:
        found = validation_images(model)
        if not found:
            raise TrashError(f"{model}: its validation images are not reachable; give --images FOLDER to verify on")
        images, data = found
    pairs = list_images(images, data)[: max(1, n)]
    if not pairs:
        raise TrashError(f"no images in {images} to verify the export on")
    return resized_pixels([p for _, p in pairs], size)


def validation_images(model: Path) -> tuple[Path, Path] | None:
    """(images folder, json) of a run's validation images, when both still exist."""
    folder = model if model.is_dir() else model.parent
    if not (folder / RESOLVED).is_file():
        return None
    resolved = json.loads((folder / RESOLVED).read_text())
    data, sources = resolved.get("data", {}), resolved.get("data_sources") or {}
    images = Path(data.get("valid_images") or data.get("images") or "")
    for json_file in (sources.get("valid"), sources.get("train"), data.get("annotations")):
        if json_file and Path(json_file).is_file() and str(images) and images.is_dir():
            return images, Path(json_file)
    return None


def write_graph(deployed: Deployed, size: tuple[int, int], dynamic: bool, path: Path) -> None:
    """torch.onnx (TorchScript exporter, opset 17) of `deployed` at `size`; batch always dynamic."""
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic else {0: "batch"}
    example = torch.full((1, 3, *size), 127.0)
    buffer = io.BytesIO()
    deployed.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TracerWarnings on shape arithmetic: the verification decides
            torch.onnx.export(
                deployed, example, buffer, dynamo=False, opset_version=OPSET, input_names=[INPUT],
                output_names=[OUTPUT], dynamic_axes={INPUT: axes, OUTPUT: axes},
            )  # fmt: skip
    except Exception as e:  # torch.onnx raises many kinds (SymbolicValueError, UnsupportedOperatorError, ...)
        first = str(e).strip().splitlines()[0][:300]
        raise TrashError(f"this model cannot be exported to ONNX: {type(e).__name__}: {first}", BAD_INPUT) from None
    path.write_bytes(buffer.getvalue())


def verify(deployed: Deployed, path: Path, pixels: torch.Tensor, stride: int) -> dict:
    """PyTorch (`deployed`, fp32) against the graph at `path` in ONNX Runtime (CPU) on `pixels`, and, when
    `stride`, also at a size one stride larger."""
    ort_session = session(path, cpu=True)  # before the metadata is written: a bare session
    batches = [pixels]
    if stride:
        h, w = pixels.shape[-2:]
        batches.append(torch.nn.functional.interpolate(pixels, size=(h + stride, w + stride), mode="bilinear"))
    diffs, same, total = [], 0, 0
    for batch in batches:
        with torch.no_grad():
            ref = deployed(batch).numpy()
        try:
            got = ort_session.run([OUTPUT], {INPUT: batch.numpy()})[0]
        except Exception as e:  # ORT's own error classes: a graph that cannot take this size
            raise ExportMismatch(f"ONNX Runtime cannot run the graph at {fmt_size(batch.shape[-2:])}: {e}") from None
        diffs.append(float(np.abs(got - ref).max()))
        same, total = same + int((got.argmax(1) == ref.argmax(1)).sum()), total + ref[:, 0].size
    sizes = [fmt_size(b.shape[-2:]) for b in batches]
    return {"images": len(pixels), "checked_sizes": sizes, "max_prob_diff": max(diffs), "same_pixels": same / total}


def check_tolerance(report: dict, tol: Precision, out) -> None:
    if report["max_prob_diff"] <= tol.max_prob_diff and report["same_pixels"] >= tol.min_same_pixels:
        return
    raise ExportMismatch(
        f"{out}: ONNX Runtime and PyTorch disagree on {report['images']} image(s) at {report['checked_sizes']}: "
        f"max |Δ probability| {report['max_prob_diff']:.2e} (tolerance {tol.max_prob_diff:g}), identical argmax "
        f"pixels {report['same_pixels']:.4%} (at least {tol.min_same_pixels:.1%}); the file was not written"
    )


def write_metadata(path: Path, info: dict, report: dict) -> None:
    """The metadata_props that make the file stand alone (see app/infer/onnx_runtime.py)."""
    import onnx

    graph = onnx.load(str(path))
    values = {
        "trash_format": ONNX_FORMAT,
        "classes": json.dumps(info["classes"]),
        "colours": json.dumps(info["colours"]),
        "size": info["size"],
        "train_size": fmt_size(info["train_size"]),
        "stride": str(info["stride"]),
        "dynamic": "true" if info["dynamic"] else "false",
        "precision": info["precision"],
        "recipe": info["recipe"],
        "arch": info["arch"],
        "encoder": info["encoder"],
        "input": f"{INPUT}: float32 (N, 3, H, W) RGB 0..255; normalisation inside the graph",
        "output": f"{OUTPUT}: float32 (N, C, H, W) softmax probabilities; mask = argmax over C",
        "verification": json.dumps(report),
    }
    onnx.helper.set_model_props(graph, values)
    graph.doc_string = f"trash export of recipe {info['recipe']} ({info['arch']} {info['encoder']})"
    onnx.save(graph, str(path))
