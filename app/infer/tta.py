"""Test-time augmentation for segmentation: each view's prediction is inverted before averaging.

fastai's `Learner.tta` averages predictions under random training transforms without un-flipping
masks, so it cannot be used for segmentation.

A `View` is a rescale, then a rotation by `k` quarter turns (`torch.rot90` over H, W), then flips. The model
sees `view.apply(x)`; its softmax probabilities go through `view.invert(probs, size)` (un-flip, un-rotate,
resize back to the input's size), and the views are averaged in probability space.

View sets by name, as in a `--tta-views` string (`parse_views`):

* `identity`: the plain prediction.
* `flip`: identity, h, v, hv.
* `d4`: the 8 dihedral views: identity, rot90, rot180, rot270 and each of them followed by a horizontal flip.
* `ms`: scales 0.75, 1.0, 1.25 of the input size (bilinear, `align_corners=False`, both ways).
* `A+B`: the product, e.g. `d4+ms` (24 views: every dihedral view at every scale) or `flip+ms` (12).
  At most one geometric set (identity, flip, d4) and at most one scale set (ms).

Averaging over a view set that is a group (flip, d4) makes the prediction equivariant under that group,
whatever the model: predicting a flipped input gives the flipped prediction. Bilinear resizing with
`align_corners=False` commutes with flips and quarter turns, so adding `ms` keeps that property.
"""

from collections.abc import Iterable
from dataclasses import dataclass

from app.errors import TrashError
from app.registry import Registry

# Views as the NCHW dims they flip; every flip is its own inverse.
VIEWS: dict[str, tuple[int, ...]] = {"identity": (), "h": (3,), "v": (2,), "hv": (2, 3)}
FLIPS = ("identity", "h", "v", "hv")
SCALES = (0.75, 1.0, 1.25)


def _flip(x, dims: tuple[int, ...]):
    return x.flip(dims) if dims else x


def _resize(x, size: tuple[int, int]):
    import torch.nn.functional as F  # torch is imported where tensors are, so `trash --help` stays instant

    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _scaled(n: int, scale: float, multiple: int) -> int:
    """`n * scale` to the nearest multiple of `multiple` (halves up), at least one `multiple`."""
    return max(multiple, int(n * scale / multiple + 0.5) * multiple)


@dataclass(frozen=True)
class View:
    """One TTA view: resize by `scale`, rotate `k` quarter turns over (H, W), then flip `flips` (NCHW dims).

    Args:
        name: Label for reports, e.g. "rot90_h" or "h@0.75".
        k: Quarter turns, as `torch.rot90(x, k, dims=(2, 3))`; 1 and 3 swap H and W.
        flips: NCHW dims flipped after the rotation.
        scale: Input size factor. 1.0 never resizes; other scales round each side to the nearest multiple of
            `multiple` (the model's output stride: 32 for timm encoders), so 1.0 and another scale can coincide
            on small inputs.
        multiple: See `scale`.
    """

    name: str
    k: int = 0
    flips: tuple[int, ...] = ()
    scale: float = 1.0
    multiple: int = 32

    def size(self, h: int, w: int) -> tuple[int, int]:
        """(H, W) the model sees for an (h, w) input."""
        if self.scale != 1.0:
            h, w = _scaled(h, self.scale, self.multiple), _scaled(w, self.scale, self.multiple)
        return (w, h) if self.k % 2 else (h, w)

    def apply(self, x):
        """The model input for this view of the NCHW batch `x`."""
        import torch

        if self.scale != 1.0:
            h, w = x.shape[-2:]
            x = _resize(x, (_scaled(h, self.scale, self.multiple), _scaled(w, self.scale, self.multiple)))
        if self.k % 4:
            x = torch.rot90(x, self.k, dims=(2, 3))
        return _flip(x, self.flips)

    def invert(self, probs, size: tuple[int, int] | None = None):
        """Per-pixel outputs (probabilities) of `apply(x)` back in `x`'s frame; `size` is x's (H, W).

        Without `size`, a rescaled view is only un-flipped and un-rotated (left at the scaled size).
        """
        import torch

        probs = _flip(probs, self.flips)
        if self.k % 4:
            probs = torch.rot90(probs, -self.k, dims=(2, 3))
        return _resize(probs, tuple(size)) if size is not None else probs


def _scaled_view(view: View, scale: float, multiple: int) -> View:
    name = view.name if scale == 1.0 else f"{view.name}@{scale:g}"
    return View(name, view.k, view.flips, scale, multiple)


_FLIP_SET = tuple(View(name, flips=dims) for name, dims in VIEWS.items())
_ROTATIONS = tuple(View(f"rot{90 * k}" if k else "identity", k=k) for k in range(4))
_D4_SET = _ROTATIONS + tuple(View("h" if r.k == 0 else f"{r.name}_h", k=r.k, flips=(3,)) for r in _ROTATIONS)


