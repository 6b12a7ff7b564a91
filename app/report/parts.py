"""Sections that the run, fold-group and comparison pages share: the class table, the image gallery, the
list of every validation image's score, the weakest-classes summary."""

from dataclasses import replace

import numpy as np

from app.plots import palette
from app.report import page
from app.report.page import Raw, bar, esc, number
from app.report.rundata import image_scores
from app.report.thumbs import Pick, strip

PICKS = 12  # worst and best images shown
PER_CLASS = 4  # images shown for each of the weakest classes
MAX_LISTED = 2000  # validation images listed with their score (text only: about 150 bytes each)


def weakest_rows(rows: list[dict], k: int = 3) -> list[dict]:
    """The k classes (background aside) with the lowest IoU among those in the validation truth.

    Ties (often many classes at IoU 0 early in training) go to the class with the most validation pixels: the
    failure that costs the most.
    """
    present = [r for r in rows if r["id"] > 0 and r["iou"] is not None and r["valid_share"] > 0]
    return sorted(present, key=lambda r: (r["iou"], -r["valid_share"]))[:k]


def weakest(rows: list[dict], k: int = 3) -> str:
    """One sentence naming the k classes with the lowest IoU and where their pixels went."""
    scored = weakest_rows(rows, k)
    if not scored:
        return ""
    parts = [
        f"<b>{esc(r['name'])}</b> (IoU {number(r['iou'], 3)}"
        + (f"; its pixels go to {esc(r['confused_with'])}" if r["confused_with"] else "")
        + ")"
        for r in scored
    ]
    absent = [r["name"] for r in rows if r["id"] > 0 and r["valid_share"] == 0]
    more = f" Absent from the validation truth: {esc(', '.join(absent))} (IoU 0 where predicted anyway)."
    return f"<p>Weakest classes: {'; '.join(parts)}.{more if absent else ''}</p>"


def class_table(rows: list[dict], title: str = "Per-class results") -> str:
    """IoU, pixel shares, precision, recall and the main confusion per class, worst IoU first."""
    order = sorted(rows, key=lambda r: (r["iou"] is None, r["iou"] if r["iou"] is not None else 0, -r["valid_share"]))
    top_share = max([r["valid_share"] for r in rows if r["id"] > 0] + [1e-9])
    body = [
        (
            r["id"],
            r["name"],
            bar(r["iou"], number(r["iou"]), bad=r["iou"] is not None and r["iou"] < 0.3),
            _share(r["train_share"], top_share),
            _share(r["valid_share"], top_share),
            bar(r["precision"], number(r["precision"], 3)),
            bar(r["recall"], number(r["recall"], 3)),
            r["confused_with"],
        )
        for r in order
    ]
    headers = (
        "id",
        "class",
        "IoU",
        "train pixels",
        "valid pixels",
        "precision",
        "recall",
        "true pixels mostly predicted as",
    )
    sub = (
        "Sorted by IoU, worst first; red bars: IoU under 0.3. Pixel shares are of all labelled pixels (bars scaled to "
        "the largest non-background class); precision and recall per pixel; the last column is where the class's "
        "true pixels went most often, when not to itself."
    )
    return page.section(title, weakest(rows), page.table(headers, body, numeric=(True,)), anchor="classes", sub=sub)


def _share(value: float | None, top: float) -> Raw:
    if value is None:
        return Raw("–")
    text = "0" if value == 0 else "<0.01%" if value < 1e-4 else f"{100 * value:.2f}%"
    return bar(min(value, top), text, scale=top)


def picks(per_image: dict[str, np.ndarray], classes: list[str], label: str = "") -> list[Pick]:
    """Every validation image with its mIoU and a note naming its worst classes (those in its truth)."""
    miou, iou = image_scores(per_image)
    truth = per_image["truth"]
    out = []
    for k, (image, mask) in enumerate(zip(per_image["image"].tolist(), per_image["mask"].tolist())):
        if not np.isfinite(miou[k]):
            continue  # no labelled pixel: nothing to score
        present = [c for c in np.argsort(np.nan_to_num(iou[k], nan=2.0)) if truth[k, c] > 0 and c > 0][:3]
        note = (
            "classes here, worst first: " + ", ".join(f"{classes[c]} {iou[k, c]:.2f}" for c in present)
            if present
            else ""
        )
        prediction = per_image["prediction"][k] if "prediction" in per_image else None
        out.append(Pick(image, mask, float(miou[k]), note, label, prediction))
    return out


