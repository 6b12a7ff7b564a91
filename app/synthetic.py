"""Deterministic synthetic COCO semantic-segmentation dataset (the "demo dataset").

This module owns the generation of a small, learnable stand-in for the recycling-trash
competition data: JPEG images under ``OUT/images/`` and ``train.json`` / ``val.json`` /
``test.json`` in ``OUT`` (``file_name`` relative to ``OUT``), with the 10 trash categories
(ids 1..10, background implicit).

Every class has its own shape, colour range and texture so a small U-Net can learn it
quickly. Each object is rasterised once with pycocotools from the exact polygon that is
annotated and only the pixels of that mask are painted, so image and annotation agree.
Objects are painted in order of decreasing area, matching the rasterisation rule
"largest annotation first, smaller ones on top". About 10 % of the annotations are stored
as RLE (compressed with ``str`` counts, or uncompressed with ``list`` counts). Battery and
Clothing are rare classes with guaranteed minimum counts in train and val.

Everything is driven by ``numpy.random.default_rng(seed)``: the same seed gives
byte-identical json files and identical image pixels.
"""

from __future__ import annotations

import colorsys
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

CLASS_NAMES: tuple[str, ...] = (
    "General trash",
    "Paper",
    "Paper pack",
    "Metal",
    "Glass",
    "Plastic",
    "Styrofoam",
    "Plastic bag",
    "Battery",
    "Clothing",
)

IMAGE_SIZES: tuple[tuple[int, int], ...] = ((160, 160), (192, 144))  # (width, height)
RARE_CLASSES: tuple[str, ...] = ("Battery", "Clothing")
COMMON_CLASSES: tuple[str, ...] = tuple(name for name in CLASS_NAMES if name not in RARE_CLASSES)
RARE_IMAGE_FRACTION = 0.09
MIN_RARE_INSTANCES: dict[str, int] = {"train": 2, "val": 1, "test": 0}
OBJECTS_PER_IMAGE = (2, 6)
RLE_FRACTION = 0.1
UNCOMPRESSED_RLE_FRACTION = 0.35
JPEG_QUALITY = 95
SPLITS: tuple[str, ...] = ("train", "val", "test")

_TAU = 2.0 * np.pi


@dataclass(frozen=True)
class _Frame:
    """Pixel grid of one image size.

    Attributes:
        width: Image width in pixels.
        height: Image height in pixels.
        xx: Pixel-centre x coordinates, shape (height, width).
        yy: Pixel-centre y coordinates, shape (height, width).
    """

    width: int
    height: int
    xx: np.ndarray
    yy: np.ndarray

    @classmethod
    def of(cls, width: int, height: int) -> _Frame:
        """Builds the coordinate grid for an image size."""
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        return cls(width, height, xx, yy)

    @property
    def scale(self) -> float:
        """Shorter image side, the unit for object sizes."""
        return float(min(self.width, self.height))


@dataclass
class _Drawing:
    """An object's geometry and look, before rasterisation.

    Attributes:
        polygon: Outline in image coordinates, shape (N, 2).
        texture: Full-frame RGB float texture; only pixels inside the mask are used.
        alpha: Opacity used when painting (below 1 looks translucent).
    """

    polygon: np.ndarray
    texture: np.ndarray
    alpha: float = 1.0


@dataclass
class _Object:
    """A rasterised object ready to paint and annotate."""

    category_id: int
    polygon: list[float]
    rle: dict
    mask: np.ndarray
    area: int
    drawing: _Drawing


# ---------------------------------------------------------------- small helpers


def _hsv(hue_deg: float, sat: float, val: float) -> np.ndarray:
    """Converts HSV (hue in degrees, sat/val in [0, 1]) to an RGB float array in [0, 255]."""
    rgb = colorsys.hsv_to_rgb((hue_deg % 360.0) / 360.0, float(np.clip(sat, 0, 1)), float(np.clip(val, 0, 1)))
    return np.array(rgb, dtype=np.float32) * 255.0


