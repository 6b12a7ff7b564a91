"""Validation of a COCO json and its image folder before anything reaches pycocotools.

This module owns `trash`'s dataset check: it reads the json itself and reports every problem it
finds as a `Problem` in a `CheckReport` instead of raising, so one run lists all defects at once.
pycocotools validates nothing (NaN polygons crash the process, a 4-number polygon is read as a box,
odd polygons are truncated, an RLE of another size yields a wrong-shaped mask, an RLE whose counts
do not sum to height * width overruns its buffer), so polygons and RLE are checked here in pure
Python; compressed RLE strings are decoded by a Python port of pycocotools' ``rleFrString``.

Problem kinds (severity "error" unless noted):

* ``not_coco``: the top level is not an object, or ``images`` / ``categories`` are missing or not
  lists, or ``annotations`` is present but not a list (then nothing else is checked).
* ``bad_image_entry``, ``duplicate_image_id``, ``bad_category_entry``, ``duplicate_category_id``,
  ``bad_annotation_entry`` (not an object, or id not an integer), ``duplicate_annotation_id``.
* ``missing_image``, ``unreadable_image``, ``size_mismatch`` (json size vs. the decoded file with
  its EXIF orientation applied, as OpenCV and ``ImageOps.exif_transpose`` load it).
* ``unknown_image``, ``unknown_category``, ``empty_segmentation``, ``bbox_only``,
  ``bad_segmentation`` (neither polygons nor an RLE object), ``polygon_too_short``, ``polygon_odd``,
  ``polygon_nonfinite``, ``polygon_out_of_image``, ``rle_size``, ``bad_rle``.
* ``no_annotations`` (severity "info"): an image that no annotation names.
"""

import math
import os
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from app.errors import TrashError

ERROR = "error"
INFO = "info"
OUTSIDE_TOLERANCE = 0.1  # polygon coordinates may lie this fraction of the image size outside it
EXIF_ORIENTATION = 0x0112
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
MAX_SIDE = 2**31 - 1  # largest image height / width accepted (OpenCV and pycocotools use 32-bit sizes)
MAX_COORDINATE = 2**53  # larger integers lose precision as doubles (and overflow float conversion)
_REPR_LIMIT = 60


@dataclass(frozen=True)
class Problem:
    """One defect of the dataset.

    Attributes:
        kind: Short stable code (see the module docstring).
        message: One line naming the image id / annotation id (and file_name where relevant).
        severity: "error" (the dataset is not usable as is) or "info".
        image_id: The image concerned, when known.
        annotation_id: The annotation concerned, when known.
    """

    kind: str
    message: str
    severity: str = ERROR
    image_id: int | None = None
    annotation_id: int | None = None


@dataclass
class CheckReport:
    """Every problem found in one COCO json (and its images).

    Attributes:
        path: The json file checked.
        problems: Problems in the order found (entries first, then annotations, then files).
        n_images: Number of entries in ``images`` (0 when the json is not COCO).
        n_annotations: Number of entries in ``annotations``.
    """

    path: Path
    problems: list[Problem]
    n_images: int
    n_annotations: int

    @property
    def errors(self) -> list[Problem]:
        """The problems of severity "error"."""
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def ok(self) -> bool:
        """True when there is no error (infos are allowed)."""
        return not self.errors

    def bad_annotation_ids(self) -> set[int]:
        """Ids of the annotations that an error names: dropping them removes those errors."""
        return {p.annotation_id for p in self.errors if p.annotation_id is not None}

    def summary(self) -> str:
        """A multi-line human report: a header, one line per problem, then the count per kind."""
        n_errors = len(self.errors)
        lines = [
            f"{self.path}: {self.n_images} images, {self.n_annotations} annotations: "
            f"{n_errors} error(s), {len(self.problems) - n_errors} info(s)"
        ]
        lines += [f"{p.severity:5} {p.kind}: {p.message}" for p in self.problems]
        counts = Counter((p.kind, p.severity) for p in self.problems)
        lines += [f"  {kind} ({severity}): {n}" for (kind, severity), n in sorted(counts.items())]
        return "\n".join(lines)


@dataclass(frozen=True)
class _Image:
    """A valid image entry: what the annotation and file checks need."""

    id: int
    file_name: str
    height: int
    width: int

    @property
    def label(self) -> str:
        """'image 3 (a.jpg)', for messages."""
        return f"image {self.id} ({_text(self.file_name)})"


