"""The competition's submission.csv: `image_id,PredictionString`, one 256x256 class mask per image, row-major.

The CSV is written to a temporary file and renamed into place only when every row is written, then read back
and compared row by row with what was written (the sha1 of each mask), so a submission on disk is complete and
says what the masks say.
"""

import csv
import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from app.atomic import atomic_open
from app.errors import TrashError

SUBMISSION_SIZE = 256  # the competition's submission masks are 256x256
HEADER = ["image_id", "PredictionString"]


def submission_mask(probs: torch.Tensor) -> np.ndarray:
    """The (256, 256) uint8 class mask of the submission: probabilities area-averaged to 256x256, then argmax.

    Averaging probabilities before the argmax is better than nearest-resizing a mask.
    """
    small = F.interpolate(probs[None], size=(SUBMISSION_SIZE, SUBMISSION_SIZE), mode="area")[0]
    return small.argmax(0).numpy().astype(np.uint8 if probs.shape[0] <= 256 else np.uint16)


class SubmissionWriter:
    """Writes the CSV row by row inside a `with` block; on leaving it the file is in place and checked.

    Args:
        path: submission.csv; the previous file stays as it was until the block succeeds.
        n_classes: Class ids must lie in 0..n_classes-1 when it is read back.
    """

    def __init__(self, path: Path, n_classes: int):
        self.path, self.n_classes, self.written = Path(path), n_classes, []

    def __enter__(self) -> "SubmissionWriter":
        self._open = atomic_open(self.path, "w", newline="")
        self._writer = csv.writer(self._open.__enter__())
        self._writer.writerow(HEADER)
        return self

    def add(self, image_id: str, probs: torch.Tensor) -> None:
        small = submission_mask(probs)
        self._writer.writerow([image_id, " ".join(map(str, small.flatten().tolist()))])
        self.written.append((image_id, hashlib.sha1(small.tobytes()).hexdigest()))

    def __exit__(self, *exc) -> bool:
        self._open.__exit__(*exc)  # renames into place only without an exception
        if exc[0] is None:
            check_submission(self.path, self.written, self.n_classes)
        return False


def read_submission(path: str | Path, n_classes: int | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """(image_id, (256, 256) uint8 mask) per row of a submission CSV; TrashError on a malformed row."""
    csv.field_size_limit(1 << 24)
    with Path(path).open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != HEADER:
            raise TrashError(f"{path}: header {header}, expected image_id,PredictionString")
        for line, row in enumerate(reader, start=2):
            yield row[0] if row else "", _row_mask(path, line, row, n_classes)


def _row_mask(path, line: int, row: list[str], n_classes: int | None) -> np.ndarray:
    if len(row) != 2:
        raise TrashError(f"{path} line {line}: {len(row)} fields, expected 2")
    try:
        values = np.array(row[1].split(), dtype=np.int64)
    except ValueError:
        raise TrashError(f"{path} line {line} ({row[0]}): PredictionString is not integers") from None
    if values.size != SUBMISSION_SIZE * SUBMISSION_SIZE:
        raise TrashError(f"{path} line {line} ({row[0]}): {values.size} values, expected 256*256")
    if values.min() < 0 or (n_classes is not None and values.max() >= n_classes):
        raise TrashError(f"{path} line {line} ({row[0]}): class ids outside 0..{(n_classes or 1) - 1}")
    dtype = np.uint8 if (n_classes or 0) <= 256 and values.max() < 256 else np.uint16  # as submission_mask wrote it
    return values.reshape(SUBMISSION_SIZE, SUBMISSION_SIZE).astype(dtype)


def check_submission(path: Path, expected: list[tuple[str, str]], n_classes: int) -> None:
    """Reads the CSV back: the same image ids in the same order, each row decoding to the mask written.

    Args:
        expected: (image_id, sha1 of the 256x256 mask bytes) in the order written.
    """
    rows = list(read_submission(path, n_classes))
    if [r[0] for r in rows] != [e[0] for e in expected]:
        raise TrashError(f"{path}: image ids read back differ from those written")
    for (image_id, mask), (_, digest) in zip(rows, expected):
        if hashlib.sha1(mask.tobytes()).hexdigest() != digest:
            raise TrashError(f"{path}: the row of {image_id} does not read back into the mask written")