def _solid(frame: _Frame, rgb: np.ndarray) -> np.ndarray:
    """Returns a full-frame texture filled with one colour."""
    tex = np.empty((frame.height, frame.width, 3), dtype=np.float32)
    tex[:] = rgb
    return tex


def _place(local: np.ndarray, angle: float, center: np.ndarray) -> np.ndarray:
    """Rotates local (u, v) points by ``angle`` and moves them to ``center``."""
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]], dtype=np.float64)
    return local @ rot.T + center


def _local_coords(frame: _Frame, center: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates in an object's rotated frame (inverse of :func:`_place`)."""
    dx, dy = frame.xx - center[0], frame.yy - center[1]
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    return dx * c + dy * s, -dx * s + dy * c


def _smooth_noise(rng: np.random.Generator, frame: _Frame, cell: int) -> np.ndarray:
    """Low-frequency noise (roughly unit amplitude) with features about ``cell`` pixels wide."""
    low = rng.standard_normal((frame.height // cell + 2, frame.width // cell + 2)).astype(np.float32)
    return cv2.resize(low, (frame.width, frame.height), interpolation=cv2.INTER_CUBIC)


def _fine_noise(rng: np.random.Generator, frame: _Frame) -> np.ndarray:
    """Per-pixel standard normal noise."""
    return rng.standard_normal((frame.height, frame.width)).astype(np.float32)


def _radial_polygon(rng: np.random.Generator, n: int, radius: float, jitter: float) -> np.ndarray:
    """Star-shaped irregular polygon around the origin with per-vertex random radii."""
    theta = (np.arange(n) + rng.uniform(-0.3, 0.3, n)) * _TAU / n
    radii = radius * (1.0 - jitter * rng.random(n))
    return np.stack([radii * np.cos(theta), radii * np.sin(theta)], axis=1)


def _blob_polygon(rng: np.random.Generator, n: int, radius: float, amps: tuple[float, ...]) -> np.ndarray:
    """Smooth blob: radius modulated by low-order sinusoids with amplitudes ``amps``."""
    theta = np.arange(n) * _TAU / n
    radii = np.full(n, radius)
    for order, amp in enumerate(amps, start=2):
        radii = radii * (1.0 + amp * np.sin(order * theta + rng.uniform(0, _TAU)))
    return np.stack([radii * np.cos(theta), radii * np.sin(theta)], axis=1)


def _rect(half_u: float, half_v: float) -> np.ndarray:
    """Axis-aligned rectangle corners centred on the origin."""
    return np.array([[-half_u, -half_v], [half_u, -half_v], [half_u, half_v], [-half_u, half_v]])


# ---------------------------------------------------------------- class painters
# Each painter returns a _Drawing for one object centred at ``center``.


def _general_trash(rng: np.random.Generator, frame: _Frame, center: np.ndarray) -> _Drawing:
    """Dark brown jagged polygon with coarse dirt speckles."""
    local = _radial_polygon(rng, int(rng.integers(7, 12)), frame.scale * rng.uniform(0.09, 0.16), 0.5)
    color = _hsv(rng.uniform(15, 32), rng.uniform(0.6, 0.85), rng.uniform(0.24, 0.4))
    grain = cv2.GaussianBlur(_fine_noise(rng, frame), (0, 0), 1.0)
    shade = 1.0 + 0.5 * grain - 0.4 * (grain > 0.45)
    return _Drawing(_place(local, rng.uniform(0, _TAU), center), _solid(frame, color) * shade[..., None])


def _paper(rng: np.random.Generator, frame: _Frame, center: np.ndarray) -> _Drawing:
    """Light cream rectangle ruled with thin blue-grey lines."""
    side = frame.scale * rng.uniform(0.22, 0.36)
    angle = rng.uniform(0, _TAU)
    local = _rect(side / 2, side * rng.uniform(0.35, 0.65))
    tex = _solid(frame, _hsv(rng.uniform(40, 60), rng.uniform(0.04, 0.14), rng.uniform(0.88, 0.97)))
    _, v = _local_coords(frame, center, angle)
    lines = np.mod(v, rng.uniform(4.5, 6.5)) < 1.1
    tex[lines] = _hsv(215, 0.35, 0.6)
    return _Drawing(_place(local, angle, center), tex)


def _paper_pack(rng: np.random.Generator, frame: _Frame, center: np.ndarray) -> _Drawing:
    """Golden cardboard box seen in 3/4 view: front, lit top and shaded side, with a print band."""
    w, h = frame.scale * rng.uniform(0.14, 0.22), frame.scale * rng.uniform(0.18, 0.28)
    dx, dy = frame.scale * rng.uniform(0.05, 0.08), -frame.scale * rng.uniform(0.04, 0.07)
    box = np.array([[0, 0], [dx, dy], [w + dx, dy], [w + dx, h + dy], [w, h], [0, h]])
    offset = np.array([(w + dx) / 2, (h + dy) / 2])
    angle = rng.uniform(-0.5, 0.5)
    u, v = _local_coords(frame, center, angle)
    bx, by = u + offset[0], v + offset[1]
    side = bx > w + dx * np.clip(by / dy, 0.0, 1.0)
    top = (by < 0) & ~side
    shade = np.where(side, 0.7, np.where(top, 1.18, 1.0)).astype(np.float32)
    tex = _solid(frame, _hsv(rng.uniform(34, 46), rng.uniform(0.5, 0.7), rng.uniform(0.72, 0.85)))
    band = ~side & ~top & (by > 0.4 * h) & (by < 0.56 * h)
    tex[band] = _hsv(rng.uniform(200, 230), 0.7, 0.45)
    return _Drawing(_place(box - offset, angle, center), tex * shade[..., None])


def _metal(rng: np.random.Generator, frame: _Frame, center: np.ndarray) -> _Drawing:
    """Grey ellipse (can lid) with a specular highlight, edge falloff and a rim ring."""
    a = frame.scale * rng.uniform(0.1, 0.16)
    b = a * rng.uniform(0.65, 1.0)
    angle = rng.uniform(0, _TAU)
    theta = np.arange(32) * _TAU / 32
    local = np.stack([a * np.cos(theta), b * np.sin(theta)], axis=1)
    u, v = _local_coords(frame, center, angle)
    rho2 = (u / a) ** 2 + (v / b) ** 2
    hu, hv = rng.uniform(-0.45, 0.45, 2) * np.array([a, b])
    spec = np.exp(-((u - hu) ** 2 + (v - hv) ** 2) / (2 * (0.3 * a) ** 2))
    ring = np.abs(np.sqrt(rho2) - 0.8) < 0.05
    grey = _hsv(rng.uniform(190, 230), rng.uniform(0.0, 0.07), rng.uniform(0.72, 0.85))
    shade = (1.0 - 0.15 * rho2 - 0.2 * ring)[..., None]
    return _Drawing(_place(local, angle, center), _solid(frame, grey) * shade + 80.0 * spec[..., None])


def _glass(rng: np.random.Generator, frame: _Frame, center: np.ndarray) -> _Drawing:
    """Green translucent bottle: body, shoulder and neck, with a bright vertical streak."""
    length = frame.scale * rng.uniform(0.32, 0.46)
    half = length * rng.uniform(0.15, 0.2)
    u_prof = np.array([0.0, 0.03, 0.09, 0.55, 0.68, 0.76, 1.0]) * length - length / 2
    w_prof = np.array([0.7, 0.93, 1.0, 1.0, 0.62, 0.34, 0.34]) * half
    local = np.concatenate([np.stack([u_prof, w_prof], 1), np.stack([u_prof, -w_prof], 1)[::-1]])
    angle = rng.uniform(0, _TAU)
    _, v = _local_coords(frame, center, angle)
    streak = np.abs(v - 0.45 * half) < 0.12 * half + 0.6
    shade = (1.0 - 0.35 * np.clip(np.abs(v) / half, 0, 1) ** 2)[..., None]
    tex = _solid(frame, _hsv(rng.uniform(100, 140), rng.uniform(0.55, 0.8), rng.uniform(0.6, 0.8))) * shade
    tex[streak] += 70.0
    return _Drawing(_place(local, angle, center), tex, alpha=float(rng.uniform(0.78, 0.88)))


def _plastic(rng: np.random.Generator, frame: _Frame, center: np.ndarray) -> _Drawing:
    """Saturated red/pink smooth blob with soft shading and a highlight."""
    radius = frame.scale * rng.uniform(0.09, 0.15)
    local = _blob_polygon(rng, 24, radius, (0.18, 0.1))
    u, v = _local_coords(frame, center, 0.0)
    rho2 = (u**2 + v**2) / radius**2
    spec = np.exp(-((u + 0.35 * radius) ** 2 + (v + 0.35 * radius) ** 2) / (2 * (0.25 * radius) ** 2))
    color = _hsv(rng.uniform(-25, 10), rng.uniform(0.82, 1.0), rng.uniform(0.8, 0.98))
    tex = _solid(frame, color) * (1.0 - 0.2 * np.clip(rho2, 0, 1.5))[..., None] + 60.0 * spec[..., None]
    return _Drawing(local + center, tex)


def _styrofoam(rng: np.random.Generator, frame: _Frame, center: np.ndarray) -> _Drawing:
    """Bright white polygon with scalloped (bumpy) edges and a fine bead texture."""
    radius = frame.scale * rng.uniform(0.11, 0.18)
    n, bumps = 60, int(rng.integers(7, 12))
    theta = np.arange(n) * _TAU / n
    stretch = rng.uniform(1.0, 1.4)
    radii = radius * (0.86 + 0.16 * np.abs(np.sin(bumps * theta / 2)))
    local = np.stack([stretch * radii * np.cos(theta), radii * np.sin(theta)], axis=1)
    beads = cv2.GaussianBlur(_fine_noise(rng, frame), (0, 0), 0.7)
    tex = _solid(frame, _hsv(rng.uniform(180, 240), rng.uniform(0.0, 0.04), rng.uniform(0.95, 1.0)))
    tex += 14.0 * beads[..., None] - 8.0
    return _Drawing(_place(local, rng.uniform(0, _TAU), center), tex)


def _plastic_bag(rng: np.random.Generator, frame: _Frame, center: np.ndarray) -> _Drawing:
    """Light cyan translucent irregular polygon crossed by wavy wrinkles."""
    local = _radial_polygon(rng, int(rng.integers(11, 16)), frame.scale * rng.uniform(0.14, 0.22), 0.3)
    angle = rng.uniform(0, _TAU)
    u, _ = _local_coords(frame, center, angle)
    warp = 4.0 * _smooth_noise(rng, frame, 20)
    wrinkles = np.sin(_TAU * (u + warp) / rng.uniform(6.0, 9.0))
    color = _hsv(rng.uniform(180, 205), rng.uniform(0.22, 0.38), rng.uniform(0.86, 0.96))
    tex = _solid(frame, color) + 22.0 * wrinkles[..., None]
    return _Drawing(_place(local, angle, center), tex, alpha=float(rng.uniform(0.72, 0.82)))


def _battery(rng: np.random.Generator, frame: _Frame, center: np.ndarray) -> _Drawing:
    """Small black cylinder seen from the side, with a gold band and a silver cap."""
    length = frame.scale * rng.uniform(0.16, 0.22)
    half_w = length * rng.uniform(0.15, 0.19)
    cap = 0.08 * length
    end = length / 2 - cap
    local = np.array(
        [
            [-length / 2, -half_w],
            [end, -half_w],
            [end, -half_w / 2],
            [length / 2, -half_w / 2],
            [length / 2, half_w / 2],
            [end, half_w / 2],
            [end, half_w],
            [-length / 2, half_w],
        ]
    )
    angle = rng.uniform(0, _TAU)
    u, v = _local_coords(frame, center, angle)
    tex = _solid(frame, _hsv(rng.uniform(0, 360), 0.2, rng.uniform(0.08, 0.15)))
    tex[(u > end - 0.3 * length) & (u <= end)] = _hsv(rng.uniform(38, 48), 0.85, 0.9)
    tex[u > end] = _hsv(0, 0.0, 0.8)
    gloss = np.exp(-((v + 0.35 * half_w) ** 2) / (2 * (0.18 * half_w) ** 2))
    return _Drawing(_place(local, angle, center), tex + 60.0 * gloss[..., None])


def _clothing(rng: np.random.Generator, frame: _Frame, center: np.ndarray) -> _Drawing:
    """Large purple irregular polygon with a plaid weave and soft folds."""
    local = _radial_polygon(rng, int(rng.integers(10, 15)), frame.scale * rng.uniform(0.26, 0.34), 0.3)
    angle = rng.uniform(0, _TAU)
    u, v = _local_coords(frame, center, angle)
    period = rng.uniform(5.0, 8.0)
    checks = (np.floor(u / period) + np.floor(v / period)) % 2
    folds = 1.0 + 0.12 * _smooth_noise(rng, frame, 28)
    shade = (0.82 + 0.3 * checks) * folds
    color = _hsv(rng.uniform(265, 300), rng.uniform(0.45, 0.7), rng.uniform(0.5, 0.68))
    return _Drawing(_place(local, angle, center), _solid(frame, color) * shade[..., None])


_PAINTERS: dict[str, Callable[[np.random.Generator, _Frame, np.ndarray], _Drawing]] = {
    "General trash": _general_trash,
    "Paper": _paper,
    "Paper pack": _paper_pack,
    "Metal": _metal,
    "Glass": _glass,
    "Plastic": _plastic,
    "Styrofoam": _styrofoam,
    "Plastic bag": _plastic_bag,
    "Battery": _battery,
    "Clothing": _clothing,
}


# ---------------------------------------------------------------- image composition


def _background(rng: np.random.Generator, frame: _Frame) -> np.ndarray:
    """Muted, mid-dark two-colour gradient with low-amplitude noise (unlike any class)."""
    hue = rng.uniform(0, 360)
    c1 = _hsv(hue, rng.uniform(0.05, 0.2), rng.uniform(0.3, 0.52))
    c2 = _hsv(hue + rng.uniform(-60, 60), rng.uniform(0.05, 0.2), rng.uniform(0.3, 0.52))
    u, _ = _local_coords(frame, np.array([frame.width / 2, frame.height / 2]), rng.uniform(0, _TAU))
    t = np.clip(u / frame.scale + 0.5, 0.0, 1.0)[..., None]
    noise = 6.0 * _smooth_noise(rng, frame, 24) + 2.5 * _fine_noise(rng, frame)
    return c1 * (1.0 - t) + c2 * t + noise[..., None]


def _pick_center(rng: np.random.Generator, frame: _Frame, previous: list[np.ndarray]) -> np.ndarray:
    """Object centre: sometimes next to an earlier object (to overlap), otherwise anywhere."""
    size = np.array([frame.width, frame.height], dtype=np.float64)
    if previous and rng.random() < 0.4:
        anchor = previous[int(rng.integers(len(previous)))]
        center = anchor + rng.normal(0.0, 0.12 * frame.scale, 2)
    else:
        center = rng.uniform(0.15, 0.85, 2) * size
    return np.clip(center, 0.12 * size, 0.88 * size)


def _rasterize(drawing: _Drawing, frame: _Frame, category_id: int) -> _Object:
    """Clips the outline to the image, rounds it and rasterises it with pycocotools."""
    pts = drawing.polygon.copy()
    pts[:, 0] = np.clip(pts[:, 0], 0.0, frame.width - 1.0)
    pts[:, 1] = np.clip(pts[:, 1], 0.0, frame.height - 1.0)
    polygon = [round(float(c), 2) for c in pts.reshape(-1)]
    rle = mask_utils.merge(mask_utils.frPyObjects([polygon], frame.height, frame.width))
    mask = mask_utils.decode(rle).astype(bool)
    return _Object(category_id, polygon, rle, mask, int(mask_utils.area(rle)), drawing)


def _compose(rng: np.random.Generator, frame: _Frame, classes: list[str]) -> tuple[np.ndarray, list[_Object]]:
    """Builds one RGB image and its objects, painted largest area first.

    Args:
        rng: Random generator.
        frame: Image grid.
        classes: Class names of the objects to place.

    Returns:
        The uint8 RGB image and its objects in painting order.
    """
    canvas = _background(rng, frame)
    objects, centers = [], []
    for name in classes:
        center = _pick_center(rng, frame, centers)
        centers.append(center)
        drawing = _PAINTERS[name](rng, frame, center)
        objects.append(_rasterize(drawing, frame, CLASS_NAMES.index(name) + 1))
    objects.sort(key=lambda obj: -obj.area)
    for obj in objects:
        alpha, m = obj.drawing.alpha, obj.mask
        canvas[m] = alpha * obj.drawing.texture[m] + (1.0 - alpha) * canvas[m]
    canvas += 2.0 * _fine_noise(rng, frame)[..., None]
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), objects


# ---------------------------------------------------------------- split planning


def _rare_plan(rng: np.random.Generator, n_images: int, min_instances: int) -> list[int]:
    """Number of instances of one rare class per image (few images, minimum guaranteed)."""
    counts = [0] * n_images
    if n_images == 0:
        return counts
    n_with = min(n_images, max(min_instances, round(RARE_IMAGE_FRACTION * n_images)))
    chosen = rng.choice(n_images, size=n_with, replace=False)
    for i in chosen:
        counts[int(i)] = 1
    for k in range(max(0, min_instances - n_with)):
        counts[int(chosen[k % n_with])] += 1
    return counts


def _plan_classes(rng: np.random.Generator, split: str, n_images: int) -> list[list[str]]:
    """Class names per image: rare classes by plan, the rest common, every common class used."""
    plans = [[] for _ in range(n_images)]
    for name in RARE_CLASSES:
        for i, count in enumerate(_rare_plan(rng, n_images, MIN_RARE_INSTANCES[split])):
            plans[i].extend([name] * count)
    slots = []
    for i, plan in enumerate(plans):
        n_obj = int(rng.integers(OBJECTS_PER_IMAGE[0], OBJECTS_PER_IMAGE[1] + 1))
        for _ in range(max(n_obj - len(plan), 0)):
            plan.append(COMMON_CLASSES[int(rng.integers(len(COMMON_CLASSES)))])
            slots.append((i, len(plan) - 1))
    if len(slots) >= len(COMMON_CLASSES):
        picked = rng.choice(len(slots), size=len(COMMON_CLASSES), replace=False)
        for name, k in zip(rng.permutation(COMMON_CLASSES), picked, strict=True):
            i, j = slots[int(k)]
            plans[i][j] = str(name)
    for plan in plans:
        rng.shuffle(plan)
    return plans


# ---------------------------------------------------------------- annotations


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
    """Column-major run lengths of a binary mask, starting with a (possibly empty) zero run."""
    flat = mask.ravel(order="F").astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    runs = np.diff(bounds).astype(int).tolist()
    return [0, *runs] if flat.size and flat[0] else runs


def _segmentation(obj: _Object, kind: str) -> list | dict:
    """COCO segmentation of ``obj`` as 'polygon', 'rle' (compressed, str counts) or 'rle_list'."""
    if kind == "polygon":
        return [obj.polygon]
    size = [int(s) for s in obj.rle["size"]]
    if kind == "rle":
        return {"size": size, "counts": obj.rle["counts"].decode("ascii")}
    return {"size": size, "counts": _uncompressed_counts(obj.mask)}


def _segmentation_kinds(rng: np.random.Generator, n: int, force_both: bool) -> list[str]:
    """Chooses the storage kind per annotation; optionally guarantees both RLE kinds."""
    kinds = []
    for _ in range(n):
        if rng.random() >= RLE_FRACTION:
            kinds.append("polygon")
        else:
            kinds.append("rle_list" if rng.random() < UNCOMPRESSED_RLE_FRACTION else "rle")
    if force_both and n >= 2:
        for kind in ("rle", "rle_list"):
            polygons = [i for i, k in enumerate(kinds) if k == "polygon"]
            if kind not in kinds and polygons:
                kinds[polygons[int(rng.integers(len(polygons)))]] = kind
    return kinds


def _annotation(obj: _Object, ann_id: int, image_id: int, segmentation: list | dict) -> dict:
    """One COCO annotation record; area and bbox come from the rasterised mask."""
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": obj.category_id,
        "segmentation": segmentation,
        "area": obj.area,
        "bbox": [round(float(x), 2) for x in mask_utils.toBbox(obj.rle)],
        "iscrowd": 0,
    }


# ---------------------------------------------------------------- writing


def _write_jpeg(path: Path, rgb: np.ndarray) -> None:
    """Writes an RGB uint8 image as JPEG quality 95."""
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
        raise OSError(f"could not write {path}")


def _coco_header(seed: int, split: str) -> dict:
    """The ``info``, ``licenses`` and ``categories`` keys shared by all splits."""
    return {
        "info": {
            "description": f"Synthetic recycling-trash segmentation demo data ({split}, seed={seed})",
            "version": "1.0",
            "contributor": "app.synthetic",
            "url": "",
        },
        "licenses": [{"id": 0, "name": "CC0 1.0 (synthetic)", "url": ""}],
        "categories": [{"id": i, "name": n, "supercategory": n} for i, n in enumerate(CLASS_NAMES, start=1)],
    }


def _generate_split(
    rng: np.random.Generator, out: Path, split: str, n_images: int, ids: dict[str, int]
) -> tuple[list[dict], list[dict]]:
    """Generates and writes one split's images; returns its COCO image and annotation records.

    Args:
        rng: Random generator of this split.
        out: Dataset root.
        split: "train", "val" or "test".
        n_images: Number of images.
        ids: Next free ``image`` and ``annotation`` ids; updated in place.

    Returns:
        The image records and the annotation records (empty for test).
    """
    frames = [_Frame.of(w, h) for w, h in IMAGE_SIZES]
    sizes = rng.permutation(np.arange(n_images) % len(frames))
    images, pending = [], []
    for i, classes in enumerate(_plan_classes(rng, split, n_images)):
        frame = frames[int(sizes[i])]
        rgb, objects = _compose(rng, frame, classes)
        file_name = f"images/{split}_{i:04d}.jpg"
        _write_jpeg(out / file_name, rgb)
        image_id = ids["image"]
        ids["image"] += 1
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "height": frame.height,
                "width": frame.width,
                "license": 0,
            }
        )
        pending.extend((image_id, obj) for obj in objects)
    if split == "test":
        return images, []
    kinds = _segmentation_kinds(rng, len(pending), force_both=split == "train")
    annotations = []
    for (image_id, obj), kind in zip(pending, kinds, strict=True):
        annotations.append(_annotation(obj, ids["annotation"], image_id, _segmentation(obj, kind)))
        ids["annotation"] += 1
    return images, annotations


