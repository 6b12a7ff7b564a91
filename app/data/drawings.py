"""The demo dataset's drawings: one shape, colour range and texture per class, so a small Unet learns each fast.

Each painter returns a `Drawing` (outline polygon, full-frame texture, opacity) for one object of its class
at a given centre; app/data/synthetic.py rasterizes, paints and annotates them. Everything is driven by the
`numpy.random.Generator` passed in: the same draws give the same pixels.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

_TAU = 2.0 * np.pi


@dataclass(frozen=True)
class Frame:
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
    def of(cls, width: int, height: int) -> Frame:
        """Builds the coordinate grid for an image size."""
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        return cls(width, height, xx, yy)

    @property
    def scale(self) -> float:
        """Shorter image side, the unit for object sizes."""
        return float(min(self.width, self.height))


@dataclass
class Drawing:
    """An object's geometry and look, before rasterisation.

    Attributes:
        polygon: Outline in image coordinates, shape (N, 2).
        texture: Full-frame RGB float texture; only pixels inside the mask are used.
        alpha: Opacity used when painting (below 1 looks translucent).
    """

    polygon: np.ndarray
    texture: np.ndarray
    alpha: float = 1.0


# ---------------------------------------------------------------- small helpers


def _hsv(hue_deg: float, sat: float, val: float) -> np.ndarray:
    """Converts HSV (hue in degrees, sat/val in [0, 1]) to an RGB float array in [0, 255]."""
    rgb = colorsys.hsv_to_rgb((hue_deg % 360.0) / 360.0, float(np.clip(sat, 0, 1)), float(np.clip(val, 0, 1)))
    return np.array(rgb, dtype=np.float32) * 255.0


def _solid(frame: Frame, rgb: np.ndarray) -> np.ndarray:
    """Returns a full-frame texture filled with one colour."""
    tex = np.empty((frame.height, frame.width, 3), dtype=np.float32)
    tex[:] = rgb
    return tex


def _place(local: np.ndarray, angle: float, center: np.ndarray) -> np.ndarray:
    """Rotates local (u, v) points by ``angle`` and moves them to ``center``."""
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]], dtype=np.float64)
    return local @ rot.T + center


def _local_coords(frame: Frame, center: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates in an object's rotated frame (inverse of :func:`_place`)."""
    dx, dy = frame.xx - center[0], frame.yy - center[1]
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    return dx * c + dy * s, -dx * s + dy * c


