"""ReasonSeg: LISA's folder format, Seg-Zero's parquet format, and the DataModule over both.

Rows are read lazily in `__getitem__`, because the distributed runner reads only its own
strided shard. A row that cannot be read never raises: it becomes a Sample with `error` set
(a short reason), so it is scored as a failure and counted, never dropped.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Literal

import cv2
import lightning as L
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset

from rescue_eval.errors import UsageError
from rescue_eval.types import IGNORE, Sample

PARQUET_COLUMNS = ("image", "text", "mask", "image_id", "ann_id")


class RowError(Exception):
    """A row that cannot be used; the message is the short reason stored in `Sample.error`."""


def check_fraction(fraction: float) -> None:
    if not 0.0 < fraction <= 1.0:
        raise UsageError(f"fraction must be in (0, 1], got {fraction}: pass e.g. --fraction 0.1 for a 10% subset.")


def select_fraction(n: int, fraction: float, seed: int) -> list[int]:
    """A deterministic random subset of range(n): the first max(1, round(fraction * n)) indices
    of a permutation seeded with `seed`, returned in sorted order."""
    check_fraction(fraction)
    keep = max(1, round(fraction * n))
    return sorted(int(i) for i in np.random.default_rng(seed).permutation(n)[:keep])


def lisa_mask(shapes: list[dict], height: int, width: int) -> np.ndarray:
    """Ground truth exactly as LISA's `get_mask_from_json`: uint8 HxW, 1 = target, 255 = ignore.

    Polygons are drawn largest area first (area measured on a filled-plus-outline temp mask), so a
    smaller polygon drawn later wins where they overlap; ties follow np.argsort as in LISA.
    """
    kept, areas = [], []
    for shape in shapes:
        if shape["label"].lower() == "flag":  # LISA: meaningless deprecated annotations
            continue
        polygon = np.array([shape["points"]], dtype=np.int32)
        area_mask = np.zeros((height, width), dtype=np.uint8)
        cv2.polylines(area_mask, polygon, True, 1, 1)
        cv2.fillPoly(area_mask, polygon, 1)
        areas.append(area_mask.sum())
        kept.append(shape)
    mask = np.zeros((height, width), dtype=np.uint8)
    for index in np.argsort(areas)[::-1]:
        value = IGNORE if "ignore" in kept[index]["label"].lower() else 1
        polygon = np.array([kept[index]["points"]], dtype=np.int32)
        cv2.polylines(mask, polygon, True, value, 1)
        cv2.fillPoly(mask, polygon, value)
    return mask


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


def _decoded_size(image_bytes: bytes) -> tuple[int, int]:
    """(height, width) after EXIF rotation: the ground truth is drawn on the rotated image."""
    try:
        with Image.open(io.BytesIO(image_bytes)) as image:
            image.load()  # decode fully, so truncated files fail here and not in a model
            rotated = ImageOps.exif_transpose(image)
            return rotated.height, rotated.width
    except Exception as exc:  # Pillow raises many types on corrupt data
        raise RowError(f"image_unreadable: {_reason(exc)}") from exc


def _read_lisa_json(path: Path) -> dict:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RowError(f"annotation_missing: {_reason(exc)}") from exc
    try:
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:  # some ReasonSeg files are cp1252, as LISA's loader expects
            text = raw.decode("cp1252")
        return json.loads(text)
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise RowError(f"annotation_invalid: {_reason(exc)}") from exc


class ReasonSegFolderDataset(Dataset):
    """LISA's layout: `root/split/<id>.jpg` with `<id>.json` (labelme polygons) beside each.

    Ids are the image stems, sorted. Query = `text[0]` (as LISA evaluates), subset = "long"
    for `is_sentence` queries, else "short".
    """

    def __init__(self, root: str | Path, split: str = "val", fraction: float = 1.0, fraction_seed: int = 0):
        root = Path(root)
        if not root.is_dir():
            raise UsageError(f"ReasonSeg root {root} does not exist: set --data.root to the folder that holds train/, val/ and test/.")
        split_dir = root / split
        if not split_dir.is_dir():
            found = sorted(p.name for p in root.iterdir() if p.is_dir())
            raise UsageError(f"ReasonSeg split folder {split_dir} does not exist: set --data.split to one of {found} or fix --data.root.")
        images = sorted(split_dir.glob("*.jpg"), key=lambda path: path.stem)
        if not images:
            raise UsageError(f"No *.jpg images in {split_dir}: set --data.root to LISA's ReasonSeg folder (root/{split}/<id>.jpg + <id>.json).")
        self.image_paths = [images[i] for i in select_fraction(len(images), fraction, fraction_seed)]
        self.ids = [path.stem for path in self.image_paths]

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> Sample:
        image_path = self.image_paths[index]
        sample = Sample(id=self.ids[index], image_bytes=b"", query="", gt_mask=None,
                        meta={"path": str(image_path), "format": "lisa_folder", "is_sentence": None})
        try:
            # The annotation first: a sample with a bad image still reports its query and subset.
            annotation = _read_lisa_json(image_path.with_suffix(".json"))
            try:
                texts, is_sentence = annotation["text"], bool(annotation["is_sentence"])
                query = texts if isinstance(texts, str) else texts[0]
                shapes = annotation["shapes"]
            except (KeyError, IndexError, TypeError) as exc:
                raise RowError(f"annotation_invalid: {_reason(exc)}") from exc
            if not isinstance(query, str):
                raise RowError(f"annotation_invalid: text[0] is {type(query).__name__}, not a string")
            sample.query = query
            sample.meta["is_sentence"] = is_sentence
            sample.subset = "long" if is_sentence else "short"
            try:
                image_bytes = image_path.read_bytes()
            except OSError as exc:
                raise RowError(f"image_unreadable: {_reason(exc)}") from exc
            height, width = _decoded_size(image_bytes)
            try:
                sample.gt_mask = lisa_mask(shapes, height, width)
            except Exception as exc:  # malformed labels or points: cv2, numpy and dict errors alike
                raise RowError(f"annotation_invalid: {_reason(exc)}") from exc
            sample.image_bytes = image_bytes
        except RowError as exc:
            sample.error = str(exc)
        return sample


def _parquet_files(root: Path, split: str) -> list[Path]:
    """`root` is one .parquet file, or a folder (or its `split` subfolder) of them, searched recursively."""
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise UsageError(f"ReasonSeg parquet path {root} does not exist: set --data.root to a .parquet file or a folder of them (e.g. Seg-Zero's ReasonSeg_val).")
    folder = root / split if (root / split).is_dir() else root
    files = sorted(folder.rglob("*.parquet"))
    if not files:
        raise UsageError(f"No *.parquet files under {folder}: set --data.root to a .parquet file or a folder of them.")
    return files


class ReasonSegParquetDataset(Dataset):
    """Seg-Zero's ReasonSeg_val / ReasonSeg_test parquet: one row per query, rows in file order.

    Id = str(image_id) when image ids are unique over the whole split, else f"{image_id}_{ann_id}"
    for every row; decided before `fraction`, so an id names the same row whatever the fraction.
    gt = mask as 0/1: these masks were made with astype(bool) on {0, 1, 255}, so LISA's ignore
    pixels are foreground here (meta["ignore_as_foreground"]); there are no subsets.
    """

    def __init__(self, root: str | Path, split: str = "val", fraction: float = 1.0, fraction_seed: int = 0):
        self.files = _parquet_files(Path(root), split)
        image_ids, ann_ids, locations = [], [], []  # locations: (file, row group, row in group)
        for file_index, path in enumerate(self.files):
            parquet = pq.ParquetFile(path)
            missing = [c for c in PARQUET_COLUMNS if c not in parquet.schema_arrow.names]
            if missing:
                raise UsageError(f"{path} lacks columns {missing}: expected Seg-Zero's ReasonSeg parquet ({', '.join(PARQUET_COLUMNS)}).")
            for group in range(parquet.num_row_groups):
                table = parquet.read_row_group(group, columns=["image_id", "ann_id"])
                image_ids += table.column("image_id").to_pylist()
                ann_ids += table.column("ann_id").to_pylist()
                locations += [(file_index, group, row) for row in range(table.num_rows)]
        ids = [str(image_id) for image_id in image_ids]
        if len(set(ids)) < len(ids):
            ids = [f"{image_id}_{ann_id}" for image_id, ann_id in zip(image_ids, ann_ids)]
        if len(set(ids)) < len(ids):
            raise UsageError(f"{root}: (image_id, ann_id) pairs are not unique, so rows cannot be told apart; remove the duplicate rows.")
        keep = select_fraction(len(ids), fraction, fraction_seed)
        self.ids = [ids[i] for i in keep]
        self.locations = [locations[i] for i in keep]
        self._cached_group: tuple[tuple[int, int], pa.Table] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def _row_group(self, file_index: int, group: int) -> pa.Table:
        # A strided shard walks the rows in order: keeping the last row group read avoids
        # decoding a whole group (often 100 rows with images) once per row.
        if self._cached_group is None or self._cached_group[0] != (file_index, group):
            try:
                table = pq.ParquetFile(self.files[file_index]).read_row_group(group, columns=["image", "text", "mask"])
            except (OSError, pa.ArrowException) as exc:
                raise RowError(f"row_unreadable: {_reason(exc)}") from exc
            self._cached_group = ((file_index, group), table)
        return self._cached_group[1]

    def __getitem__(self, index: int) -> Sample:
        file_index, group, row = self.locations[index]
        sample = Sample(id=self.ids[index], image_bytes=b"", query="", gt_mask=None,
                        meta={"path": str(self.files[file_index]), "row_group": group, "row": row,
                              "format": "parquet", "ignore_as_foreground": True})
        try:
            record = self._row_group(file_index, group).slice(row, 1)
            text = record.column("text")[0].as_py()
            if not isinstance(text, str):
                raise RowError(f"annotation_invalid: text is {type(text).__name__}, not a string")
            sample.query = text
            image = record.column("image")[0].as_py()
            image_bytes = image.get("bytes") if isinstance(image, dict) else image  # HF datasets writes a dict
            if not image_bytes:
                raise RowError("image_unreadable: no image bytes in the row")
            height, width = _decoded_size(image_bytes)
            sample.gt_mask = _parquet_mask(record, height, width)
            sample.image_bytes = bytes(image_bytes)
        except RowError as exc:
            sample.error = str(exc)
        return sample


def _parquet_mask(record: pa.Table, height: int, width: int) -> np.ndarray:
    """The row's nested HxW bool list as uint8 0/1, checked against the decoded image size."""
    try:
        mask_rows = record.column("mask").combine_chunks().flatten()  # one list per mask row
        row_lengths = set(mask_rows.value_lengths().to_pylist())
        pixels = np.asarray(mask_rows.flatten().to_numpy(zero_copy_only=False), dtype=bool)
    except (pa.ArrowException, TypeError, ValueError, AttributeError) as exc:
        raise RowError(f"annotation_invalid: mask is not a nested bool list ({_reason(exc)})") from exc
    if len(mask_rows) != height or row_lengths != {width}:
        raise RowError(f"annotation_invalid: mask rows {len(mask_rows)} x lengths {sorted(row_lengths)[:3]} "
                       f"do not match the image's {height}x{width}")
    return pixels.reshape(height, width).astype(np.uint8)


