"""RefCOCO, RefCOCO+ and RefCOCOg in the layout of the `refer` toolkit (which LISA reads too).

    ROOT/refer_seg/images/mscoco/images/train2014/COCO_train2014_%012d.jpg
    ROOT/refer_seg/<dataset>/refs(<splitBy>).p      refs: ref_id, ann_id, image_id, split, sentences
    ROOT/refer_seg/<dataset>/instances.json         COCO: images (height, width), annotations (segmentation)

One sample per referring sentence, as LISA evaluates: the query is the sentence's `sent`, the
ground truth the referred annotation's mask (polygons decoded with pycocotools, the parts of a
multi-part annotation merged into one mask; no ignore regions). Records keep `ref_id`,
`sent_id`, `image_id` and `ann_id` (`Sample.meta["source"]`). A ref whose annotation is missing,
an image that is missing or unreadable, a blank sentence: failed samples with a reason
(see `datamodules/images.py`), never dropped.

The refs file is a pickle, and a pickle can run code: it is read with an unpickler that builds
only plain built-in values (dicts, lists, strings, numbers) and refuses anything else.
"""
from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
from pycocotools import mask as coco_mask
from torch.utils.data import Dataset

from rescue_eval.core.errors import UsageError
from rescue_eval.core.types import Sample
from rescue_eval.datamodules import SPLIT_BY
from rescue_eval.datamodules.images import ReaderDataModule, RowError, decode_checked, describe, read_inside, real_folder
from rescue_eval.datamodules.reasonseg import check_fraction, gt_warnings, select_fraction

IMAGES = Path("refer_seg/images/mscoco/images/train2014")
SAFE_BUILTINS = {"dict", "list", "tuple", "set", "frozenset", "str", "bytes", "int", "float", "bool", "complex"}


class PlainDataUnpickler(pickle.Unpickler):
    """Builds built-in values only: a pickle that names any other callable is refused."""

    def find_class(self, module: str, name: str):
        if module in ("builtins", "__builtin__") and name in SAFE_BUILTINS:
            return super().find_class("builtins", name)
        raise pickle.UnpicklingError(f"it names {module}.{name}; only plain built-in values are accepted")


def load_refs(path: Path) -> list:
    try:
        # latin1: the published refs files are Python 2 pickles (its str loads as str here)
        refs = PlainDataUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist: set --data.root to the folder that holds refer_seg/ "
                         f"(see `rescue-eval download --data`).") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise UsageError(f"{path} is not a refs file the refer toolkit wrote ({describe(exc)}); re-download it.") from exc
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise UsageError(f"{path} holds a {type(refs).__name__}, not a list of refs; re-download it.")
    return refs


def load_instances(path: Path) -> tuple[dict, dict]:
    """image_id -> image entry, ann_id -> annotation, from the COCO instances.json."""
    try:
        coco = json.loads(path.read_bytes())
        images = {img["id"]: img for img in coco["images"]}
        annotations = {ann["id"]: ann for ann in coco["annotations"]}
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist: set --data.root to the folder that holds refer_seg/.") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path} is not a COCO instances file ({describe(exc)}); re-download it.") from exc
    return images, annotations


def annotation_mask(segmentation: object, height: int, width: int) -> np.ndarray:
    """uint8 HxW 0/1: polygons (a list of [x, y, ...] lists) or RLE (compressed or not), every
    part merged, decoded as LISA's refer loader decodes them."""
    try:
        if isinstance(segmentation, list):
            if not segmentation:
                return np.zeros((height, width), dtype=np.uint8)
            rles = coco_mask.frPyObjects(segmentation, height, width)
        elif isinstance(segmentation, dict):
            rle = dict(segmentation)
            if isinstance(rle.get("counts"), list):  # uncompressed RLE
                rle = coco_mask.frPyObjects(rle, height, width)
            elif isinstance(rle.get("counts"), str):
                rle["counts"] = rle["counts"].encode("ascii")
            rles = [rle]
        else:
            raise TypeError(f"segmentation is a {type(segmentation).__name__}")
        decoded = coco_mask.decode(rles)
    except Exception as exc:  # noqa: BLE001 - pycocotools raises a bare Exception on a malformed polygon
        raise RowError(f"annotation_invalid: {describe(exc)}") from exc
    if decoded.ndim == 3:
        decoded = decoded.any(axis=2)
    if decoded.shape != (height, width):
        raise RowError(f"annotation_invalid: the mask is {decoded.shape[0]}x{decoded.shape[1]}, the image entry "
                       f"says {height}x{width}")
    return decoded.astype(np.uint8)


