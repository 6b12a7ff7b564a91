"""Image files that cannot be decoded: found before prediction starts, not as a traceback halfway through.

PIL opens a damaged file lazily: the header reads fine and the error (`image file is truncated`, `cannot
identify image file`) comes when the pixels are decoded inside a batch; OpenCV returns None or, for a
truncated JPEG, half an image without raising. `screen_images` decodes every file fully with PIL (what
fastai's loaders use) and either refuses with every bad file named or leaves them out with a list.
Training data is screened by `trash data check` (app/check.py), which `trash fit` runs first.
"""

from pathlib import Path

from app.errors import TrashError


def image_problem(path: str | Path) -> str:
    """Why `path` cannot be decoded completely, or "" when it can."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()  # decodes every pixel: a truncated file raises here, not at open
    except (OSError, SyntaxError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
        return str(e) or type(e).__name__
    return ""


def screen_images(pairs: list[tuple[str, Path]], skip: bool = False) -> tuple[list[tuple[str, Path]], list[str]]:
    """Checks every (image_id, path) pair of `predict.list_images` before any model runs.

    Args:
        pairs: (image_id, path) pairs.
        skip: Leave unreadable images out instead of refusing.

    Returns:
        (readable pairs, one message per image left out).

    Raises:
        TrashError: Unreadable images and `skip` is False (every one named), or none readable at all.
    """
    bad = {image_id: problem for image_id, path in pairs if (problem := image_problem(path))}
    messages = [f"{image_id}: cannot be decoded ({problem})" for image_id, problem in bad.items()]
    kept = [(image_id, path) for image_id, path in pairs if image_id not in bad]
    if bad and (not skip or not kept):
        more = f" and {len(messages) - 10} more" if len(messages) > 10 else ""
        raise TrashError(
            f"{len(bad)} of {len(pairs)} image(s) cannot be decoded (corrupt or truncated files); replace or "
            "remove them:\n" + "\n".join(messages[:10]) + more
        )
    return kept, messages


def screen_listed(images: str | Path, data: str | Path | None = None) -> None:
    """`screen_images` over what `predict.list_images(images, data)` lists, refusing unreadable images.

    A folder or json that cannot be listed is left to the command itself, which reports it after the models.
    """
    from app.predict import list_images

    try:
        pairs = list_images(images, data)
    except TrashError:
        return
    screen_images(pairs)
