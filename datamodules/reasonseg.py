"""ReasonSeg in LISA's folder format, and the DataModule that the parquet format (reasonseg_parquet.py) shares.

Rows are read lazily in `__getitem__`, because the distributed runner reads only its own
strided shard. A row that cannot be read never raises and is never dropped: it becomes a Sample
whose `error` starts with a short reason (listed in `datamodules/images.py`), scored as a failure
and counted. A row that LISA would score but that looks odd loads as LISA loads it, and
`meta["warnings"]` says what is odd, with reasons of the same form:

    gt_empty                no target pixel; scored as LISA does (1.0 for an empty prediction)
    polygon_short           a polygon of 1 or 2 points, drawn as LISA's cv2 calls draw it (a dot or a line)
    polygon_outside         a polygon entirely outside the image, so it adds no pixel (partly outside: clipped)
    annotation_size_differs the JSON's imageWidth/imageHeight are not the image's size (EXIF orientation
                            applied); the polygons are drawn on the image, as LISA does
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from torch.utils.data import Dataset

from rescue_eval.core.cache import build_once, cache_root
from rescue_eval.datamodules.images import ReaderDataModule, RowError, decode_checked, describe, read_inside, real_folder
from rescue_eval.core.errors import UsageError
from rescue_eval.core.types import IGNORE, Sample

LISA_KEYS = ("text", "is_sentence", "shapes")
Polygon = tuple[int, int, np.ndarray]  # (index among the shapes, label value 1 or IGNORE, int32 points)


def check_fraction(fraction: float) -> None:
    if not 0.0 < fraction <= 1.0:
        raise UsageError(f"fraction must be in (0, 1], got {fraction}: pass e.g. --fraction 0.1 for a 10% subset.")


def select_fraction(n: int, fraction: float, seed: int) -> list[int]:
    """A deterministic random subset of range(n): the first max(1, round(fraction * n)) indices
    of a permutation seeded with `seed`, returned in sorted order."""
    check_fraction(fraction)
    keep = max(1, round(fraction * n))
    return sorted(int(i) for i in np.random.default_rng(seed).permutation(n)[:keep])


def query_text(text: object) -> str:
    """The query: `text[0]` of a list (as LISA evaluates), or the string itself."""
    if isinstance(text, list) and not text:
        raise RowError("text_empty: text is an empty list")
    query = text[0] if isinstance(text, list) else text
    if not isinstance(query, str):
        raise RowError(f"annotation_invalid: the query is {type(query).__name__}, not a string")
    if not query.strip():
        raise RowError("text_empty: the query is blank")
    return query


def read_lisa_json(data: bytes) -> dict:
    try:
        try:
            annotation = json.loads(data)  # UTF-8 (BOM or not), UTF-16 or UTF-32
        except UnicodeDecodeError:  # some ReasonSeg files are cp1252, as LISA's loader expects
            annotation = json.loads(data.decode("cp1252"))
    except (ValueError, RecursionError) as exc:  # undecodable bytes, bad JSON, absurd nesting
        raise RowError(f"annotation_invalid: {describe(exc)}") from exc
    if not isinstance(annotation, dict):
        raise RowError(f"annotation_invalid: the JSON holds a {type(annotation).__name__}, not an object")
    missing = [key for key in LISA_KEYS if key not in annotation]
    if missing:
        raise RowError(f"annotation_invalid: missing key(s) {missing}")
    if annotation["is_sentence"] not in (True, False):  # 0 and 1 pass; "false" would be true for LISA
        raise RowError(f"annotation_invalid: is_sentence is {annotation['is_sentence']!r}, not true or false")
    if not isinstance(annotation["shapes"], list):
        raise RowError(f"annotation_invalid: shapes is a {type(annotation['shapes']).__name__}, not a list")
    return annotation


def lisa_polygons(shapes: list) -> list[Polygon]:
    """The polygons LISA draws: every shape but those labelled "flag" (LISA skips them unread);
    a label containing "ignore" gives IGNORE, any other label 1 (LISA's rules)."""
    polygons = []
    for index, shape in enumerate(shapes):
        label = shape.get("label") if isinstance(shape, dict) else None
        if not isinstance(label, str):
            raise RowError(f"polygon_invalid: shape {index} has no string label")
        if label.lower() == "flag":  # LISA: meaningless deprecated annotations
            continue
        try:
            points = np.asarray(shape.get("points"), dtype=np.float64)
        except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: JSON integers beyond float
            raise RowError(f"polygon_invalid: shape {index} points are not x, y numbers ({describe(exc)})") from exc
        if points.ndim != 2 or points.shape[1] != 2:  # [] is 1-D: no points
            raise RowError(f"polygon_invalid: shape {index} points have shape {points.shape}, not (n >= 1, 2)")
        if not np.isfinite(points).all() or np.abs(points).max() >= 2**31:
            raise RowError(f"polygon_invalid: shape {index} has a coordinate that is not finite or not an int32")
        # astype truncates toward zero, as LISA's np.array(points, dtype=np.int32)
        polygons.append((index, IGNORE if "ignore" in label.lower() else 1, points.astype(np.int32)))
    return polygons


def lisa_mask(polygons: list[Polygon], height: int, width: int) -> tuple[np.ndarray, list[int]]:
    """Ground truth exactly as LISA's `get_mask_from_json`: uint8 HxW, 1 = target, 255 = ignore;
    with each polygon's area in pixels (0 for one entirely outside the image).

    Polygons are drawn largest area first (area measured on a filled-plus-outline temp mask), so a
    smaller polygon drawn later wins where they overlap; ties follow np.argsort as in LISA. Points
    outside the image are clipped by cv2, and 1-2 points draw a dot or a line, as in LISA.
    """
    areas = []
    for _, _, points in polygons:
        area_mask = np.zeros((height, width), dtype=np.uint8)
        cv2.polylines(area_mask, points[np.newaxis], True, 1, 1)
        cv2.fillPoly(area_mask, points[np.newaxis], 1)
        areas.append(area_mask.sum())
    mask = np.zeros((height, width), dtype=np.uint8)
    for order in np.argsort(areas)[::-1]:
        _, value, points = polygons[order]
        cv2.polylines(mask, points[np.newaxis], True, value, 1)
        cv2.fillPoly(mask, points[np.newaxis], value)
    return mask, [int(area) for area in areas]


def lisa_warnings(annotation: dict, polygons: list[Polygon], areas: list[int], mask: np.ndarray) -> list[str]:
    height, width = mask.shape
    warnings = [f"polygon_short: shape {index} has {len(points)} point(s), drawn as a {'dot' if len(points) == 1 else 'line'}"
                for index, _, points in polygons if len(points) < 3]
    warnings += [f"polygon_outside: shape {index} lies entirely outside the {width}x{height} image"
                 for (index, _, _), area in zip(polygons, areas) if area == 0]
    stated = (annotation.get("imageWidth"), annotation.get("imageHeight"))
    if all(isinstance(n, int) for n in stated) and stated != (width, height):
        warnings.append(f"annotation_size_differs: the JSON says {stated[0]}x{stated[1]}, "
                        f"the image is {width}x{height} (EXIF orientation applied)")
    return warnings + gt_warnings(mask)


def gt_warnings(mask: np.ndarray) -> list[str]:
    return [] if (mask == 1).any() else ["gt_empty: no target pixel; LISA scores 1.0 for an empty prediction"]


class ReasonSegFolderDataset(Dataset):
    """LISA's layout: `root/split/<id>.jpg` with `<id>.json` (labelme polygons) beside each.

    Ids are the stems of the .jpg and .json files, sorted (a JSON without its image is a failed
    sample, not a lost one). Query = `text[0]` (as LISA evaluates), subset = "long" for
    `is_sentence` queries, else "short". Files are read only inside the split folder (symlinks
    followed), so a linked root or split folder works, a link out of it is refused.
    """

    subsets = ["short", "long"]

    def __init__(self, root: str | Path, split: str = "val", fraction: float = 1.0, fraction_seed: int = 0):
        root = Path(root)
        if not root.is_dir():
            raise UsageError(f"ReasonSeg root {root} does not exist: set --data.root to the folder that holds train/, val/ and test/.")
        split_dir = root / split
        if not split_dir.is_dir():
            found = sorted(p.name for p in root.iterdir() if p.is_dir())
            raise UsageError(f"ReasonSeg split folder {split_dir} does not exist: set --data.split to one of {found} or fix --data.root.")
        images = list(split_dir.glob("*.jpg"))
        if not images:
            raise UsageError(f"No *.jpg images in {split_dir}: set --data.root to LISA's ReasonSeg folder (root/{split}/<id>.jpg + <id>.json).")
        stems = sorted({path.stem for path in images} | {path.stem for path in split_dir.glob("*.json")})
        self.ids = [stems[i] for i in select_fraction(len(stems), fraction, fraction_seed)]
        self.image_paths = [split_dir / f"{stem}.jpg" for stem in self.ids]
        self.boundary = real_folder(split_dir)

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> Sample:
        image_path = self.image_paths[index]
        sample = Sample(id=self.ids[index], image_bytes=b"", query="", gt_mask=None,
                        meta={"path": str(image_path), "format": "lisa_folder", "is_sentence": None})
        try:
            # The annotation first: a sample with a bad image still reports its query and subset.
            annotation = read_lisa_json(read_inside(image_path.with_suffix(".json"), self.boundary,
                                                    "annotation_missing", "annotation_invalid"))
            sample.meta["is_sentence"] = bool(annotation["is_sentence"])
            sample.subset = "long" if annotation["is_sentence"] else "short"
            sample.query = query_text(annotation["text"])
            image_bytes = read_inside(image_path, self.boundary, "image_missing", "image_unreadable")
            image = decode_checked(image_bytes)
            polygons = lisa_polygons(annotation["shapes"])
            sample.gt_mask, areas = lisa_mask(polygons, image.height, image.width)
            warnings = lisa_warnings(annotation, polygons, areas, sample.gt_mask)
            if warnings:
                sample.meta["warnings"] = warnings
            sample.image_bytes, sample.decoded = image_bytes, image  # decoded once, reused by the search
        except RowError as exc:
            sample.gt_mask, sample.error = None, str(exc)
        return sample


class ReasonSegDataModule(ReaderDataModule):
    """ReasonSeg in LISA's folder format; `ReasonSegParquetDataModule` reads Seg-Zero's parquet.
    `fraction` < 1 evaluates a deterministic random subset (see `select_fraction`)."""

    reader: type = ReasonSegFolderDataset

    def __init__(self, root: str, split: str = "val", fraction: float = 1.0, fraction_seed: int = 0):
        check_fraction(fraction)  # fail at configuration time, before any model loads
        super().__init__(self.reader, root, split, fraction, fraction_seed)


class GeneratedReasonSegDataModule(ReasonSegDataModule):
    """A set generated on first use in LISA's folder format and read back through the folder
    reader (so a generated set exercises it): into `cache_root()/CACHE_NAME`, or `root` when
    given. A subclass names its cache folder and its one split, and writes that split's files.
    `prepare_data` generates it (rank 0, before the others read it)."""

    CACHE_NAME: str
    SPLIT: str
    TITLE: str  # how a message names the set

    def __init__(self, root: str | None = None, split: str | None = None, fraction: float = 1.0,
                 fraction_seed: int = 0):
        split = self.SPLIT if split is None else split
        if split != self.SPLIT:
            raise UsageError(f"{self.TITLE} has only the split {self.SPLIT!r}, got {split!r}: "
                             f"set --data.split {self.SPLIT}.")
        super().__init__(root="", split=split, fraction=fraction, fraction_seed=fraction_seed)
        self.generated_root = root

    def write_split(self, folder: Path) -> None:
        raise NotImplementedError

    def ensure(self) -> Path:
        """The set's root (holding its split's folder), generated on first use."""
        root = Path(self.generated_root) if self.generated_root else cache_root() / self.CACHE_NAME
        build_once(root / self.SPLIT, self.write_split)
        return root

    def prepare_data(self) -> None:
        self.ensure()

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is None:  # resolve the cache now, not at construction: the environment may change
            self.args = (str(self.ensure()), *self.args[1:])
        super().setup(stage)
