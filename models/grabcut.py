"""GrabCut executor: OpenCV's box-initialised GrabCut, a CPU baseline that needs no weights.

Deterministic: OpenCV's RNG is reseeded before every call (GrabCut initialises its colour
models with k-means). About 0.3 s per iteration on a 640x480 image on one CPU core.
"""
from __future__ import annotations

import numpy as np

from rescue_eval.core.types import SegmentItem


class GrabCutSegmenter:
    def __init__(self, iterations: int = 3, seed: int = 0):
        self.iterations, self.seed = iterations, seed

    def segment(self, batch: list[SegmentItem]) -> list[list[np.ndarray]]:
        import cv2

        out = []
        for item in batch:
            image = np.ascontiguousarray(np.asarray(item.image.convert("RGB"))[:, :, ::-1])  # OpenCV wants BGR
            out.append([self._one(cv2, image, box) for box in item.boxes])
        return out

    def _one(self, cv2, image: np.ndarray, box) -> np.ndarray:
        h, w = image.shape[:2]
        x1, y1 = int(np.floor(box[0])), int(np.floor(box[1]))
        x2, y2 = int(np.ceil(box[2])), int(np.ceil(box[3]))
        rect = (x1, y1, max(1, min(x2, w) - x1), max(1, min(y2, h) - y1))
        mask = np.zeros((h, w), np.uint8)
        if rect[2] < 2 or rect[3] < 2:  # too small to model: the box itself
            mask[y1:y2, x1:x2] = 1
            return mask.astype(bool)
        cv2.setRNGSeed(self.seed)
        try:
            cv2.grabCut(image, mask, rect, np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64),
                        self.iterations, cv2.GC_INIT_WITH_RECT)
        except cv2.error:  # a box GrabCut cannot model (e.g. one colour only): fall back to the box
            mask[:] = 0
            mask[y1:y2, x1:x2] = cv2.GC_PR_FGD
        return (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