class RefCocoDataset(Dataset):
    """The sentences of one split of a refer dataset, in refs-file order (refs, then their sentences).

    Id = f"{ref_id}_{sent_id}". A row's index (refs, annotation and image entries) is read up
    front; images and masks are read lazily in `__getitem__`.
    """

    subsets: list[str] = []
    headline = "ciou"  # the RefCOCO papers' table reports cIoU

    def __init__(self, root: str | Path, name: str, split: str, split_by: str,
                 fraction: float = 1.0, fraction_seed: int = 0):
        folder = Path(root) / "refer_seg" / name
        if not folder.is_dir():
            raise UsageError(f"{folder} does not exist: set --data.root to the folder that holds refer_seg/{name}/ "
                             f"(the refer toolkit's layout; see `rescue-eval download --data`).")
        refs = load_refs(folder / f"refs({split_by}).p")
        images, self.annotations = load_instances(folder / "instances.json")
        in_split = [r for r in refs if r.get("split") == split]
        if not in_split:
            found = sorted({str(r.get("split")) for r in refs})
            raise UsageError(f"{name} ({split_by}) has no ref in split {split!r}: set --data.split to one of {found}.")
        rows = [(ref, sent) for ref in in_split for sent in ref.get("sentences") or [{}]]
        ids = [f"{ref.get('ref_id')}_{sent.get('sent_id')}" for ref, sent in rows]
        if len(set(ids)) < len(ids):
            raise UsageError(f"{folder / f'refs({split_by}).p'}: (ref_id, sent_id) pairs repeat in split {split!r}, "
                             f"so sentences cannot be told apart; re-download the file.")
        keep = select_fraction(len(rows), fraction, fraction_seed)
        self.ids = [ids[i] for i in keep]
        self.rows = [rows[i] for i in keep]
        self.images = images
        self.image_folder = Path(root) / IMAGES
        self.boundary = real_folder(Path(root) / "refer_seg")

    def __len__(self) -> int:
        return len(self.rows)

    def image_path(self, image_id: object) -> Path:
        entry = self.images.get(image_id, {})
        return self.image_folder / entry.get("file_name", f"COCO_train2014_{image_id:012d}.jpg")

    def __getitem__(self, index: int) -> Sample:
        ref, sent = self.rows[index]
        source = {key: ref.get(key) for key in ("ref_id", "image_id", "ann_id")}
        source["sent_id"] = sent.get("sent_id")
        sample = Sample(id=self.ids[index], image_bytes=b"", query="", gt_mask=None,
                        meta={"format": "refer", "source": source})
        try:
            sample.query = sent.get("sent") if isinstance(sent.get("sent"), str) else ""
            if not sample.query.strip():
                raise RowError("text_empty: the referring sentence is blank")
            annotation = self.annotations.get(ref.get("ann_id"))
            if annotation is None:
                raise RowError(f"annotation_missing: ann_id {ref.get('ann_id')} is not in instances.json")
            image_id = ref.get("image_id")
            entry = self.images.get(image_id) if isinstance(image_id, int) else None
            if entry is None:
                raise RowError(f"image_missing: image_id {image_id!r} is not in instances.json")
            path = self.image_path(ref["image_id"])
            sample.meta["path"] = str(path)
            image_bytes = read_inside(path, self.boundary, "image_missing", "image_unreadable")
            image = decode_checked(image_bytes)
            if (entry.get("height"), entry.get("width")) != (image.height, image.width):
                raise RowError(f"gt_size_mismatch: instances.json says {entry.get('width')}x{entry.get('height')}, "
                               f"the image is {image.width}x{image.height}")
            sample.gt_mask = annotation_mask(annotation.get("segmentation"), image.height, image.width)
            if warnings := gt_warnings(sample.gt_mask):
                sample.meta["warnings"] = warnings
            sample.image_bytes, sample.decoded = image_bytes, image
        except RowError as exc:
            sample.gt_mask, sample.error = None, str(exc)
        return sample


class RefCocoDataModule(ReaderDataModule):
    """One of the refer datasets (`name`: refcoco, refcoco+ or refcocog), one split.
    `split_by` None: the dataset's usual one (unc; umd for refcocog)."""

    name = "refcoco"

    def __init__(self, root: str, split: str = "val", fraction: float = 1.0, fraction_seed: int = 0,
                 split_by: str | None = None):
        check_fraction(fraction)
        split_by = split_by or SPLIT_BY[self.name][0]
        if split_by not in SPLIT_BY[self.name]:
            raise UsageError(f"data.split_by {split_by!r} does not exist for {self.name}; use one of {list(SPLIT_BY[self.name])}.")
        super().__init__(RefCocoDataset, root, self.name, split, split_by, fraction, fraction_seed)


class RefCocoPlusDataModule(RefCocoDataModule):
    name = "refcoco+"


class RefCocogDataModule(RefCocoDataModule):
    name = "refcocog"


SOURCES = {  # what `rescue-eval download --data NAME` prints; nothing is fetched by the harness
    "images": "COCO 2014 train images: http://images.cocodataset.org/zips/train2014.zip (13 GB), unzipped into "
              "ROOT/refer_seg/images/mscoco/images/ (so that train2014/COCO_train2014_*.jpg lies there)",
    "refs": "the refer toolkit's annotations (https://github.com/lichengunc/refer, its README): "
            "https://bvisionweb1.cs.unc.edu/licheng/referit/data/{name}.zip, unzipped into ROOT/refer_seg/ "
            "(giving ROOT/refer_seg/{name}/refs(...).p and instances.json)",
}


def check_layout(root: str | Path, name: str) -> tuple[list[str], bool]:
    """One line per part of `name`'s layout under `root` (what is there, what is missing), and
    whether every part is complete."""
    lines, complete = [], True
    for split_by in SPLIT_BY[name]:
        path = Path(root) / "refer_seg" / name / f"refs({split_by}).p"
        if not path.exists():
            lines.append(f"missing {path}: unzip {name}.zip (above) into {Path(root) / 'refer_seg'}")
            complete = False
            continue
        try:
            dataset = RefCocoDataset(root, name, "val", split_by)
        except UsageError as exc:
            lines.append(str(exc))
            complete = False
            continue
        needed = {ref.get("image_id") for ref, _ in dataset.rows}
        present = sum(dataset.image_path(i).exists() for i in needed if isinstance(i, int))
        refs = len({ref.get("ref_id") for ref, _ in dataset.rows})
        lines.append(f"{name} ({split_by}) val: {len(dataset)} sentences of {refs} refs; "
                     f"{present} of {len(needed)} images present")
        if present < len(needed):
            lines.append(f"missing {len(needed) - present} image(s) in {dataset.image_folder}: unzip train2014.zip (above)")
            complete = False
    return lines, complete
