"""Label issues of one image from its out-of-fold probabilities: Confident Learning for segmentation.

Confident Learning (Northcutt, Jiang & Chuang, JAIR 2021) calls a pixel's given label y into doubt when another
class k is *confidently* seen there: p_k >= t_k, with t_k the mean out-of-fold probability of class k over the
pixels labelled k (the per-class threshold, robust to classes the model is shy of). Among the classes above their
threshold the most probable one is the pixel's confident class. For segmentation (Lad & Mueller 2023, arXiv
2307.05080) the image's label quality is a softmin over pixel scores (the probability of the given label), which
ranks images with a small badly labelled region below images with diffuse uncertainty.

Written here rather than taken from cleanlab: cleanlab is AGPL-3.0, which `trash` cannot ship. Findings are made
per annotation (its visible pixels, after overlaps are painted) and per connected region of unlabelled pixels:

* wrong_class: the annotation's pixels belong, by mean probability and by confident class, to another object class;
* spurious: the same, but the other class is the background (and under `core_share` of the pixels are confidently
  the given class: with a core of its class, the annotation is a loose boundary instead);
* missing: a connected region labelled background whose confident class is an object class, touching no
  annotation of that class;
* loose_boundary: the object is right, but a large share of its pixels is confidently background (spill) or a
  large confident region of its class next to it is left unlabelled (the reverse).

Scores are in [0, 1], higher = more likely a label error; every function takes plain arrays.
"""

from dataclasses import dataclass, field

import cv2
import numpy as np

KINDS = ("wrong_class", "spurious", "missing", "loose_boundary")
NO_CLASS = -1  # confident-class value of a pixel where no class reaches its threshold
SOFTMIN_TEMPERATURE = 0.1  # Lad & Mueller's default: the worst ~10% of pixel scores dominate the image score


@dataclass(frozen=True)
class AuditSettings:
    """How sure the audit must be before it reports (pixels at the image's original size)."""

    min_share: float = 0.5  # share of an annotation's pixels confidently another class that flags it on its own
    loose_share: float = 0.25  # share of confidently-background (or missed) pixels that makes a boundary loose
    core_share: float = 0.2  # this share confidently its class: a mostly-background annotation is loose, not spurious
    min_pixels: int = 32  # smallest annotation or unlabelled region that is judged
    touch: int = 2  # px: an unlabelled region this close to an annotation of its class is that annotation's edge


@dataclass(frozen=True)
class Finding:
    """One suspected label error."""

    image_id: int
    file_name: str
    annotation_id: int | None  # None for a missing region
    kind: str  # one of KINDS
    score: float  # 0..1, higher = more likely an error
    label: str  # the class the json gives (Background for a missing region)
    suggested: str  # the class the out-of-fold model sees (Background for a spurious annotation)
    pixels: int  # of the annotation (visible part) or of the missing region
    bbox: tuple[int, int, int, int]  # x, y, width, height of those pixels
    suggested_class: int = -1  # class index of `suggested`
    fold: int = -1
    region: dict | None = field(default=None, compare=False, repr=False)  # RLE of a missing region

    def row(self) -> dict:
        """Plain values for audit.csv / audit.json."""
        return {
            "image_id": self.image_id,
            "file_name": self.file_name,
            "annotation_id": self.annotation_id,
            "kind": self.kind,
            "score": round(self.score, 4),
            "label": self.label,
            "suggested": self.suggested,
            "pixels": self.pixels,
            "bbox": list(self.bbox),
            "fold": self.fold,
        }


@dataclass(frozen=True)
class Labelled:
    """One image's labels: the painted class mask and which annotation owns each pixel."""

    mask: np.ndarray  # (H, W) class index per pixel, `ignore` where nothing counts
    owner: np.ndarray  # (H, W) int32: index into `annotations` of the painted annotation, -1 none
    annotations: list[tuple[int, int]]  # (annotation id, class index), in json order
    ignore: int