class ReasonSegDataModule(L.LightningDataModule):
    """ReasonSeg in LISA's folder format (`format="folder"`) or Seg-Zero's parquet (`"parquet"`).

    `fraction` < 1 evaluates a deterministic random subset (see `select_fraction`).
    """

    def __init__(self, root: str, split: str = "val", format: Literal["folder", "parquet"] = "folder",
                 fraction: float = 1.0, fraction_seed: int = 0):
        super().__init__()
        if format not in ("folder", "parquet"):
            raise UsageError(f"format must be 'folder' (LISA's jpg + json) or 'parquet' (Seg-Zero's), got {format!r}.")
        check_fraction(fraction)  # fail at configuration time, before any model loads
        self.root, self.split, self.format = root, split, format
        self.fraction, self.fraction_seed = fraction, fraction_seed
        self.dataset: ReasonSegFolderDataset | ReasonSegParquetDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is None:
            reader = ReasonSegFolderDataset if self.format == "folder" else ReasonSegParquetDataset
            self.dataset = reader(self.root, self.split, self.fraction, self.fraction_seed)

    @property
    def subsets(self) -> list[str]:
        """Subset names the metrics should expect (parquet rows carry no is_sentence)."""
        return ["short", "long"] if self.format == "folder" else []

    @property
    def ids(self) -> list[str]:
        self.setup()
        return self.dataset.ids

    def predict_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(self.dataset, batch_size=1, collate_fn=list)
