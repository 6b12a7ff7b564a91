"""Validation of a COCO json and its image folder before anything reaches pycocotools.

This module owns `trash`'s dataset check: it reads the json itself and reports every problem it
finds as a `Problem` in a `CheckReport` instead of raising, so one run lists all defects at once.
Polygons and RLE are checked in pure Python by app/data/shapes.py (pycocotools validates nothing).

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
* ``duplicate_category_name``, ``duplicate_file_name`` (two entries for one file), ``unknown_key`` (a top-level
  key that looks like a COCO key but is not one, e.g. ``annotation``).
* ``no_annotations`` (severity "info"): an image that no annotation names.
"""

import os
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from app.data.images import EXIF_ORIENTATION, TRANSPOSING_ORIENTATIONS
from app.data.shapes import ImageEntry, int_or_none, is_int, rle_problems, segmentation_problems, short, text
from app.errors import TrashError
from app.registry import did_you_mean

ERROR = "error"
INFO = "info"
MAX_SIDE = 2**31 - 1  # largest image height / width accepted (OpenCV and pycocotools use 32-bit sizes)


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


class _Problems(list):
    """The problem list being built, with a shorthand to add one."""

    def add(self, kind: str, message: str, image_id=None, annotation_id=None, severity: str = ERROR) -> None:
        """Appends a Problem; ids that are not integers are recorded as None."""
        self.append(Problem(kind, message, severity, int_or_none(image_id), int_or_none(annotation_id)))


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
    faults = [] if is_int(entry.get("id")) else [f"id {short(entry.get('id'))} is not an integer"]
    name = entry.get("file_name")
    if not isinstance(name, str) or not name.strip():
        faults.append(f"file_name {short(name)} is not a non-empty string")
    for key in ("height", "width"):
        value = entry.get(key)
        if not is_int(value) or not 0 < value <= MAX_SIDE:
            faults.append(f"{key} {short(value)} is not an integer in 1..{MAX_SIDE}")
    return faults


def _check_images(entries: list, problems: _Problems) -> tuple[dict[int, ImageEntry], set[int]]:
    """Checks the image entries.

    Returns:
        The valid images by id (first entry wins) and every image id that appears, valid entry or
        not (annotations naming those are not reported as unknown_image).
    """
    images: dict[int, ImageEntry] = {}
    seen: set[int] = set()
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            problems.add("bad_image_entry", f"image entry #{index} is a {type(entry).__name__}, not an object")
            continue
        image_id = entry.get("id")
        if is_int(image_id) and image_id in seen:
            problems.add("duplicate_image_id", f"image {image_id}: id used by an earlier entry (#{index})", image_id)
            continue
        faults = _image_entry_faults(entry)
        if is_int(image_id):
            seen.add(image_id)
        if faults:
            label = f"image {image_id} (entry #{index})" if is_int(image_id) else f"image entry #{index}"
            problems.add("bad_image_entry", f"{label}: {'; '.join(faults)}", image_id)
        else:
            images[image_id] = ImageEntry(image_id, entry["file_name"], entry["height"], entry["width"])
            ignore = entry.get("ignore_mask")
            if ignore is not None:  # pixels of no class (e.g. unconfident pseudo-labels), an RLE like annotations'
                why = (
                    rle_problems(ignore, images[image_id])
                    if isinstance(ignore, dict)
                    else [("bad_rle", f"is a {type(ignore).__name__}, not an RLE object")]
                )
                for _, detail in why:
                    problems.add("bad_ignore_mask", f"image {image_id}: ignore_mask {detail}", image_id)
    return images, seen


def _check_categories(entries: list, problems: _Problems) -> set[int]:
    """Checks the category entries; returns the ids of the valid ones."""
    ids: set[int] = set()
    names: dict[str, int] = {}
    for index, entry in enumerate(entries):
        cid = entry.get("id") if isinstance(entry, dict) else None
        name = entry.get("name") if isinstance(entry, dict) else None
        if not is_int(cid) or not isinstance(name, str):
            what = f"id {short(cid)}, name {short(name)}" if isinstance(entry, dict) else short(entry)
            problems.add("bad_category_entry", f"category entry #{index} ({what}): needs an integer id and a name")
        elif cid in ids:
            problems.add("duplicate_category_id", f"category {cid} ({name!r}): id used by an earlier entry (#{index})")
        elif name in names:  # two classes of one name: scores and class weights could not tell them apart
            problems.add("duplicate_category_name", f"category {cid} ({name!r}): name of category {names[name]} too")
        else:
            ids.add(cid)
            names[name] = cid
    return ids


