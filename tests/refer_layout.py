"""A small refer-toolkit layout, written deterministically as the published files are: images
with PIL, `instances.json` as COCO writes it (polygons, compressed and uncompressed RLE from
pycocotools), `refs(<splitBy>).p` with pickle protocol 2 (the published files are Python 2
pickles). Nothing of the project is used to write it, so the reader is tested against the format.
"""
from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as coco_mask

WIDTH, HEIGHT = 160, 120
SPLITS = {"refcoco": ("unc", ("val", "testA", "testB")), "refcoco+": ("unc", ("val", "testA", "testB")),
          "refcocog": ("umd", ("val", "test"))}
# per split: a polygon, a two-part polygon, a compressed RLE, an uncompressed RLE (images 0-3)
KINDS = ("polygon", "two_polygons", "rle", "rle_uncompressed")


def _rectangle(x: int, y: int, w: int, h: int) -> list[float]:
    return [float(v) for v in (x, y, x + w, y, x + w, y + h, x, y + h)]


def _image(image_id: int) -> bytes:
    rng = np.random.default_rng(image_id)
    image = Image.fromarray(rng.integers(60, 200, (HEIGHT, WIDTH, 3), dtype=np.uint8))
    ImageDraw.Draw(image).rectangle((20, 20, 60, 70), fill=(200, 40, 40))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _segmentation(kind: str, seed: int):
    x, y = 10 + 7 * (seed % 9), 12 + 5 * (seed % 7)
    if kind == "polygon":
        return [_rectangle(x, y, 40, 30)]
    if kind == "two_polygons":
        return [_rectangle(x, y, 20, 20), _rectangle(x + 50, y + 10, 25, 30)]
    block = np.zeros((HEIGHT, WIDTH), dtype=np.uint8, order="F")
    block[y:y + 35, x:x + 45] = 1
    rle = coco_mask.encode(block)
    if kind == "rle":
        return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    flat = block.flatten(order="F")  # uncompressed RLE: run lengths, column-major, from a 0 run
    changes = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    return {"size": [HEIGHT, WIDTH], "counts": counts}


def write_refer_layout(root: Path, name: str = "refcoco", sentences: int = 2, broken: bool = False) -> Path:
    """ROOT/refer_seg/<name>/ with a ref of each kind in every split of the dataset, `sentences`
    per ref. `broken` adds, in `val`, a ref whose annotation is missing, one whose image file is
    missing, one with a blank sentence and one whose polygon is malformed. Returns ROOT."""
    split_by, splits = SPLITS[name]
    folder = root / "refer_seg" / name
    images_dir = root / "refer_seg/images/mscoco/images/train2014"
    folder.mkdir(parents=True, exist_ok=True)
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations, refs = [], [], []
    next_sent = 1000
    base = 100 * (1 + list(SPLITS).index(name))  # the datasets share the images folder, as COCO's do
    for s, split in enumerate(splits):
        kinds = KINDS + (("missing_annotation", "missing_image", "blank_sentence", "malformed_polygon")
                         if broken and split == "val" else ())
        for k, kind in enumerate(kinds):
            image_id, ann_id, ref_id = base + 10 * s + k, 50 * base + 10 * s + k, base // 2 + 10 * s + k
            file_name = f"COCO_train2014_{image_id:012d}.jpg"
            images.append({"id": image_id, "file_name": file_name, "height": HEIGHT, "width": WIDTH})
            if kind != "missing_image":
                (images_dir / file_name).write_bytes(_image(image_id))
            if kind != "missing_annotation":
                segmentation = ([[1.0, 2.0, 3.0]] if kind == "malformed_polygon"  # fewer than 3 points: pycocotools raises
                                else _segmentation(kind if kind in KINDS else "polygon", image_id))
                annotations.append({"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": int("rle" in kind),
                                    "segmentation": segmentation, "area": 0.0, "bbox": [0.0, 0.0, 1.0, 1.0]})
            sents = []
            for j in range(sentences):
                text = "" if kind == "blank_sentence" and j == 0 else f"the {kind.replace('_', ' ')} thing number {j}"
                sents.append({"sent_id": next_sent, "sent": text, "raw": text, "tokens": text.split()})
                next_sent += 1
            refs.append({"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "split": split,
                         "category_id": 1, "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
                         "sent_ids": [x["sent_id"] for x in sents], "sentences": sents})
    (folder / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                      "categories": [{"id": 1, "name": "thing"}]}))
    (folder / f"refs({split_by}).p").write_bytes(pickle.dumps(refs, protocol=2))
    return root


def gt_of(root: Path, name: str, ann_id: int) -> np.ndarray:
    """The annotation's mask decoded here, with pycocotools directly: the test's own ground truth."""
    coco = json.loads((root / "refer_seg" / name / "instances.json").read_text())
    ann = next(a for a in coco["annotations"] if a["id"] == ann_id)
    seg = ann["segmentation"]
    if isinstance(seg, list):
        rles = coco_mask.frPyObjects(seg, HEIGHT, WIDTH)
    else:
        rles = [coco_mask.frPyObjects(seg, HEIGHT, WIDTH) if isinstance(seg["counts"], list)
                else {"size": seg["size"], "counts": seg["counts"].encode()}]
    return (coco_mask.decode(rles).reshape(HEIGHT, WIDTH, -1).sum(axis=2) > 0).astype(np.uint8)