class _Problems(list):
    """The problem list being built, with a shorthand to add one."""

    def add(self, kind: str, message: str, image_id=None, annotation_id=None, severity: str = ERROR) -> None:
        """Appends a Problem; ids that are not integers are recorded as None."""
        self.append(Problem(kind, message, severity, _int_or_none(image_id), _int_or_none(annotation_id)))


# ---------------------------------------------------------------- small helpers


def _is_int(value) -> bool:
    """True for JSON integers (bool is not one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    """True for JSON numbers (bool is not one)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_finite(value: int | float) -> bool:
    """True for a finite float or an integer small enough to be a double."""
    return math.isfinite(value) if isinstance(value, float) else abs(value) <= MAX_COORDINATE


def _int_or_none(value) -> int | None:
    """The value when it is a JSON integer, else None (for Problem's id fields)."""
    return value if _is_int(value) else None


def _short(value) -> str:
    """A one-line, length-limited repr of any json value, for messages."""
    text = repr(value)
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."


def _text(value: str) -> str:
    """A file name as is when it is printable, else its repr (messages stay one line)."""
    return value if value.isprintable() else _short(value)


# ---------------------------------------------------------------- json structure


def _read_json(path: Path):
    """Parses the json; TrashError only when the file cannot be read or is not json at all."""
    import json

    try:
        return json.loads(path.read_bytes())
    except OSError as e:
        raise TrashError(f"cannot read annotations {path}: {e.strerror or e}") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise TrashError(f"annotations {path} are not valid json: {e}") from None


def _structure_problem(data) -> str:
    """Why the top level is not a COCO object, or "" when it is one."""
    if not isinstance(data, dict):
        return f"the top level is a {type(data).__name__}, not a COCO object"
    wrong = [key for key in ("images", "categories") if not isinstance(data.get(key), list)]
    if "annotations" in data and not isinstance(data["annotations"], list):
        wrong.append("annotations")
    return f"{', '.join(repr(k) for k in wrong)} missing or not a list" if wrong else ""


def _image_entry_faults(entry: dict) -> list[str]:
    """What is wrong with one image entry's id, file_name, height and width."""
    faults = [] if _is_int(entry.get("id")) else [f"id {_short(entry.get('id'))} is not an integer"]
    name = entry.get("file_name")
    if not isinstance(name, str) or not name.strip():
        faults.append(f"file_name {_short(name)} is not a non-empty string")
    for key in ("height", "width"):
        value = entry.get(key)
        if not _is_int(value) or not 0 < value <= MAX_SIDE:
            faults.append(f"{key} {_short(value)} is not an integer in 1..{MAX_SIDE}")
    return faults


def _check_images(entries: list, problems: _Problems) -> tuple[dict[int, _Image], set[int]]:
    """Checks the image entries.

    Returns:
        The valid images by id (first entry wins) and every image id that appears, valid entry or
        not (annotations naming those are not reported as unknown_image).
    """
    images: dict[int, _Image] = {}
    seen: set[int] = set()
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            problems.add("bad_image_entry", f"image entry #{index} is a {type(entry).__name__}, not an object")
            continue
        image_id = entry.get("id")
        if _is_int(image_id) and image_id in seen:
            problems.add("duplicate_image_id", f"image {image_id}: id used by an earlier entry (#{index})", image_id)
            continue
        faults = _image_entry_faults(entry)
        if _is_int(image_id):
            seen.add(image_id)
        if faults:
            label = f"image {image_id} (entry #{index})" if _is_int(image_id) else f"image entry #{index}"
            problems.add("bad_image_entry", f"{label}: {'; '.join(faults)}", image_id)
        else:
            images[image_id] = _Image(image_id, entry["file_name"], entry["height"], entry["width"])
            ignore = entry.get("ignore_mask")
            if ignore is not None:  # pixels of no class (e.g. unconfident pseudo-labels), an RLE like annotations'
                why = (
                    _rle_problems(ignore, images[image_id])
                    if isinstance(ignore, dict)
                    else [("bad_rle", f"is a {type(ignore).__name__}, not an RLE object")]
                )
                for _, detail in why:
                    problems.add("bad_ignore_mask", f"image {image_id}: ignore_mask {detail}", image_id)
    return images, seen