def gallery(title: str, groups: list[tuple[str, list[Pick]]], classes: list[str], sub: str = "") -> str:
    """Cards of image | ground truth | prediction with the image id, score and note, under one legend; `groups`
    are (heading HTML, picks), the heading "" for none."""
    colours = palette(len(classes))
    parts, shown, lost = [], set(), []
    for heading, chosen in groups:
        cards = [(p, *strip(p, colours)) for p in chosen]
        lost += [p.image for p, rgb, _ in cards if rgb is None]
        shown |= {i for _, _, ids in cards for i in ids}
        html = "".join(_card(p, rgb) for p, rgb, _ in cards if rgb is not None)
        parts.append((f"<h3>{heading}</h3>" if heading else "") + f'<div class="cards">{html}</div>')
    note = f'<p class="note">{len(lost)} image(s) no longer found, e.g. {esc(lost[0])}</p>' if lost else ""
    head = "<p class=sub>Each card: image | ground truth | prediction.</p>"
    return page.section(title, head, page.legend(classes, colours, sorted(shown)), *parts, note, sub=sub)


def _card(p: Pick, rgb: np.ndarray) -> str:
    caption = f"<b>mIoU {p.score:.3f}</b> {esc(p.label)} · {esc(_short(p.image))}"
    caption += f"<br>{esc(p.note)}" if p.note else ""
    return f'<div class="card">{page.img(page.jpeg_uri(rgb), p.image, css="thumb")}<p>{caption}</p></div>'


def worst_and_best(all_picks: list[Pick], classes: list[str], what: str) -> str:
    order = sorted(all_picks, key=lambda p: p.score)
    shown = min(PICKS, -(-len(order) // 2))  # a small validation set: its worse half, then its better half
    worst, best = order[:shown], order[shown:][::-1][:PICKS]
    sub = f"{len(order)} {what} images scored by their own mIoU (over the classes in their truth or prediction)."
    return gallery(f"The {len(worst)} worst {what} images", [("", worst)], classes, sub) + gallery(
        f"The {len(best)} best {what} images", [("", best)], classes
    )


def weak_class_images(rows: list[dict], per_image: dict[str, np.ndarray], classes: list[str], k: int = 3) -> str:
    """For each of the k weakest classes, the images holding most of its pixels where its IoU is lowest."""
    _, iou = image_scores(per_image)
    by_image = {p.image: p for p in picks(per_image, classes)}
    weak = weakest_rows(rows, k)
    groups = []
    for r in weak:
        c, truth = r["id"], per_image["truth"]
        holding = [i for i in np.argsort(-truth[:, c], kind="stable") if truth[i, c] > 0]
        chosen = sorted(holding[: PER_CLASS * 3], key=lambda i: np.nan_to_num(iou[i, c]))[:PER_CLASS]
        cards = []
        for i in chosen:
            share = 100 * truth[i, c] / truth[i].sum()
            note = f"{r['name']} here: IoU {np.nan_to_num(iou[i, c]):.2f}, {share:.1f}% of the image"
            cards.append(replace(by_image[str(per_image["image"][i])], note=note))
        where = f", its pixels mostly go to {r['confused_with']}" if r["confused_with"] else ""
        groups.append((f"{esc(r['name'])} (IoU {number(r['iou'], 3)}{esc(where)})", cards))
    if not any(cards for _, cards in groups):
        return ""
    sub = (
        f"For each of the {len(weak)} classes with the lowest IoU: the validation images with the most of its pixels "
        "where it scores worst."
    )
    return gallery("Where the weakest classes fail", groups, classes, sub)


def score_list(all_picks: list[Pick]) -> str:
    """Every validation image's score, worst first, folded away (a <details> element: no script)."""
    order = sorted(all_picks, key=lambda p: p.score)[:MAX_LISTED]
    rows = [(f"{p.score:.4f}", p.label, _short(p.image), p.note) for p in order]
    more = f" (the {MAX_LISTED} worst)" if len(all_picks) > MAX_LISTED else ""
    table = page.table(("mIoU", "", "image", "classes in it, worst IoU first"), rows, numeric=(True,))
    return page.section(
        "Every validation image",
        f"<details><summary>{len(order)} images{more}, worst first (click to open)</summary>{table}</details>",
    )


def _short(path: str) -> str:
    """The last two parts of an image path (its folder and name): enough to find it, short enough to read."""
    parts = str(path).replace("\\", "/").split("/")
    return "/".join(parts[-2:])


def missing_note(what: str) -> str:
    return f'<p class="note">{esc(what)}</p>'
