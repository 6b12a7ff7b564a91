"""Every file `trash` writes goes through here: a temporary file in the target's folder, fsync, one rename.

A reader (or a resumed run) therefore sees either the previous complete file or the new complete one, never
half a file: a process killed mid-write, a full disk or any other failing write leaves the previous file as
it was and at most a hidden `.<name>.*.tmp*` file, which the next successful write of that name cleans up.
torch's `torch.save`, fastai's `learn.export`, numpy's `save`, OpenCV's `imwrite` and matplotlib's `savefig`
write in place, hence the wrappers below.

A failed write (no space, no permission, a read-only folder) raises `WriteFailed` (exit code 4) naming the file.
"""

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.errors import WriteFailed

#: what torch.save raises when its zip writer cannot write ("[enforce fail at inline_container.cc] ...")
TORCH_WRITE_ERRORS = (RuntimeError,)


@contextmanager
def atomic_path(path: str | Path, write_errors: tuple[type[Exception], ...] = (), sync: bool = True) -> Iterator[Path]:
    """Yields a temporary path beside `path`; when the block succeeds it is fsynced and renamed over `path`.

    The temporary name keeps `path`'s suffix, so writers that pick a format by extension (savefig,
    cv2.imwrite) still work. On any exception the temporary file is removed and `path` is untouched;
    an OSError, or one of `write_errors` raised in the block, becomes `WriteFailed`.

    Args:
        path: The file to (re)place.
        write_errors: Other exception types the writer raises for a failed write (torch.save raises
            RuntimeError from its zip writer when the disk fills).
        sync: fsync file and folder (durable across a power loss) and clear stale temporaries of `path`. False
            for caches that can be made again (thousands of small masks: fsyncs and folder scans would cost
            more than the writes); the rename still keeps half-written files out.
    """
    path = Path(path)
    tmp = _temporary(path, clean=sync)
    try:
        yield tmp
        if sync:
            _fsync_file(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files
        os.replace(tmp, path)
        if sync:
            _fsync_dir(path.parent)
    except (OSError, *write_errors) as e:
        raise WriteFailed(path, e) from e
    finally:
        tmp.unlink(missing_ok=True)


def _temporary(path: Path, clean: bool = True) -> Path:
    """An empty hidden file beside `path` (its folder made first); WriteFailed when the folder is not writable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if clean:
            _remove_stale(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    except OSError as e:
        raise WriteFailed(path, e) from e
    os.close(fd)
    return Path(tmp)


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs):
    """`open(path, mode)` on a temporary file that replaces `path` when the block succeeds (see atomic_path)."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


def make_dir(folder: str | Path) -> Path:
    """`mkdir -p`, with a folder that cannot be made reported as WriteFailed (exit 4), not a traceback."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteFailed(folder, e) from e
    return folder


def write_text(path: str | Path, text: str) -> Path:
    """Writes `text` to `path` atomically."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(path)


def write_json(path: str | Path, payload) -> Path:
    """Writes `payload` as indented json atomically (values json cannot hold are written as str)."""
    return write_text(path, json.dumps(payload, indent=2, default=str) + "\n")


def torch_save(obj, path: str | Path) -> Path:
    """`torch.save(obj, path)`, atomically."""
    import torch

    with atomic_path(path, write_errors=TORCH_WRITE_ERRORS) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def write_image(path: str | Path, array, params: tuple = (), sync: bool = True) -> Path:
    """`cv2.imwrite` (format by suffix: PNG masks, JPEG overlays; `params` as OpenCV's), atomically.

    Encoded in memory, written by Python: `cv2.imwrite` on a full disk can return True with the file cut short
    (a truncated mask, exit 0); Python's write raises, and that becomes WriteFailed.
    """
    import cv2

    ok, encoded = cv2.imencode(Path(path).suffix, array, list(params))
    if not ok:
        raise OSError(f"OpenCV could not encode a {Path(path).suffix} image")
    with atomic_path(path, sync=sync) as tmp:
        tmp.write_bytes(encoded.tobytes())
    return Path(path)


def save_npy(path: str | Path, array, sync: bool = True) -> Path:
    """`numpy.save`, atomically."""
    import numpy as np

    with atomic_path(path, sync=sync) as tmp, open(tmp, "wb") as f:
        np.save(f, array)
    return Path(path)


def savez(path: str | Path, **arrays) -> Path:
    """`numpy.savez_compressed`, atomically."""
    import numpy as np

    with atomic_open(path, "wb") as f:
        np.savez_compressed(f, **arrays)
    return Path(path)


def savefig(fig, path: str | Path, **kwargs) -> Path:
    """`fig.savefig(path)` (a matplotlib Figure), atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, **kwargs)
    return Path(path)


def copy_file(source: str | Path, path: str | Path) -> Path:
    """Copies `source` to `path` (with its modification time), atomically."""
    with atomic_path(path) as tmp:
        shutil.copy2(source, tmp)
    return Path(path)


def sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file: the checkpoint index and the export manifest record it for what was written."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


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


def _remove_stale(path: Path) -> None:
    """Temporary files an earlier, killed writer of `path` left behind (its own process is gone)."""
    for stale in path.parent.glob(f".{path.name}.*.tmp{path.suffix}"):
        stale.unlink(missing_ok=True)