def _smooth_noise(rng: np.random.Generator, frame: Frame, cell: int) -> np.ndarray:
    """Low-frequency noise (roughly unit amplitude) with features about ``cell`` pixels wide."""
    low = rng.standard_normal((frame.height // cell + 2, frame.width // cell + 2)).astype(np.float32)
    return cv2.resize(low, (frame.width, frame.height), interpolation=cv2.INTER_CUBIC)


def _fine_noise(rng: np.random.Generator, frame: Frame) -> np.ndarray:
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
# Each painter returns a Drawing for one object centred at ``center``.


def _general_trash(rng: np.random.Generator, frame: Frame, center: np.ndarray) -> Drawing:
    """Dark brown jagged polygon with coarse dirt speckles."""
    local = _radial_polygon(rng, int(rng.integers(7, 12)), frame.scale * rng.uniform(0.09, 0.16), 0.5)
    color = _hsv(rng.uniform(15, 32), rng.uniform(0.6, 0.85), rng.uniform(0.24, 0.4))
    grain = cv2.GaussianBlur(_fine_noise(rng, frame), (0, 0), 1.0)
    shade = 1.0 + 0.5 * grain - 0.4 * (grain > 0.45)
    return Drawing(_place(local, rng.uniform(0, _TAU), center), _solid(frame, color) * shade[..., None])


def _paper(rng: np.random.Generator, frame: Frame, center: np.ndarray) -> Drawing:
    """Light cream rectangle ruled with thin blue-grey lines."""
    side = frame.scale * rng.uniform(0.22, 0.36)
    angle = rng.uniform(0, _TAU)
    local = _rect(side / 2, side * rng.uniform(0.35, 0.65))
    tex = _solid(frame, _hsv(rng.uniform(40, 60), rng.uniform(0.04, 0.14), rng.uniform(0.88, 0.97)))
    _, v = _local_coords(frame, center, angle)
    lines = np.mod(v, rng.uniform(4.5, 6.5)) < 1.1
    tex[lines] = _hsv(215, 0.35, 0.6)
    return Drawing(_place(local, angle, center), tex)


def _paper_pack(rng: np.random.Generator, frame: Frame, center: np.ndarray) -> Drawing:
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
    return Drawing(_place(box - offset, angle, center), tex * shade[..., None])


def _metal(rng: np.random.Generator, frame: Frame, center: np.ndarray) -> Drawing:
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
    return Drawing(_place(local, angle, center), _solid(frame, grey) * shade + 80.0 * spec[..., None])


def _glass(rng: np.random.Generator, frame: Frame, center: np.ndarray) -> Drawing:
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
    return Drawing(_place(local, angle, center), tex, alpha=float(rng.uniform(0.78, 0.88)))


def _plastic(rng: np.random.Generator, frame: Frame, center: np.ndarray) -> Drawing:
    """Saturated red/pink smooth blob with soft shading and a highlight."""
    radius = frame.scale * rng.uniform(0.09, 0.15)
    local = _blob_polygon(rng, 24, radius, (0.18, 0.1))
    u, v = _local_coords(frame, center, 0.0)
    rho2 = (u**2 + v**2) / radius**2
    spec = np.exp(-((u + 0.35 * radius) ** 2 + (v + 0.35 * radius) ** 2) / (2 * (0.25 * radius) ** 2))
    color = _hsv(rng.uniform(-25, 10), rng.uniform(0.82, 1.0), rng.uniform(0.8, 0.98))
    tex = _solid(frame, color) * (1.0 - 0.2 * np.clip(rho2, 0, 1.5))[..., None] + 60.0 * spec[..., None]
    return Drawing(local + center, tex)


def _styrofoam(rng: np.random.Generator, frame: Frame, center: np.ndarray) -> Drawing:
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
    return Drawing(_place(local, rng.uniform(0, _TAU), center), tex)


def _plastic_bag(rng: np.random.Generator, frame: Frame, center: np.ndarray) -> Drawing:
    """Light cyan translucent irregular polygon crossed by wavy wrinkles."""
    local = _radial_polygon(rng, int(rng.integers(11, 16)), frame.scale * rng.uniform(0.14, 0.22), 0.3)
    angle = rng.uniform(0, _TAU)
    u, _ = _local_coords(frame, center, angle)
    warp = 4.0 * _smooth_noise(rng, frame, 20)
    wrinkles = np.sin(_TAU * (u + warp) / rng.uniform(6.0, 9.0))
    color = _hsv(rng.uniform(180, 205), rng.uniform(0.22, 0.38), rng.uniform(0.86, 0.96))
    tex = _solid(frame, color) + 22.0 * wrinkles[..., None]
    return Drawing(_place(local, angle, center), tex, alpha=float(rng.uniform(0.72, 0.82)))


def _battery(rng: np.random.Generator, frame: Frame, center: np.ndarray) -> Drawing:
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
    return Drawing(_place(local, angle, center), tex + 60.0 * gloss[..., None])


def _clothing(rng: np.random.Generator, frame: Frame, center: np.ndarray) -> Drawing:
    """Large purple irregular polygon with a plaid weave and soft folds."""
    local = _radial_polygon(rng, int(rng.integers(10, 15)), frame.scale * rng.uniform(0.26, 0.34), 0.3)
    angle = rng.uniform(0, _TAU)
    u, v = _local_coords(frame, center, angle)
    period = rng.uniform(5.0, 8.0)
    checks = (np.floor(u / period) + np.floor(v / period)) % 2
    folds = 1.0 + 0.12 * _smooth_noise(rng, frame, 28)
    shade = (0.82 + 0.3 * checks) * folds
    color = _hsv(rng.uniform(265, 300), rng.uniform(0.45, 0.7), rng.uniform(0.5, 0.68))
    return Drawing(_place(local, angle, center), _solid(frame, color) * shade[..., None])


PAINTERS: dict[str, Callable[[np.random.Generator, Frame, np.ndarray], Drawing]] = {
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


def background(rng: np.random.Generator, frame: Frame) -> np.ndarray:
    """Muted, mid-dark two-colour gradient with low-amplitude noise (unlike any class)."""
    hue = rng.uniform(0, 360)
    c1 = _hsv(hue, rng.uniform(0.05, 0.2), rng.uniform(0.3, 0.52))
    c2 = _hsv(hue + rng.uniform(-60, 60), rng.uniform(0.05, 0.2), rng.uniform(0.3, 0.52))
    u, _ = _local_coords(frame, np.array([frame.width / 2, frame.height / 2]), rng.uniform(0, _TAU))
    t = np.clip(u / frame.scale + 0.5, 0.0, 1.0)[..., None]
    noise = 6.0 * _smooth_noise(rng, frame, 24) + 2.5 * _fine_noise(rng, frame)
    return c1 * (1.0 - t) + c2 * t + noise[..., None]
