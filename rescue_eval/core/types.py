"""The data that flows through one evaluation: a sample in, role requests and answers, a record out.

Everything here is plain data (numpy arrays, PIL images, bytes) so it can be built in tests
without models, and later sent between ranks.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from PIL import Image, ImageOps

Box = tuple[float, float, float, float]  # pixel xyxy, x2 > x1, y2 > y1, inside the image

IGNORE = 255  # ground-truth label that counts in neither intersection nor union


@dataclass
class Sample:
    """One dataset row: an image, a query and its ground truth.

    `gt_mask` is uint8 HxW with 0 = background, 1 = target, 255 = ignore. A row that could not
    be read keeps its id and gets `error` (a short reason) instead of raising: it is scored as
    a failed sample, never dropped.
    """

    id: str
    image_bytes: bytes
    query: str
    gt_mask: np.ndarray | None
    subset: str = ""  # e.g. "short" / "long" for ReasonSeg's is_sentence
    error: str | None = None
    meta: dict = field(default_factory=dict)
    # the decoded image when the reader already decoded it (to check it and size the mask)
    decoded: Image.Image | None = field(default=None, repr=False, compare=False)

    def decode_image(self) -> Image.Image:
        """The RGB image, EXIF rotation applied (the ground truth is drawn on the rotated image).

        The image keeps its sample id and original bytes in `info["source"]`, so the transport
        can send those bytes instead of re-encoding pixels."""
        image = self.decoded if self.decoded is not None else decode_image_bytes(self.image_bytes)
        image.info["source"] = (self.id, self.image_bytes)
        return image


def decode_image_bytes(data: bytes) -> Image.Image:
    """The RGB pixels LISA's `cv2.imread(path)` gives (in RGB order), which its ground truth is drawn on.

    - EXIF orientation is applied, as cv2.imread and labelme do when they open a photo;
    - 16-bit grayscale keeps its high byte (cv2 does the same; Pillow's convert would clip at 255);
    - alpha is dropped, not composited (as cv2.imread); grayscale, palette and CMYK become RGB.
    Raises on bytes Pillow cannot decode fully, truncated files included.
    """
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()  # decode everything now: a truncated file fails here, not later in a model
        image = ImageOps.exif_transpose(opened)  # a copy, so it outlives `opened`
    if image.mode.startswith("I;16"):
        image = Image.fromarray((np.asarray(image) >> 8).astype(np.uint8))
    return image if image.mode == "RGB" else image.convert("RGB")  # exif_transpose made a copy already


@dataclass
class Hypothesis:
    """One planner proposal. `index` is its place in the planner's fixed order: hypothesis k is
    the same whatever N is, so the first N' of a run are exactly an N'-hypothesis run."""

    index: int
    strategy: str
    temperature: float
    seed: int
    raw_text: str
    status: Literal["ok", "parse_error", "degenerate", "duplicate"]
    box: Box | None
    tokens_in: int = 0
    tokens_out: int = 0
    duplicate_of: int | None = None  # the kept hypothesis a duplicate repeats (its vote goes there)


# ---- role requests (one item of a batch) and answers -------------------------------------


@dataclass
class PlanItem:
    image: Image.Image
    query: str
    n: int
    seed: int
    gt_box: Box | None = None  # only for the gt_box oracle planner (an ablation, flagged in every output)


@dataclass
class SegmentItem:
    image: Image.Image
    boxes: list[Box]


# The masks of ScoreItem, RateItem and DuelItem are bool HxW arrays for a backend; in a search
# whose executor is on another rank they are core.masks.EncodedMask until a backend takes them.
@dataclass
class ScoreItem:
    image: Image.Image
    masks: list[np.ndarray]  # bool HxW
    query: str


@dataclass
class RateItem:
    image: Image.Image
    mask: np.ndarray
    query: str


@dataclass
class DuelItem:
    image: Image.Image
    mask_a: np.ndarray
    mask_b: np.ndarray
    query: str


@dataclass
class JudgeAnswer:
    """`value` is a rating in [0, 1] for `rate`, "A"/"B" for `duel`, None when unparsable."""

    value: float | str | None
    raw_text: str
    tokens_in: int = 0
    tokens_out: int = 0