def _check_file_names(entries: list, problems: _Problems) -> None:
    """duplicate_file_name: two image entries naming one file (one mask would be written over the other)."""
    seen: dict[str, object] = {}
    for entry in entries:
        name = entry.get("file_name") if isinstance(entry, dict) else None
        if not isinstance(name, str):
            continue
        if name in seen:
            problems.add(
                "duplicate_file_name",
                f"image {entry.get('id')}: file_name {text(name)!r} is image {seen[name]}'s too",
                entry.get("id"),
            )
        else:
            seen[name] = entry.get("id")


def _check_keys(data: dict, problems: _Problems) -> None:
    """unknown_key: a top-level key that looks like a COCO key but is not one (e.g. 'annotation')."""
    known = ("images", "categories", "annotations", "info", "licenses")
    for key in data:
        close = did_you_mean(str(key), known)
        if key not in known and close:
            problems.add("unknown_key", f"top-level key {short(key)} is not a COCO key{close}")


# ---------------------------------------------------------------- annotations


def _annotation_label(ann: dict, index: int, images: dict[int, ImageEntry]) -> str:
    """'annotation 7 on image 3 (a.jpg)' (or the entry index when the id is invalid)."""
    aid = ann.get("id")
    head = f"annotation {aid}" if is_int(aid) else f"annotation entry #{index} (id {short(aid)})"
    image_id = ann.get("image_id")
    image = images.get(image_id) if is_int(image_id) else None
    return f"{head} on {image.label if image else f'image {short(image_id)}'}"


def _reference_problems(ann: dict, image_ids: set[int], category_ids: set[int]) -> list[tuple[str, str]]:
    """unknown_image / unknown_category for an annotation's image_id and category_id."""
    found = []
    image_id, category_id = ann.get("image_id"), ann.get("category_id")
    if not (is_int(image_id) and image_id in image_ids):
        found.append(("unknown_image", f"names image_id {short(image_id)}, which is not in images"))
    if not (is_int(category_id) and category_id in category_ids):
        found.append(("unknown_category", f"names category_id {short(category_id)}, which is not in categories"))
    return found


def _check_annotations(
    entries: list, images: dict[int, ImageEntry], image_ids: set[int], category_ids: set[int], problems: _Problems
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
        if is_int(image_id):
            named.add(image_id)
        if not is_int(aid):
            problems.add("bad_annotation_entry", f"{label}: id is not an integer", image_id)
        elif aid in seen:
            problems.add("duplicate_annotation_id", f"{label}: id used by an earlier annotation", image_id, aid)
        if is_int(aid):
            seen.add(aid)
        image = images.get(image_id) if is_int(image_id) else None
        found = _reference_problems(ann, image_ids, category_ids) + segmentation_problems(ann, image)
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


def _size_problem(image: ImageEntry, raw: tuple[int, int], orientation: int) -> str:
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


def _file_problems(path: Path, image: ImageEntry) -> list[tuple[str, str]]:
    """(kind, detail) for one image file: missing, unreadable by OpenCV or PIL, or of another size."""
    import cv2

    if not path.is_file():
        return [("missing_image", f"file {text(str(path))} not found")]
    if cv2.imread(str(path), cv2.IMREAD_COLOR) is None:
        return [("unreadable_image", f"OpenCV cannot read {text(str(path))}")]
    try:
        raw, orientation = _decoded_size(path)
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, bomb errors)
        return [("unreadable_image", f"PIL cannot decode {text(str(path))}: {short(str(e))}")]
    why = _size_problem(image, raw, orientation)
    return [("size_mismatch", why)] if why else []


def _check_files(images: dict[int, ImageEntry], root: Path, progress: Callable | None, problems: _Problems) -> None:
    """Checks every valid image's file under root, decoding in a few threads (OpenCV and PIL free the GIL)."""
    if not root.is_dir():
        problems.add("missing_image", f"images root {text(str(root))} is not a folder: no image file can be found")
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
    _check_keys(data, problems)
    _check_file_names(data["images"], problems)
    valid_images, image_ids = _check_images(data["images"], problems)
    category_ids = _check_categories(data["categories"], problems)
    named = _check_annotations(entries, valid_images, image_ids, category_ids, problems)
    for image in valid_images.values():
        if image.id not in named:
            problems.add("no_annotations", f"{image.label} has no annotation", image.id, severity=INFO)
    if images is not None and read_images:
        _check_files(valid_images, Path(images), progress, problems)
    return CheckReport(path, list(problems), len(data["images"]), len(entries))
