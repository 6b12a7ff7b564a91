"""Prediction with exported learners: streaming batches, ensembles, TTA, PNG masks and the submission CSV."""

import csv
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from app.coco import load_coco
from app.errors import TrashError
from app.runs import find_export
from app.tta import parse_views, predict_probs

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
SUBMISSION_SIZE = 256  # the competition's submission masks are 256x256


@dataclass
class Prediction:
    image_id: str  # file name relative to the images folder (the submission's image_id)
    path: Path
    probs: torch.Tensor  # (C, H, W) float32 at the image's original size


def load_learners(models: list[str | Path]) -> list:
    """Loads exported learners on the available device; all must predict the same classes.

    Each file is checked against its run's manifest.json before it is read (app/export.py); a `weights.pth`
    is rebuilt from tensors and the recipe without unpickling any code.
    """
    from app.export import load_export

    learners = [load_export(find_export(m), cpu=not torch.cuda.is_available()) for m in models]
    for model, learn in zip(models, learners):
        if not hasattr(learn, "trash_classes"):
            raise TrashError(f"{model} was not exported by `trash fit` (it has no class names)")
        if learn.trash_classes != learners[0].trash_classes:
            raise TrashError(
                f"{model} predicts classes {learn.trash_classes}, but {models[0]} {learners[0].trash_classes}"
            )
    return learners


def check_classes(learners: list, codes: list[str], source: str) -> None:
    if learners[0].trash_classes != list(codes):
        raise TrashError(f"the model predicts {learners[0].trash_classes} but {source} has classes {list(codes)}")


def list_images(images: str | Path, data: str | Path | None = None) -> list[tuple[str, Path]]:
    """(image_id, path) pairs: the json's images in its order, or every image file in the folder, sorted."""
    root = Path(images)
    if not root.is_dir():
        raise TrashError(f"images folder not found: {images}")
    if data:
        pairs = [(im.file_name, root / im.file_name) for im in load_coco(data).images]
        missing = [str(p) for _, p in pairs if not p.is_file()]
        if missing:
            raise TrashError(f"{data}: {len(missing)} image file(s) not found under {images}, e.g. {missing[0]}")
        return pairs
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise TrashError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {images}")
    return [(p.name, p) for p in files]


def stream_predictions(
    members: list,
    images: list[tuple[str, Path]],
    tta: bool | str = False,
    weights: list[float] | None = None,
    batch_size: int = 8,
    tile: bool = False,
    overlap: float = 0.5,
    min_area: float = 0.0,
    crf: bool = False,
) -> Iterator[Prediction]:
    """Yields one Prediction per image, batch by batch, so memory does not grow with the image count.

    Args:
        members: `Member`s (app.members.load_members) or plain Learners (then `weights` apply).
        images: (image_id, path) pairs, e.g. from `list_images`.
        tta: False, True (flips) or a view spec such as "d4+ms" (app.tta.parse_views).
        weights: Weights of plain Learners (ignored for Members, which carry theirs).
        batch_size: Images per forward pass (tiles per forward with `tile`).
        tile: Predict each image at its own resolution with a sliding window of the training size (app.tiles)
            instead of resizing it to the training size.
        overlap: Share of a tile overlapping its neighbour, with `tile`.
        min_area: Remove foreground components under this share of the image (app.postprocess); 0 = off.
        crf: Refine the probabilities with a dense CRF on the image's colours (app.postprocess.dense_crf).
    """
    from PIL import Image

    from app.members import Member
    from app.postprocess import dense_crf, remove_small_components

    if members and not isinstance(members[0], Member):
        weights = weights or [1.0] * len(members)
        if len(weights) != len(members):
            raise TrashError(f"{len(weights)} weights for {len(members)} models")
        members = [
            Member(f"model {i}", m, w, classes=getattr(m, "trash_classes", []))
            for i, (m, w) in enumerate(zip(members, weights))
        ]
    spec = view_spec(tta)
    parse_views(spec)  # a bad spec fails before any image is read
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        sizes = [Image.open(p).size[::-1] for _, p in chunk]  # (H, W) from the header only
        total = [None] * len(chunk)
        norm = None
        for member in members:  # a running weighted sum: memory does not grow with the number of members
            probs = member_probs(member, chunk, sizes, spec, tile, overlap, batch_size)
            w = member.weights_per_class(probs[0].shape[0])[:, None, None]
            norm = w if norm is None else norm + w
            for i, p in enumerate(probs):
                total[i] = p * w if total[i] is None else total[i] + p * w
        if (norm <= 0).any():
            raise TrashError("per-class ensemble weights sum to 0 for some class")
        for (image_id, path), p in zip(chunk, total):
            probs = (p / norm).cpu()
            if crf:
                probs = dense_crf(np.asarray(Image.open(path).convert("RGB")), probs)
            yield Prediction(image_id, path, remove_small_components(probs, min_area) if min_area else probs)


