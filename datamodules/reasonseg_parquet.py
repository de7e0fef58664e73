"""ReasonSeg in Seg-Zero's parquet format (the `ReasonSeg_val` / `ReasonSeg_test` sets).

Rows are read lazily, one row group at a time. A row that cannot be read never raises and is
never dropped: it becomes a Sample whose `error` starts with a short reason (see
`datamodules/images.py`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from torch.utils.data import Dataset

from rescue_eval.core.errors import UsageError
from rescue_eval.core.types import Sample
from rescue_eval.datamodules.images import RowError, decode_checked, describe, read_inside, real_folder
from rescue_eval.datamodules.reasonseg import ReasonSegDataModule, gt_warnings, query_text, select_fraction

PARQUET_COLUMNS = ("image", "text", "mask", "image_id", "ann_id")


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
    An `image` cell is the encoded bytes or HF datasets' {"bytes", "path"}; without bytes, the
    file at `path` (relative to the parquet file) is read, only inside the data root.
    """

    subsets: list[str] = []  # parquet rows carry no is_sentence

    def __init__(self, root: str | Path, split: str = "val", fraction: float = 1.0, fraction_seed: int = 0):
        self.files = _parquet_files(Path(root), split)
        self.boundary = real_folder(Path(root) if Path(root).is_dir() else Path(root).parent)
        image_ids, ann_ids, locations = [], [], []  # locations: (file, row group, row in group)
        for file_index, path in enumerate(self.files):
            try:
                parquet = pq.ParquetFile(path)
                missing = [c for c in PARQUET_COLUMNS if c not in parquet.schema_arrow.names]
                groups = [parquet.read_row_group(g, columns=["image_id", "ann_id"]) for g in range(parquet.num_row_groups)]
            except (OSError, pa.ArrowException) as exc:  # no footer: its rows cannot even be counted
                raise UsageError(f"{path} is not a readable parquet file ({describe(exc)}): re-download it or remove it from --data.root.") from exc
            if missing:
                raise UsageError(f"{path} lacks columns {missing}: expected Seg-Zero's ReasonSeg parquet ({', '.join(PARQUET_COLUMNS)}).")
            for group, table in enumerate(groups):
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
                raise RowError(f"row_unreadable: {describe(exc)}") from exc
            self._cached_group = ((file_index, group), table)
        return self._cached_group[1]

    def _image_bytes(self, cell: object, file_index: int) -> bytes:
        data, path = (cell.get("bytes"), cell.get("path")) if isinstance(cell, dict) else (cell, None)
        if data is None and isinstance(path, str) and path:
            return read_inside(self.files[file_index].parent / path, self.boundary, "image_missing", "image_unreadable")
        if data is None:
            raise RowError("image_missing: the row holds no image bytes and no path")
        if not isinstance(data, bytes):
            raise RowError(f"image_unreadable: the image is a {type(data).__name__}, not bytes")
        return data

    def __getitem__(self, index: int) -> Sample:
        file_index, group, row = self.locations[index]
        sample = Sample(id=self.ids[index], image_bytes=b"", query="", gt_mask=None,
                        meta={"path": str(self.files[file_index]), "row_group": group, "row": row,
                              "format": "parquet", "ignore_as_foreground": True})
        try:
            record = self._row_group(file_index, group).slice(row, 1)
            sample.query = query_text(record.column("text")[0].as_py())
            image_bytes = self._image_bytes(record.column("image")[0].as_py(), file_index)
            image = decode_checked(image_bytes)
            sample.gt_mask = _parquet_mask(record, image.height, image.width)
            if warnings := gt_warnings(sample.gt_mask):
                sample.meta["warnings"] = warnings
            sample.image_bytes, sample.decoded = image_bytes, image  # decoded once, reused by the search
        except RowError as exc:
            sample.gt_mask, sample.error = None, str(exc)
        return sample


def _parquet_mask(record: pa.Table, height: int, width: int) -> np.ndarray:
    """The row's nested HxW bool (or 0/1 integer) list as uint8 0/1, checked against the decoded image size."""
    cell = record.column("mask").combine_chunks()
    if cell.null_count:
        raise RowError("annotation_invalid: the row has no mask")
    try:
        mask_rows = cell.flatten()  # one list per mask row
        row_lengths = set(pc.list_value_length(mask_rows).to_pylist())
        values = mask_rows.flatten()
    except (pa.ArrowException, TypeError, AttributeError) as exc:
        raise RowError(f"annotation_invalid: the mask is a {cell.type}, not a nested list of rows") from exc
    if mask_rows.null_count or values.null_count:
        raise RowError("annotation_invalid: the mask has missing rows or pixels")
    if not (pa.types.is_boolean(values.type) or pa.types.is_integer(values.type)):
        raise RowError(f"annotation_invalid: mask pixels are {values.type}, not bool")
    if len(row_lengths) > 1:
        raise RowError(f"annotation_invalid: mask rows have different lengths {sorted(row_lengths)[:4]}")
    shape = (len(mask_rows), row_lengths.pop() if row_lengths else 0)
    if shape != (height, width):
        raise RowError(f"gt_size_mismatch: the mask is {shape[0]}x{shape[1]} (HxW), the image {height}x{width} "
                       "(EXIF orientation applied)")
    return values.to_numpy(zero_copy_only=False).astype(bool).reshape(shape).astype(np.uint8)


class ReasonSegParquetDataModule(ReasonSegDataModule):
    """Seg-Zero's ReasonSeg_val / ReasonSeg_test parquet files (`ReasonSegParquetDataset`)."""

    reader = ReasonSegParquetDataset
