"""The one image decoder of training, prediction and evaluation, and the images a command is asked to read.

`read_rgb` decodes every image `trash` looks at: OpenCV's IMREAD_COLOR, which applies the EXIF orientation
(as `trash data check` and the json's width/height assume), scales 16-bit images to 8 bits instead of clipping
them, turns grey into three channels and drops alpha. `image_size` gives the size it will decode to from the
header alone. PIL (fastai's own loader) applies no EXIF rotation and clips 16-bit greys to white, so neither
fastai's loaders nor prediction open image files themselves.

Damaged files: PIL opens them lazily and OpenCV returns half an image for a truncated JPEG without raising,
so `image_problem` decodes every file fully with PIL and `screen_images` refuses (or leaves out, with a list)
every file that cannot be decoded, before any model runs.
"""

from pathlib import Path

import numpy as np

from app.data.coco import load_coco
from app.errors import TrashError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
EXIF_ORIENTATION = 0x0112
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def read_rgb(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB pixels of an image file, EXIF orientation applied (see the module docstring).

    Raises:
        TrashError: The file is missing or cannot be decoded, naming it.
    """
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise TrashError(f"image {path} cannot be read (missing, corrupt or not an image)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) that `read_rgb(path)` returns, from the file's header (EXIF orientation applied)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = _orientation(image)
    except (OSError, SyntaxError, ValueError) as e:
        raise TrashError(f"image {path} cannot be read ({e})") from None
    return (width, height) if orientation in TRANSPOSING_ORIENTATIONS else (height, width)


def _orientation(image) -> int:
    try:
        return int(image.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # a corrupt EXIF block: OpenCV then ignores it too
        return 1


def image_problem(path: str | Path) -> str:
    """Why `path` cannot be decoded completely, or "" when it can."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()  # decodes every pixel: a truncated file raises here, not at open
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:  # UnidentifiedImageError: OSError
        return str(e) or type(e).__name__
    return ""


def screen_images(pairs: list[tuple[str, Path]], skip: bool = False) -> tuple[list[tuple[str, Path]], list[str]]:
    """Checks every (image_id, path) pair of `list_images` before any model runs.

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


def list_images(images: str | Path, data: str | Path | None = None) -> list[tuple[str, Path]]:
    """(image_id, path) pairs: the json's images in its order, or every image file in the folder, sorted.

    The image id is the file name relative to `images` (the json's file_name): what the submission, the masks
    folder and saved probabilities are named by.
    """
    root = Path(images)
    if not root.is_dir():
        raise TrashError(f"images folder not found: {images}")
    if data:
        pairs = [(im.file_name, root / im.file_name) for im in load_coco(data).images]
        if not pairs:
            raise TrashError(f"{data} lists no images (its 'images' list is empty): there is nothing to predict")
        missing = [str(p) for _, p in pairs if not p.is_file()]
        if missing:
            raise TrashError(f"{data}: {len(missing)} image file(s) not found under {images}, e.g. {missing[0]}")
        return pairs
    named = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    broken = [p.name for p in named if p.is_symlink() and not p.exists()]
    if broken:
        raise TrashError(
            f"{images}: {len(broken)} image link(s) point at nothing, e.g. {broken[0]}; fix or remove them"
        )
    files = [p for p in named if p.is_file()]
    if not files:
        raise TrashError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {images}{_nested_hint(root)}")
    return [(p.name, p) for p in files]


def _nested_hint(root: Path) -> str:
    """Where the images are when they sit one folder down (a COCO layout's images/): subfolders are not searched."""
    below = [p for p in root.glob("*/*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    if not below:
        return ""
    return f"; {len(below)} image(s) are in its subfolders (e.g. {below[0].relative_to(root)}), which are not searched"


def screen_listed(images: str | Path, data: str | Path | None = None) -> None:
    """`screen_images` over what `list_images(images, data)` lists, refusing unreadable images.

    A folder or json that cannot be listed is left to the command itself, which reports it after the models.
    """
    try:
        pairs = list_images(images, data)
    except TrashError:
        return
    screen_images(pairs)
