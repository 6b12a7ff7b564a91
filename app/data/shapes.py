"""Polygons and RLE of COCO annotations, validated in pure Python before anything reaches pycocotools.

pycocotools validates nothing (NaN polygons crash the process, a 4-number polygon is read as a box, odd
polygons are truncated, an RLE of another size yields a wrong-shaped mask, an RLE whose counts do not sum to
height * width overruns its buffer), so app/data/check.py asks this module about every segmentation first.
Compressed RLE strings are decoded by a Python port of pycocotools' ``rleFrString``.
Each check returns (kind, detail) pairs; kinds are listed in app/data/check.py.
"""

import math
from dataclasses import dataclass

OUTSIDE_TOLERANCE = 0.1  # polygon coordinates may lie this fraction of the image size outside it
MAX_COORDINATE = 2**53  # larger integers lose precision as doubles (and overflow float conversion)
_REPR_LIMIT = 60


@dataclass(frozen=True)
class ImageEntry:
    """A valid image entry: what the annotation and file checks need."""

    id: int
    file_name: str
    height: int
    width: int

    @property
    def label(self) -> str:
        """'image 3 (a.jpg)', for messages."""
        return f"image {self.id} ({text(self.file_name)})"


# ---------------------------------------------------------------- small helpers


def is_int(value) -> bool:
    """True for JSON integers (bool is not one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """True for JSON numbers (bool is not one)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_finite(value: int | float) -> bool:
    """True for a finite float or an integer small enough to be a double."""
    return math.isfinite(value) if isinstance(value, float) else abs(value) <= MAX_COORDINATE


def int_or_none(value) -> int | None:
    """The value when it is a JSON integer, else None (for Problem's id fields)."""
    return value if is_int(value) else None


def short(value) -> str:
    """A one-line, length-limited repr of any json value, for messages."""
    text = repr(value)
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."


def text(value: str) -> str:
    """A file name as is when it is printable, else its repr (messages stay one line)."""
    return value if value.isprintable() else short(value)


# ---------------------------------------------------------------- polygons


def _polygon_problems(poly, image: ImageEntry | None) -> list[tuple[str, str]]:
    """(kind, detail) for one polygon of a polygon segmentation."""
    if not isinstance(poly, list):
        return [("bad_segmentation", f"is a {type(poly).__name__}, not a list of coordinates")]
    if not all(is_number(v) for v in poly):
        bad = next(v for v in poly if not is_number(v))
        return [("polygon_nonfinite", f"has a non-number coordinate {short(bad)}")]
    if not all(is_finite(v) for v in poly):
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


def _outside_problems(poly: list, image: ImageEntry) -> list[tuple[str, str]]:
    """polygon_out_of_image when a coordinate lies more than 10% of the image size outside it."""
    xs, ys = poly[0::2], poly[1::2]
    dx, dy = OUTSIDE_TOLERANCE * image.width, OUTSIDE_TOLERANCE * image.height
    if min(xs) >= -dx and max(xs) <= image.width + dx and min(ys) >= -dy and max(ys) <= image.height + dy:
        return []
    extent = f"x {min(xs):g}..{max(xs):g}, y {min(ys):g}..{max(ys):g}"
    return [("polygon_out_of_image", f"spans {extent}, far outside the {image.width}x{image.height} image")]


def _polygons_problems(seg: list, image: ImageEntry | None) -> list[tuple[str, str]]:
    """(kind, detail) for a polygon segmentation: a list of [x1, y1, x2, y2, ...] lists."""
    if any(is_number(v) for v in seg):
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
    elif isinstance(counts, list) and all(is_int(c) for c in counts):
        kind = "uncompressed"
    else:
        return f"counts {short(counts)} are neither a string nor a list of integers"
    if any(c < 0 for c in counts):
        return f"{kind} counts contain a negative run length"
    if sum(counts) != height * width:
        return f"{kind} counts sum to {sum(counts)}, not height*width = {height * width}"
    return ""


def rle_problems(seg: dict, image: ImageEntry | None) -> list[tuple[str, str]]:
    """(kind, detail) for an RLE segmentation {"size": [h, w], "counts": ...}."""
    size = seg.get("size")
    if not (isinstance(size, list) and len(size) == 2 and all(is_int(v) and v > 0 for v in size)):
        return [("rle_size", f"RLE size {short(size)} is not [height, width]")]
    if image is not None and size != [image.height, image.width]:
        return [("rle_size", f"RLE size {size} != image size [{image.height}, {image.width}] (height, width)")]
    if "counts" not in seg:
        return [("bad_rle", "RLE has no counts")]
    why = _rle_counts_problem(seg["counts"], *size)
    return [("bad_rle", why)] if why else []


def is_empty(seg) -> bool:
    """True for a missing or empty segmentation: None, [], [[]], {}, ""."""
    if seg is None or (isinstance(seg, list | dict | str) and not seg):
        return True
    return isinstance(seg, list) and all(isinstance(p, list) and not p for p in seg)


def segmentation_problems(ann: dict, image: ImageEntry | None) -> list[tuple[str, str]]:
    """(kind, detail) for an annotation's segmentation."""
    seg = ann.get("segmentation")
    if is_empty(seg):
        bbox = ann.get("bbox")
        if isinstance(bbox, list) and len(bbox) == 4:
            return [("bbox_only", f"has only a bbox {short(bbox)}, no segmentation")]
        return [("empty_segmentation", f"has no segmentation ({short(seg)})")]
    if isinstance(seg, list):
        return _polygons_problems(seg, image)
    if isinstance(seg, dict):
        return rle_problems(seg, image)
    return [("bad_segmentation", f"segmentation {short(seg)} is neither polygons nor an RLE object")]