def make_demo_dataset(
    out: str | Path, seed: int = 0, n_train: int = 96, n_val: int = 24, n_test: int = 16
) -> dict[str, Path]:
    """Writes OUT/images/*.jpg and OUT/train.json, OUT/val.json, OUT/test.json.

    Image and annotation ids are unique across the three files; test.json has the same keys
    with ``annotations: []``. The rare-class minimums (2 Battery and 2 Clothing instances in
    train, 1 each in val) hold whenever the split has at least one image.

    Args:
        out: Dataset root directory (created if missing).
        seed: Seed for ``numpy.random.default_rng``; same seed gives identical output.
        n_train: Number of training images.
        n_val: Number of validation images.
        n_test: Number of test images (no annotations).

    Returns:
        {"train": path, "val": path, "test": path, "images": OUT}.
    """
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    split_rngs = np.random.default_rng(seed).spawn(len(SPLITS))
    counts = {"train": n_train, "val": n_val, "test": n_test}
    ids = {"image": 0, "annotation": 0}
    paths: dict[str, Path] = {}
    for split, rng in zip(SPLITS, split_rngs, strict=True):
        images, annotations = _generate_split(rng, out, split, counts[split], ids)
        coco = {**_coco_header(seed, split), "images": images, "annotations": annotations}
        paths[split] = out / f"{split}.json"
        paths[split].write_text(json.dumps(coco), encoding="utf-8")
    paths["images"] = out
    return paths