def _check_categories(entries: list, problems: _Problems) -> set[int]:
    """Checks the category entries; returns the ids of the valid ones."""
    ids: set[int] = set()
    for index, entry in enumerate(entries):
        cid = entry.get("id") if isinstance(entry, dict) else None
        name = entry.get("name") if isinstance(entry, dict) else None
        if not _is_int(cid) or not isinstance(name, str):
            what = f"id {_short(cid)}, name {_short(name)}" if isinstance(entry, dict) else _short(entry)
            problems.add("bad_category_entry", f"category entry #{index} ({what}): needs an integer id and a name")
        elif cid in ids:
            problems.add("duplicate_category_id", f"category {cid} ({name!r}): id used by an earlier entry (#{index})")
        else:
            ids.add(cid)
    return ids


# ---------------------------------------------------------------- polygons


def _polygon_problems(poly, image: _Image | None) -> list[tuple[str, str]]:
    """(kind, detail) for one polygon of a polygon segmentation."""
    if not isinstance(poly, list):
        return [("bad_segmentation", f"is a {type(poly).__name__}, not a list of coordinates")]
    if not all(_is_number(v) for v in poly):
        bad = next(v for v in poly if not _is_number(v))
        return [("polygon_nonfinite", f"has a non-number coordinate {_short(bad)}")]
    if not all(_is_finite(v) for v in poly):
        return [("polygon_nonfinite", "has NaN, infinite or huge coordinates")]
    found = []
    if len(poly) % 2:
        found.append(("polygon_odd", f"has an odd number of coordinates ({len(poly)})"))
    if len(poly) < 6:
        box = " (pycocotools reads 4 numbers as a box)" if len(poly) == 4 else ""
        found.append(("polygon_too_short", f"has {len(poly) // 2} point(s), at least 3 are needed{box}"))
    if poly and image is not None:
        found += _outside_problems(poly, image)
    return found


def _outside_problems(poly: list, image: _Image) -> list[tuple[str, str]]:
    """polygon_out_of_image when a coordinate lies more than 10% of the image size outside it."""
    xs, ys = poly[0::2], poly[1::2]
    dx, dy = OUTSIDE_TOLERANCE * image.width, OUTSIDE_TOLERANCE * image.height
    if min(xs) >= -dx and max(xs) <= image.width + dx and min(ys) >= -dy and max(ys) <= image.height + dy:
        return []
    extent = f"x {min(xs):g}..{max(xs):g}, y {min(ys):g}..{max(ys):g}"
    return [("polygon_out_of_image", f"spans {extent}, far outside the {image.width}x{image.height} image")]


def _polygons_problems(seg: list, image: _Image | None) -> list[tuple[str, str]]:
    """(kind, detail) for a polygon segmentation: a list of [x1, y1, x2, y2, ...] lists."""
    if any(_is_number(v) for v in seg):
        return [("bad_segmentation", "is a flat list of numbers, not a list of polygons ([[x1, y1, ...]])")]
    found = []
    for i, poly in enumerate(seg):
        found += [(kind, f"polygon {i} {detail}") for kind, detail in _polygon_problems(poly, image)]
    return found


# ---------------------------------------------------------------- RLE


def _rle_string_counts(text: str) -> list[int] | None:
    """Run lengths of a compressed RLE string (pycocotools' rleFrString), or None when malformed.

    Args:
        text: The ``counts`` string of a compressed RLE.

    Returns:
        The counts; None for a character outside '0'..'o' or a string ending inside a number.
    """
    counts: list[int] = []
    value = shift = 0
    for char in text:
        code = ord(char) - 48
        if not 0 <= code < 64:
            return None
        value |= (code & 0x1F) << (5 * shift)
        shift += 1
        if code & 0x20:
            continue
        if code & 0x10:
            value |= -1 << (5 * shift)
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
        value = shift = 0
    return None if shift else counts


def _rle_counts_problem(counts, height: int, width: int) -> str:
    """Why an RLE's counts cannot describe a height x width mask, or "" when they can."""
    if isinstance(counts, str):
        decoded = _rle_string_counts(counts)
        if decoded is None:
            return "compressed counts string cannot be decoded"
        counts, kind = decoded, "compressed"
    elif isinstance(counts, list) and all(_is_int(c) for c in counts):
        kind = "uncompressed"
    else:
        return f"counts {_short(counts)} are neither a string nor a list of integers"
    if any(c < 0 for c in counts):
        return f"{kind} counts contain a negative run length"
    if sum(counts) != height * width:
        return f"{kind} counts sum to {sum(counts)}, not height*width = {height * width}"
    return ""