def confident_classes(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(H, W) int: per pixel, the most probable class among those at or above their threshold, else NO_CLASS."""
    above = probs >= thresholds[:, None, None]
    masked = np.where(above, probs, -1.0)
    best = masked.argmax(0)
    return np.where(above.any(0), best, NO_CLASS)


def image_score(probs: np.ndarray, mask: np.ndarray, ignore: int) -> float:
    """Label quality of the image in [0, 1] (low = suspect): softmin of the given label's probability per pixel."""
    keep = mask != ignore
    if not keep.any():
        return 1.0
    labels = mask[keep].astype(np.int64)
    scores = np.take_along_axis(probs[:, keep], labels[None], 0)[0].astype(np.float64)
    weights = np.exp(-scores / SOFTMIN_TEMPERATURE)
    return float((scores * weights).sum() / weights.sum())


class Thresholds:
    """Accumulates the per-class thresholds t_c = mean OOF probability of class c over pixels labelled c, each
    class's typical annotation size (mean visible pixels per annotation), and how the models usually see each
    class's annotations: the mean share of an annotation labelled y that the OOF argmax gives to class k."""

    def __init__(self, n_classes: int):
        self.sums = np.zeros(n_classes, np.float64)
        self.counts = np.zeros(n_classes, np.int64)
        self.instances = np.zeros(n_classes, np.int64)
        self.seen_as = np.zeros((n_classes, n_classes), np.float64)  # [y, k]: summed per-annotation argmax shares

    def add(self, probs: np.ndarray, labelled: "Labelled") -> None:
        mask = labelled.mask
        for c in np.unique(mask):
            if c < len(self.sums):
                on = mask == c
                self.sums[c] += probs[c][on].sum(dtype=np.float64)
                self.counts[c] += int(on.sum())
        # per annotation and class, its visible pixels the argmax gives that class: one bincount over the owner map
        n, owned = len(self.sums), labelled.owner >= 0
        pairs = labelled.owner[owned].astype(np.int64) * n + probs.argmax(0)[owned]
        counts = np.bincount(pairs, minlength=len(labelled.annotations) * n).reshape(-1, n)
        for (_, c), row in zip(labelled.annotations, counts):
            if row.sum():
                self.instances[c] += 1
                self.seen_as[c] += row / row.sum()

    def values(self) -> np.ndarray:
        """Thresholds per class; a class never labelled gets 1.0 (never confident: nothing to compare with)."""
        return np.where(self.counts > 0, self.sums / np.maximum(self.counts, 1), 1.0)

    def typical_areas(self) -> np.ndarray:
        """Mean visible pixels per annotation of each class (0 where a class has none)."""
        return self.counts / np.maximum(self.instances, 1) * (self.instances > 0)

    def usual_share(self, given: int, k: int, own: float) -> float:
        """The mean share of class k in the other annotations labelled `given` (leave-one-out: `own` is this
        annotation's share), 0 when it is the only one."""
        n = self.instances[given]
        return float((self.seen_as[given, k] - own) / (n - 1)) if n > 1 else 0.0


def argmax_shares(argmax: np.ndarray, region: np.ndarray, n_classes: int) -> np.ndarray:
    """Share of the region's pixels whose most probable class is each class."""
    return np.bincount(argmax[region], minlength=n_classes)[:n_classes] / max(int(region.sum()), 1)


def bbox(region: np.ndarray) -> tuple[int, int, int, int]:
    """x, y, width, height of a region's pixels."""
    ys, xs = np.nonzero(region)
    return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


def _evidence(
    probs: np.ndarray, confident: np.ndarray, argmax: np.ndarray, region: np.ndarray, given: int, t: Thresholds,
    s: AuditSettings,
) -> tuple[int, float, bool, float]:  # fmt: skip
    """(other class k, score, flagged, share of confidently-given pixels): k is the most probable class but the
    given one over the region.

    Flagged when k's mean probability beats the given class's, or when at least `s.min_share` of the pixels are
    confidently k (Confident Learning's test). The score averages that margin of mean probabilities and that
    share, times 1 - (mean p_given / t_given) floored at 0 (an annotation as confident as its class's pixels are
    on average, a class the models are shy of, is no error), times 1 - the share of k the models usually see in
    the class's other annotations (a confusion the models make on every annotation of the class, such as a class
    they never learned seen as background, is the models' error, not this label's).
    """
    thresholds = t.values()
    mean = probs[:, region].mean(1)
    shares = np.bincount(confident[region] + 1, minlength=len(mean) + 1)[1:] / region.sum()
    other = mean.copy()
    other[given] = -1
    k = int(other.argmax())
    below = max(0.0, 1.0 - mean[given] / max(thresholds[given], 1e-6))
    own = argmax_shares(argmax, region, len(mean))[k]
    unusual = max(0.0, 1.0 - t.usual_share(given, k, own))
    score = (max(mean[k] - mean[given], 0.0) + shares[k]) / 2 * below * unusual
    return k, float(score), bool(mean[k] > mean[given] or shares[k] >= s.min_share), float(shares[given])


def annotation_findings(
    probs: np.ndarray, confident: np.ndarray, labelled: Labelled, grown: np.ndarray, t: Thresholds, s: AuditSettings
) -> list[tuple[int, str, float, int, np.ndarray]]:
    """(annotation index, kind, score, suggested class, region) for each suspect annotation of one image.

    Args:
        grown: Per annotation, the unlabelled pixels of its class confidently next to it (from `missing_regions`).
        t: The first pass's per-class statistics (thresholds, how each class is usually seen).
    """
    found, argmax = [], probs.argmax(0)
    for i, (_, given) in enumerate(labelled.annotations):
        region = labelled.owner == i
        n = int(region.sum())
        if n < s.min_pixels:
            continue
        k, score, flagged, core = _evidence(probs, confident, argmax, region, given, t, s)
        spill = float((confident[region] == 0).mean())
        if flagged and not (k == 0 and core >= s.core_share):
            found.append((i, "spurious" if k == 0 else "wrong_class", score, k, region))
            continue
        reverse = grown[i] / (n + grown[i])
        if max(spill, reverse) >= s.loose_share:
            found.append((i, "loose_boundary", max(spill, reverse), given, region))
    return found


def missing_regions(
    probs: np.ndarray, confident: np.ndarray, labelled: Labelled, typical: np.ndarray, s: AuditSettings
) -> tuple[list[tuple[float, int, np.ndarray]], np.ndarray]:
    """Unlabelled regions confidently of an object class: ((score, class, region) list, grown pixels per annotation).

    A region within `s.touch` px of an annotation of its own class is that annotation's missed edge (it counts
    towards the annotation's loose boundary), not a missing object. The score is the region's mean probability of
    its class times a size prior, area / (area + typical / 4) with `typical` the class's mean annotation size:
    models' false positives are specks, a forgotten object is object-sized.
    """
    grown = np.zeros(len(labelled.annotations), np.int64)
    # confident *and* predicted (the argmax): a class barely over a low threshold where the background is barely
    # under its own is no object
    candidate = ((confident > 0) & (probs.argmax(0) == confident) & (labelled.mask == 0)).astype(np.uint8)
    n, components, stats, _ = cv2.connectedComponentsWithStats(candidate, connectivity=8)
    kernel = np.ones((2 * s.touch + 1, 2 * s.touch + 1), np.uint8)
    found = []
    for c in range(1, n):
        if stats[c, cv2.CC_STAT_AREA] < s.min_pixels:
            continue
        region = components == c
        k = int(np.bincount(confident[region]).argmax())
        near = labelled.owner[cv2.dilate(region.astype(np.uint8), kernel).astype(bool)]
        same = [i for i in np.unique(near) if i >= 0 and labelled.annotations[i][1] == k]
        if same:
            grown[same[0]] += int(region.sum())
            continue
        area = float(stats[c, cv2.CC_STAT_AREA])
        size_prior = area / (area + typical[k] / 4) if typical[k] else 1.0
        found.append((float(probs[k][region].mean()) * size_prior, k, region))
    return found, grown
