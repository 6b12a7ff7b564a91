"""Atomic file writes: a temporary file in the target's folder, fsync, then one rename over the target.

A reader (or a resumed run) therefore sees either the previous complete file or the new complete one, never
half a file: a process killed mid-write, a full disk or any other failing write leaves the previous file as
it was and at most a hidden `.<name>.*.tmp*` file, which the next successful write of that name cleans up.
torch's `torch.save`, fastai's `learn.save`/`learn.export` and numpy's `savez` write in place, hence this.

A failed write raises `WriteFailed` (a TrashError, exit code 4) naming the file and the OS's reason.
"""

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.errors import WRITE_FAILED, TrashError

#: what torch.save raises when its zip writer cannot write ("[enforce fail at inline_container.cc] ...")
TORCH_WRITE_ERRORS = (RuntimeError,)


class WriteFailed(TrashError):
    """An output file could not be written; the previous version of it (if any) is intact."""

    def __init__(self, path: Path, error: Exception):
        self.errno = getattr(error, "errno", None)
        reason = getattr(error, "strerror", None) or str(error).splitlines()[0]
        full = self.errno in (errno.ENOSPC, errno.EDQUOT) or _no_space_left(path.parent)
        hint = " (disk full: free some space and run again)" if full else ""
        super().__init__(f"could not write {path}: {reason}{hint}; the previous file, if any, is intact", WRITE_FAILED)


@contextmanager
def atomic_path(path: str | Path, write_errors: tuple[type[Exception], ...] = ()) -> Iterator[Path]:
    """Yields a temporary path beside `path`; when the block succeeds it is fsynced and renamed over `path`.

    The temporary name keeps `path`'s suffix, so writers that pick a format by extension (savefig,
    cv2.imwrite) still work. On any exception the temporary file is removed and `path` is untouched;
    an OSError, or one of `write_errors` raised in the block, becomes `WriteFailed`.

    Args:
        path: The file to (re)place.
        write_errors: Other exception types the writer raises for a failed write (torch.save raises
            RuntimeError from its zip writer when the disk fills).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        yield Path(tmp)
        _fsync_file(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except (OSError, *write_errors) as e:
        raise WriteFailed(path, e) from e
    finally:
        Path(tmp).unlink(missing_ok=True)


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs):
    """`open(path, mode)` on a temporary file that replaces `path` when the block succeeds (see atomic_path)."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


def write_text(path: str | Path, text: str) -> Path:
    """Writes `text` to `path` atomically."""
    with atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)


def torch_save(obj, path: str | Path) -> Path:
    """`torch.save(obj, path)`, atomically."""
    import torch

    with atomic_path(path, write_errors=TORCH_WRITE_ERRORS) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file: the checkpoint index and the export manifest record it for what was written."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _fsync_file(path: str | Path) -> None:
    # fsync is per file, not per descriptor: flushing through a new descriptor covers writers that closed theirs.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Makes the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _no_space_left(folder: Path) -> bool:
    import shutil

    try:
        return shutil.disk_usage(folder).free == 0
    except OSError:
        return False


def _remove_stale(path: Path) -> None:
    """Temporary files an earlier, killed writer of `path` left behind (its own process is gone)."""
    for stale in path.parent.glob(f".{path.name}.*.tmp{path.suffix}"):
        stale.unlink(missing_ok=True)


def append_csv_row(path: str | Path, fields: list[str], row: dict) -> Path:
    """Appends one row to a CSV (header first when the file is new) by rewriting it atomically.

    Appending in place would leave half a row behind a kill or a full disk; the files this is for
    (history.csv, class_weights.csv: one row per epoch) are small enough to rewrite.
    """
    import csv
    import io

    path = Path(path)
    old = ""
    if path.exists():
        with path.open(newline="") as f:  # newline="": keep csv's \r\n line ends as they are
            old = f.read()
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    if not old:
        writer.writeheader()
    writer.writerow(row)
    with atomic_open(path, "w", newline="") as f:
        f.write(old + buffer.getvalue())
    return path