def _rle_problems(seg: dict, image: _Image | None) -> list[tuple[str, str]]:
    """(kind, detail) for an RLE segmentation {"size": [h, w], "counts": ...}."""
    size = seg.get("size")
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) and v > 0 for v in size)):
        return [("rle_size", f"RLE size {_short(size)} is not [height, width]")]
    if image is not None and size != [image.height, image.width]:
        return [("rle_size", f"RLE size {size} != image size [{image.height}, {image.width}] (height, width)")]
    if "counts" not in seg:
        return [("bad_rle", "RLE has no counts")]
    why = _rle_counts_problem(seg["counts"], *size)
    return [("bad_rle", why)] if why else []


# ---------------------------------------------------------------- annotations


def _is_empty(seg) -> bool:
    """True for a missing or empty segmentation: None, [], [[]], {}, ""."""
    if seg is None or (isinstance(seg, list | dict | str) and not seg):
        return True
    return isinstance(seg, list) and all(isinstance(p, list) and not p for p in seg)


def _segmentation_problems(ann: dict, image: _Image | None) -> list[tuple[str, str]]:
    """(kind, detail) for an annotation's segmentation."""
    seg = ann.get("segmentation")
    if _is_empty(seg):
        bbox = ann.get("bbox")
        if isinstance(bbox, list) and len(bbox) == 4:
            return [("bbox_only", f"has only a bbox {_short(bbox)}, no segmentation")]
        return [("empty_segmentation", f"has no segmentation ({_short(seg)})")]
    if isinstance(seg, list):
        return _polygons_problems(seg, image)
    if isinstance(seg, dict):
        return _rle_problems(seg, image)
    return [("bad_segmentation", f"segmentation {_short(seg)} is neither polygons nor an RLE object")]


def _annotation_label(ann: dict, index: int, images: dict[int, _Image]) -> str:
    """'annotation 7 on image 3 (a.jpg)' (or the entry index when the id is invalid)."""
    aid = ann.get("id")
    head = f"annotation {aid}" if _is_int(aid) else f"annotation entry #{index} (id {_short(aid)})"
    image_id = ann.get("image_id")
    image = images.get(image_id) if _is_int(image_id) else None
    return f"{head} on {image.label if image else f'image {_short(image_id)}'}"


def _reference_problems(ann: dict, image_ids: set[int], category_ids: set[int]) -> list[tuple[str, str]]:
    """unknown_image / unknown_category for an annotation's image_id and category_id."""
    found = []
    image_id, category_id = ann.get("image_id"), ann.get("category_id")
    if not (_is_int(image_id) and image_id in image_ids):
        found.append(("unknown_image", f"names image_id {_short(image_id)}, which is not in images"))
    if not (_is_int(category_id) and category_id in category_ids):
        found.append(("unknown_category", f"names category_id {_short(category_id)}, which is not in categories"))
    return found


def _check_annotations(
    entries: list, images: dict[int, _Image], image_ids: set[int], category_ids: set[int], problems: _Problems
) -> set[int]:
    """Checks every annotation; returns the ids of the images that some annotation names."""
    seen: set[int] = set()
    named: set[int] = set()
    for index, ann in enumerate(entries):
        if not isinstance(ann, dict):
            problems.add("bad_annotation_entry", f"annotation entry #{index} is a {type(ann).__name__}, not an object")
            continue
        aid, image_id = ann.get("id"), ann.get("image_id")
        label = _annotation_label(ann, index, images)
        if _is_int(image_id):
            named.add(image_id)
        if not _is_int(aid):
            problems.add("bad_annotation_entry", f"{label}: id is not an integer", image_id)
        elif aid in seen:
            problems.add("duplicate_annotation_id", f"{label}: id used by an earlier annotation", image_id, aid)
        if _is_int(aid):
            seen.add(aid)
        image = images.get(image_id) if _is_int(image_id) else None
        found = _reference_problems(ann, image_ids, category_ids) + _segmentation_problems(ann, image)
        for kind, detail in found:
            problems.add(kind, f"{label}: {detail}", image_id, aid)
    return named