@dataclass(frozen=True)
class ViewSet:
    """A named set of TTA views: geometric views (at scale 1), or scales (of the identity view)."""

    help: str
    views: tuple[View, ...] = ()
    scales: tuple[float, ...] = ()


VIEW_SETS: Registry[ViewSet] = Registry(
    "TTA view set",
    {
        "identity": ViewSet("the plain prediction", views=(View("identity"),)),
        "flip": ViewSet("identity, h, v, hv", views=_FLIP_SET),
        "d4": ViewSet("the 8 dihedral views", views=_D4_SET),
        "ms": ViewSet("scales 0.75, 1, 1.25", scales=SCALES),
    },
)
# Single views by name, for the tuple-of-names API (`predict_probs(model, x, FLIPS)`).
_NAMED_VIEWS: dict[str, View] = {v.name: v for v in _FLIP_SET + _D4_SET}


def parse_views(spec: str, multiple: int = 32) -> tuple[View, ...]:
    """The views of a `--tta-views` spec: a VIEW_SETS name, or a product such as `d4+ms`.

    Args:
        spec: Set names joined by "+", case-insensitive; at most one geometric set and one scale set.
        multiple: Rescaled sides are rounded to a multiple of this (the model's output stride).

    Raises:
        TrashError: unknown, empty or repeated set names, naming the valid ones.
    """
    valid = f"valid: {VIEW_SETS.names()}, joined by '+' (e.g. d4+ms)"
    names = [part.strip().lower() for part in spec.split("+")]
    unknown = [n for n in names if n not in VIEW_SETS]
    if unknown or not spec.strip():
        raise TrashError(f"unknown TTA view set {', '.join(map(repr, unknown or [spec]))} in {spec!r}; {valid}")
    sets = [VIEW_SETS[n] for n in names]
    geometric, scales = [s for s in sets if s.views], [s for s in sets if s.scales]
    if len(geometric) > 1 or len(scales) > 1:
        kinds = ", ".join(n for n in VIEW_SETS if VIEW_SETS[n].views)
        raise TrashError(f"TTA views {spec!r}: at most one of {kinds} and one scale set; {valid}")
    views = geometric[0].views if geometric else VIEW_SETS["identity"].views
    factors = scales[0].scales if scales else (1.0,)
    return tuple(_scaled_view(v, s, multiple) for s in factors for v in views)


def _resolve(views: str | Iterable[str | View]) -> tuple[View, ...]:
    if isinstance(views, str):
        return parse_views(views)
    resolved = []
    for v in views:
        if isinstance(v, View):
            resolved.append(v)
        elif v in _NAMED_VIEWS:
            resolved.append(_NAMED_VIEWS[v])
        else:
            raise TrashError(f"unknown TTA view {v!r}; valid: {', '.join(_NAMED_VIEWS)} (or View objects)")
    if not resolved:
        raise TrashError("no TTA views given; use at least ('identity',)")
    return tuple(resolved)


def predict_probs(model, x, views: str | Iterable[str | View] = ("identity",), batch_views: bool | None = None):
    """Class probabilities (N, C, H, W), float32, averaged over `views`, each inverted back to the input frame.

    Args:
        model: NCHW images to NCHW logits of the same size.
        x: The NCHW batch.
        views: View names (`FLIPS`, "rot90", "rot90_h", ...), `View` objects (from `parse_views`), or a spec
            string such as "d4+ms".
        batch_views: True: one forward per output shape with all those views concatenated (N * k images; rot90
            of a non-square input and each scale are separate shapes). False: one forward per view. None: True
            on CUDA, False otherwise (on CPU one batch of 4 flips cost 5.2x a plain forward, 4 forwards 2.9x).
    """
    import torch

    views = _resolve(views)
    if batch_views is None:
        batch_views = x.device.type == "cuda"
    size = tuple(x.shape[-2:])
    total = None
    with torch.inference_mode():
        for view, logits in _forwards(model, x, views, batch_views):
            probs = view.invert(torch.softmax(logits.float(), dim=1), size)
            total = probs if total is None else total + probs
    return total / len(views)


def _forwards(model, x, views: tuple[View, ...], batch_views: bool):
    """(view, logits) pairs, one forward at a time, so only one forward's logits are held."""
    if not batch_views:
        for view in views:
            yield view, model(view.apply(x))
        return
    import torch

    groups: dict[tuple[int, int], list[View]] = {}
    for view in views:
        groups.setdefault(view.size(*x.shape[-2:]), []).append(view)
    for group in groups.values():
        yield from zip(group, model(torch.cat([v.apply(x) for v in group])).split(x.shape[0]))