def member_probs(member, chunk, sizes, spec: str, tile: bool, overlap: float, batch_size: int) -> list:
    """One member's (C, H, W) float32 probabilities for each image of `chunk`, at each image's own size."""
    from app.members import saved_probs
    from app.tiles import sliding_window_probs

    if member.learn is None:
        return [saved_probs(member, image_id, size) for (image_id, _), size in zip(chunk, sizes)]
    learn = member.learn
    model = learn.model.eval()
    for state in member.states:  # a top-k epoch: same architecture, other weights
        model.load_state_dict(state)
    views = parse_views(spec, multiple=getattr(model, "trash_size_multiple", 32))
    if tile:
        out = []
        for _, path in chunk:
            x = full_resolution_input(learn, path)
            out.append(sliding_window_probs(model, x, member.train_size, views, overlap, batch_size))
        return out
    x = learn.dls.test_dl([p for _, p in chunk], bs=len(chunk)).one_batch()[0]
    probs = predict_probs(model, x, views)
    # back to each image's own size before ensembling
    return [
        F.interpolate(probs[i : i + 1], size=s, mode="bilinear", align_corners=False)[0] for i, s in enumerate(sizes)
    ]


def full_resolution_input(learn, path: Path) -> torch.Tensor:
    """One image as the model sees it in training (RGB, float, normalised), but at its own resolution: (3, H, W)."""
    from fastai.torch_core import TensorImage
    from fastai.vision.core import PILImage, image2tensor

    device = next(learn.model.parameters()).device
    x = TensorImage(image2tensor(PILImage.create(path))[None]).to(device)
    return learn.dls.after_batch(x)[0]


def view_spec(tta: bool | str) -> str:
    """TTA views as a parse_views spec: False = none, True = flips, or a spec such as "d4+ms"."""
    if isinstance(tta, str):
        return tta
    return "flip" if tta else "identity"


def submission_mask(probs: torch.Tensor) -> np.ndarray:
    """The (256, 256) uint8 class mask of the submission: probabilities area-averaged to 256x256, then argmax.

    Averaging probabilities before the argmax is better than nearest-resizing a mask.
    """
    small = F.interpolate(probs[None], size=(SUBMISSION_SIZE, SUBMISSION_SIZE), mode="area")[0]
    return small.argmax(0).numpy().astype(np.uint8)


def submission_row(probs: torch.Tensor) -> str:
    """The 256x256 class mask, flattened row-major, as the competition's PredictionString."""
    return " ".join(map(str, submission_mask(probs).flatten().tolist()))


