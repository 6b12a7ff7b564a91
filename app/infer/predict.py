"""`trash predict`: masks, overlays, saved probabilities and the submission from exported models (an ensemble).

Writes under `out`:

- `masks/<image>.png`: the class mask at the image's original size (pixel = class index);
- `overlays/<image>.jpg` and `preview.png` (a grid of the first 12 with a legend), unless `overlays` is off;
- `probs/<image>.npy`: fp16 (C, H, W) probabilities at original size, with `save_probs` (a predictions folder
  usable as an ensemble member later);
- `submission.csv`: `image_id,PredictionString` (256x256), read back and checked after writing;
- `predictions.json`: what was predicted with what.
"""

from pathlib import Path

import cv2

from app.atomic import make_dir, save_npy, write_image, write_json
from app.data.coco import load_coco, mask_dtype
from app.data.images import list_images, read_rgb, screen_images
from app.data.masks import mask_name, refuse_same_mask_names
from app.errors import TrashError
from app.infer.members import PREDICTIONS_INDEX, Member, load_members
from app.infer.options import InferenceOptions, view_spec
from app.infer.stream import Prediction, stream_predictions
from app.infer.submission import SubmissionWriter
from app.infer.tta import parse_views
from app.plots import overlay, palette, save_grid

PREVIEW_IMAGES = 12  # overlays shown in preview.png


def predict(
    models: list[str | Path],
    images: str | Path,
    out: str | Path,
    data: str | Path | None = None,
    options: InferenceOptions = InferenceOptions(),
    progress=None,
) -> dict:
    """Predicts every image (the json's, in its order, or the folder's) and writes the outputs above.

    Returns:
        The summary written to predictions.json.
    """
    members = load_members(models, options.weights, options.class_weights, options.topk)
    classes = members[0].classes
    if data and classes != list(codes := load_coco(data).codes):
        raise TrashError(f"the model {members[0].name} predicts {classes} but {data} has classes {list(codes)}")
    pairs, skipped = _images(images, data, options.skip_bad_images)
    writer = _Outputs(Path(out), classes, options)
    stream = stream_predictions(members, pairs, options)
    with SubmissionWriter(writer.out / "submission.csv", len(classes)) as submission:
        for pred in progress(stream, total=len(pairs)) if progress else stream:
            writer.add(pred)
            submission.add(pred.image_id, pred.probs)
    writer.finish()
    summary = _summary(models, members, pairs, skipped, writer, options)
    write_json(writer.out / PREDICTIONS_INDEX, summary)
    return summary


def _images(images, data, skip_bad: bool) -> tuple[list[tuple[str, Path]], list[str]]:
    """The (image_id, path) pairs to predict, with the corrupt ones left out (and listed) when asked."""
    pairs = list_images(images, data)
    refuse_same_mask_names([image_id for image_id, _ in pairs], str(data or images))
    if skip_bad:  # corrupt or truncated files are left out (and get no submission row), with a warning
        return screen_images(pairs, skip=True)
    return pairs, []


class _Outputs:
    """Writes each prediction's mask, overlay and probabilities; keeps the preview's first images."""

    def __init__(self, out: Path, classes: list[str], options: InferenceOptions):
        self.out, self.classes, self.options = make_dir(out), classes, options
        self.colours, self.preview = palette(len(classes)), []

    def add(self, pred: Prediction) -> None:
        mask = pred.probs.argmax(0).numpy().astype(mask_dtype(len(self.classes)))
        # Per-image outputs are renamed into place (never half a file) without an fsync each: they can be made again.
        write_image(self.out / "masks" / mask_name(pred.image_id), mask, sync=False)
        if self.options.overlays:
            rgb = read_rgb(pred.path)  # the decoder training used: EXIF-rotated like the mask
            blended = cv2.cvtColor(overlay(rgb, mask, self.colours), cv2.COLOR_RGB2BGR)
            write_image(self.out / "overlays" / Path(pred.image_id).with_suffix(".jpg"), blended, sync=False)
            if len(self.preview) < PREVIEW_IMAGES:
                self.preview.append((rgb, mask, pred.image_id))
        if self.options.save_probs:
            probs = pred.probs.half().numpy()
            save_npy(self.out / "probs" / Path(pred.image_id).with_suffix(".npy"), probs, sync=False)

    def finish(self) -> None:
        if self.preview:
            save_grid(*map(list, zip(*self.preview)), self.classes, self.out / "preview.png")


def _summary(models, members: list[Member], pairs, skipped, writer: _Outputs, options: InferenceOptions) -> dict:
    out = writer.out
    return {
        "images": len(pairs),
        "skipped": skipped,
        "masks": str(out / "masks"),
        "overlays": str(out / "overlays") if options.overlays else None,
        "preview": str(out / "preview.png") if writer.preview else None,
        "probs": str(out / "probs") if options.save_probs else None,
        "submission": str(out / "submission.csv"),
        "submission_checked": True,
        "classes": writer.classes,
        "tta": [v.name for v in parse_views(view_spec(options.tta))],
        "tile": options.tile,
        "min_area": options.min_area,
        "crf": options.crf,
        "members": [
            {
                "name": m.name,
                "weight": m.weight,
                "class_weights": None if m.class_weights is None else list(map(float, m.class_weights)),
                "backend": m.backend,
            }
            for m in members
        ],
        "models": [str(m) for m in models],
    }