# ---------------------------------------------------------------- image files


def _decoded_size(path: Path) -> tuple[tuple[int, int], int]:
    """((width, height) of the raw pixels, EXIF orientation) after a full PIL decode; raises if it fails."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()  # decodes every pixel: a truncated file raises here
        try:
            orientation = im.getexif().get(EXIF_ORIENTATION, 1)
        except Exception:  # a corrupt EXIF block does not stop the pixels from loading
            orientation = 1
        return im.size, orientation


def _size_problem(image: _Image, raw: tuple[int, int], orientation: int) -> str:
    """Why the json size disagrees with the decoded file (EXIF orientation applied), or ""."""
    rotated = orientation in TRANSPOSING_ORIENTATIONS
    width, height = raw[::-1] if rotated else raw
    if (width, height) == (image.width, image.height):
        return ""
    loaded = f"the file loads as {width}x{height}"
    if rotated and raw == (image.width, image.height):
        return (
            f"json says {image.width}x{image.height} (width x height), the raw pixels, but its EXIF orientation "
            f"tag ({orientation}) rotates it: {loaded} (OpenCV, ImageOps.exif_transpose)"
        )
    exif = f" after its EXIF orientation tag ({orientation})" if rotated else ""
    return f"json says {image.width}x{image.height} (width x height), {loaded}{exif}"


def _file_problems(path: Path, image: _Image) -> list[tuple[str, str]]:
    """(kind, detail) for one image file: missing, unreadable by OpenCV or PIL, or of another size."""
    import cv2

    if not path.is_file():
        return [("missing_image", f"file {_text(str(path))} not found")]
    if cv2.imread(str(path), cv2.IMREAD_COLOR) is None:
        return [("unreadable_image", f"OpenCV cannot read {_text(str(path))}")]
    try:
        raw, orientation = _decoded_size(path)
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, bomb errors)
        return [("unreadable_image", f"PIL cannot decode {_text(str(path))}: {_short(str(e))}")]
    why = _size_problem(image, raw, orientation)
    return [("size_mismatch", why)] if why else []


def _check_files(images: dict[int, _Image], root: Path, progress: Callable | None, problems: _Problems) -> None:
    """Checks every valid image's file under root, decoding in a few threads (OpenCV and PIL free the GIL)."""
    if not root.is_dir():
        problems.add("missing_image", f"images root {_text(str(root))} is not a folder: no image file can be found")
        return
    todo = list(images.values())
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        futures = [pool.submit(_file_problems, root / image.file_name, image) for image in todo]
        results: Iterable = progress(futures) if progress else futures
        for image, future in zip(todo, results):
            for kind, detail in future.result():
                problems.add(kind, f"{image.label}: {detail}", image.id)


# ---------------------------------------------------------------- entry point


def check_coco(
    annotations: str | Path, images: str | Path | None, read_images: bool = True, progress: Callable | None = None
) -> CheckReport:
    """Checks a COCO json (and, optionally, its image files) without ever handing it to pycocotools.

    Args:
        annotations: The COCO json file.
        images: Folder the images' ``file_name`` are relative to; None skips the file checks.
        read_images: False skips the file checks (missing, unreadable, size mismatch).
        progress: Optional wrapper for the image loop, e.g. ``fastprogress.progress_bar``.

    Returns:
        The report; every problem of the json's content is in it, none is raised.

    Raises:
        TrashError: When the file cannot be read or is not json at all.
    """
    path = Path(annotations)
    data = _read_json(path)
    problems = _Problems()
    why = _structure_problem(data)
    if why:
        problems.add("not_coco", f"{path} is not COCO: {why}")
        return CheckReport(path, list(problems), 0, 0)
    entries = data.get("annotations", [])
    valid_images, image_ids = _check_images(data["images"], problems)
    category_ids = _check_categories(data["categories"], problems)
    named = _check_annotations(entries, valid_images, image_ids, category_ids, problems)
    for image in valid_images.values():
        if image.id not in named:
            problems.add("no_annotations", f"{image.label} has no annotation", image.id, severity=INFO)
    if images is not None and read_images:
        _check_files(valid_images, Path(images), progress, problems)
    return CheckReport(path, list(problems), len(data["images"]), len(entries))