def read_submission(path: str | Path, n_classes: int | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """(image_id, (256, 256) uint8 mask) per row of a submission CSV; TrashError on a malformed row."""
    csv.field_size_limit(1 << 24)
    with Path(path).open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != ["image_id", "PredictionString"]:
            raise TrashError(f"{path}: header {header}, expected image_id,PredictionString")
        for line, row in enumerate(reader, start=2):
            if len(row) != 2:
                raise TrashError(f"{path} line {line}: {len(row)} fields, expected 2")
            try:
                values = np.array(row[1].split(), dtype=np.int64)
            except ValueError:
                raise TrashError(f"{path} line {line} ({row[0]}): PredictionString is not integers") from None
            if values.size != SUBMISSION_SIZE * SUBMISSION_SIZE:
                raise TrashError(f"{path} line {line} ({row[0]}): {values.size} values, expected 256*256")
            if values.min() < 0 or (n_classes is not None and values.max() >= n_classes):
                raise TrashError(f"{path} line {line} ({row[0]}): class ids outside 0..{(n_classes or 1) - 1}")
            yield row[0], values.reshape(SUBMISSION_SIZE, SUBMISSION_SIZE).astype(np.uint8)


def check_submission(path: Path, expected: list[tuple[str, str]], n_classes: int) -> None:
    """Reads the CSV back: the same image ids in the same order, each row decoding to the mask written.

    Args:
        expected: (image_id, sha1 of the 256x256 mask bytes) in the order written.
    """
    rows = list(read_submission(path, n_classes))
    if [r[0] for r in rows] != [e[0] for e in expected]:
        raise TrashError(f"{path}: image ids read back differ from those written")
    for (image_id, mask), (_, digest) in zip(rows, expected):
        if hashlib.sha1(mask.tobytes()).hexdigest() != digest:
            raise TrashError(f"{path}: the row of {image_id} does not read back into the mask written")


def write_mask(path: Path, mask: np.ndarray) -> None:
    _write_image(path, mask)


def _write_image(path: Path, array: np.ndarray) -> None:
    """cv2.imwrite through a temporary file and a rename: a killed run never leaves half a PNG/JPEG."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    if not cv2.imwrite(str(tmp), array):
        tmp.unlink(missing_ok=True)
        raise TrashError(f"could not write {path} (disk full or no permission?)")
    os.replace(tmp, path)


def _save_probs(path: Path, probs: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, probs.half().numpy())
    os.replace(tmp, path)


PREVIEW_IMAGES = 12  # overlays shown in preview.png


def predict(
    models: list[str | Path],
    images: str | Path,
    out: str | Path,
    data: str | Path | None = None,
    tta: bool | str = False,
    weights: list[float] | None = None,
    batch_size: int = 8,
    progress=None,
    class_weights: list | None = None,
    topk: bool = False,
    tile: bool = False,
    overlap: float = 0.5,
    min_area: float = 0.0,
    crf: bool = False,
    overlays: bool = True,
    save_probs: bool = False,
    skip_bad_images: bool = False,
) -> dict:
    """Predicts every image and writes, under `out`:

    - `masks/<image>.png`: the class mask at the image's original size (pixel = class index);
    - `overlays/<image>.jpg` and `preview.png` (a grid of the first 12 with a legend), unless `overlays=False`;
    - `probs/<image>.npy`: fp16 (C, H, W) probabilities at original size, with `save_probs` (a predictions
      folder usable as an ensemble member later);
    - `submission.csv`: `image_id,PredictionString` (256x256), read back and checked after writing;
    - `predictions.json`: what was predicted with what.

    Returns:
        That summary.
    """
    import cv2

    from app.members import PREDICTIONS_INDEX, load_members
    from app.overlay import overlay, palette, save_grid

    members = load_members(models, weights, class_weights, topk)
    classes = members[0].classes
    if data:
        codes = load_coco(data).codes
        if classes != list(codes):
            raise TrashError(f"the model predicts {classes} but {data} has classes {list(codes)}")
    pairs = list_images(images, data)
    skipped: list[str] = []
    if skip_bad_images:  # corrupt or truncated files are left out (and get no submission row), with a warning
        from app.images import screen_images

        pairs, skipped = screen_images(pairs, skip=True)
    out = Path(out)
    masks, overlay_dir, probs_dir = out / "masks", out / "overlays", out / "probs"
    csv_path = out / "submission.csv"
    out.mkdir(parents=True, exist_ok=True)
    colours = palette(len(classes))
    preview: list[tuple] = []
    written: list[tuple[str, str]] = []
    tmp = csv_path.with_name(f".submission.{os.getpid()}.tmp")
    stream = stream_predictions(members, pairs, tta, None, batch_size, tile, overlap, min_area, crf)
    try:
        with tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image_id", "PredictionString"])
            for pred in progress(stream, total=len(pairs)) if progress else stream:
                stem = Path(pred.image_id).with_suffix("")
                mask = pred.probs.argmax(0).numpy().astype(np.uint8)
                write_mask(masks / stem.with_suffix(".png"), mask)
                if overlays:
                    rgb = cv2.cvtColor(cv2.imread(str(pred.path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                    blended = overlay(rgb, mask, colours)
                    _write_image(overlay_dir / stem.with_suffix(".jpg"), cv2.cvtColor(blended, cv2.COLOR_RGB2BGR))
                    if len(preview) < PREVIEW_IMAGES:
                        preview.append((rgb, mask, pred.image_id))
                if save_probs:
                    _save_probs(probs_dir / stem.with_suffix(".npy"), pred.probs)
                small = submission_mask(pred.probs)
                writer.writerow([pred.image_id, " ".join(map(str, small.flatten().tolist()))])
                written.append((pred.image_id, hashlib.sha1(small.tobytes()).hexdigest()))
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)  # the previous submission.csv, if any, stays as it was
        raise
    os.replace(tmp, csv_path)
    check_submission(csv_path, written, len(classes))
    if preview:
        save_grid(*map(list, zip(*preview)), classes, out / "preview.png")
    summary = {
        "images": len(pairs),
        "skipped": skipped,
        "masks": str(masks),
        "overlays": str(overlay_dir) if overlays else None,
        "preview": str(out / "preview.png") if preview else None,
        "probs": str(probs_dir) if save_probs else None,
        "submission": str(csv_path),
        "submission_checked": True,
        "classes": classes,
        "tta": [v.name for v in parse_views(view_spec(tta))],
        "tile": tile,
        "min_area": min_area,
        "crf": crf,
        "members": [
            {
                "name": m.name,
                "weight": m.weight,
                "class_weights": None if m.class_weights is None else [float(v) for v in m.class_weights],
            }
            for m in members
        ],
        "models": [str(m) for m in models],
    }
    from app.runs import write_json

    write_json(out / PREDICTIONS_INDEX, summary)
    return summary
