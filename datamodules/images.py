"""Reading one dataset row's files: never outside the dataset root, never raising past the reader;
and the DataModule every reader is served by (`ReaderDataModule`).

Every problem becomes a `RowError` whose message starts with a short reason ("image_missing: ...").
The readers store that message in `Sample.error`; the sample is then scored as a failure and
counted, never dropped. The reasons (the part before the first colon):

    image_missing       no image: the file does not exist, or a parquet row holds none
    image_empty         the image has 0 bytes or 0 pixels
    image_unreadable    the image cannot be read or fully decoded (corrupt, truncated, unknown format)
    path_escapes_root   an image or annotation path resolves (symlinks followed) outside the dataset
    annotation_missing  no annotation file for the image
    annotation_invalid  the annotation cannot be decoded or lacks a key or has a wrong type
    text_empty          the query is an empty or blank string
    polygon_invalid     a polygon without points, or with points that are not finite x, y numbers
    gt_size_mismatch    a stored ground-truth mask whose size is not the image's
    row_unreadable      the parquet row group cannot be read
"""
from __future__ import annotations

import functools
import os
import stat
from pathlib import Path

import lightning as L
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from rescue_eval.core.types import decode_image_bytes


class RowError(Exception):
    """A row that cannot be used; the message ("<reason>: <detail>") becomes `Sample.error`."""


def describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


def real_folder(folder: Path) -> Path:
    """`folder` with every symlink resolved: the boundary that `read_inside` checks against."""
    return Path(os.path.realpath(folder))


def read_inside(path: Path, boundary: Path, missing: str, unreadable: str) -> bytes:
    """The bytes of `path`, which must resolve inside `boundary` (a `real_folder`).

    A dataset must not make the harness read a file outside it (a symlink to ~/.ssh, a parquet
    image path "../../etc/passwd"): the bytes would be sent to model servers and written to
    overlays. `missing` and `unreadable` are the reasons for a file that is absent or unreadable.

    Six system calls for a file, where os.path.realpath and Path.read_bytes took about fifteen:
    each releases the GIL, and on a busy rank taking it back can cost a thread switch
    (benchmarks/RESULTS.md, item 3).
    """
    try:
        real = resolved(path)  # a symlink loop stays unresolved and fails to read below
    except ValueError as exc:  # a NUL byte in a path taken from a parquet cell
        raise RowError(f"{unreadable}: {describe(exc)}") from exc
    if not real.is_relative_to(boundary):
        raise RowError(f"path_escapes_root: {path} resolves to {real}, outside {boundary}")
    try:
        return read_file(real)
    except FileNotFoundError as exc:
        raise RowError(f"{missing}: {path} does not exist") from exc
    except OSError as exc:  # a folder, a symlink loop, no permission
        raise RowError(f"{unreadable}: {describe(exc)}") from exc


def resolved(path: Path) -> Path:
    """`path` with every symlink resolved, as os.path.realpath gives it: one lstat for a file that
    is not a link, whose folder was resolved before (a dataset's files share a few folders; a
    folder is resolved once per process, so the check is against the dataset's folders as they
    were when first read). A NUL byte in the path raises ValueError, as realpath does."""
    if path.name not in ("", ".", "..") and not _is_link(path):
        return Path(_real_folder(str(path.parent)), path.name)
    return Path(os.path.realpath(path))


def _is_link(path: Path) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:  # missing, or a folder on the way that is not one: read_file says which
        return False


@functools.lru_cache(maxsize=4096)
def _real_folder(folder: str) -> str:
    return os.path.realpath(folder)


def read_file(path: Path) -> bytes:
    """The whole file, in one read of its size (and one more that finds its end)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = [os.read(fd, os.fstat(fd).st_size + 1)]
        while chunks[-1]:  # a file that grows while it is read is read to its end
            chunks.append(os.read(fd, 1 << 20))
        return b"".join(chunks)
    finally:
        os.close(fd)


def decode_checked(image_bytes: bytes) -> Image.Image:
    """The image exactly as the run decodes it (`Sample.decode_image`: RGB, EXIF orientation
    applied), so the ground truth drawn or checked at its size lines up with its pixels; a
    RowError with the reason when it cannot be read."""
    if not image_bytes:
        raise RowError("image_empty: the image has 0 bytes")
    try:
        image = decode_image_bytes(image_bytes)
    except Exception as exc:  # Pillow raises many types on corrupt data
        raise RowError(f"image_unreadable: {describe(exc)}") from exc
    if image.width == 0 or image.height == 0:
        raise RowError(f"image_empty: the image is {image.width}x{image.height} pixels")
    return image


class ReaderDataModule(L.LightningDataModule):
    """A DataModule around a reader (a Dataset class) and its arguments. `prepare_data` (rank 0)
    reads the index once, so a wrong root is one sentence before any model loads; `setup` (every
    rank) reads it into `self.dataset`."""

    def __init__(self, reader: type, *args):
        super().__init__()
        self.reader, self.args = reader, args
        self.dataset: Dataset | None = None

    def prepare_data(self) -> None:
        self.reader(*self.args)  # raises UsageError naming the fix

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is None:
            self.dataset = self.reader(*self.args)

    def predict_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(self.dataset, batch_size=1, collate_fn=list)
