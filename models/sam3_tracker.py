"""Segmenter backend: SAM 3's single-instance tracker model through transformers.

`Sam3TrackerModel` turns one box into one mask (the concept model `Sam3Model` would treat a box
as an exemplar and return every similar object, which is not what a hypothesis means). The
expensive part is the image encoder, so each image is encoded once and all its boxes are
decoded together from that embedding.
"""
from __future__ import annotations

import numpy as np

from rescue_eval.models.tiny import resolve_checkpoint
from rescue_eval.core.types import SegmentItem


class Sam3TrackerSegmenter:
    def __init__(self, checkpoint: str, device: str = "cpu", dtype: str = "float32"):
        import torch
        from transformers import AutoProcessor, Sam3TrackerModel

        path = resolve_checkpoint(checkpoint)
        self.device = torch.device(device)
        self.dtype = getattr(torch, dtype)
        self.processor = AutoProcessor.from_pretrained(path)
        self.model = Sam3TrackerModel.from_pretrained(path, dtype=self.dtype).to(self.device).eval()

    def segment(self, batch: list[SegmentItem]) -> list[list[np.ndarray]]:
        import torch

        results: list[list[np.ndarray]] = [[] for _ in batch]
        todo = [i for i, item in enumerate(batch) if item.boxes]
        if not todo:
            return results
        with torch.inference_mode():
            # One encoder pass for all images of the batch: each image is embedded exactly once.
            images = [batch[i].image.convert("RGB") for i in todo]
            pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
            embeddings = self.model.get_image_embeddings(pixels.to(self.device, self.dtype))
            for row, i in enumerate(todo):
                item_embedding = [level[row:row + 1] for level in embeddings]
                results[i] = self._decode_boxes(batch[i], item_embedding)
        return results

    def _decode_boxes(self, item: SegmentItem, image_embedding: list) -> list[np.ndarray]:
        """All boxes of one image in one prompt-decoder call; one mask per box, in box order."""
        prompts = self.processor(
            original_sizes=[[item.image.height, item.image.width]],
            input_boxes=[[list(map(float, box)) for box in item.boxes]],
            return_tensors="pt",
        )
        outputs = self.model(
            image_embeddings=image_embedding,
            input_boxes=prompts["input_boxes"].to(self.device, self.dtype),
            multimask_output=False,  # a box is one instance: take the decoder's single best mask
        )
        # pred_masks: 1 image x boxes x 1 mask x low-res h x w logits; upscaled to the original
        # image size and thresholded at 0 by the processor.
        masks = self.processor.post_process_masks(outputs.pred_masks.float().cpu(), prompts["original_sizes"])[0]
        return [mask.numpy().astype(bool) for mask in masks[:, 0]]
