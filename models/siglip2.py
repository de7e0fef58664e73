"""Scorer backend: SigLIP2 image-text agreement of a masked crop and the query, through transformers.

The scorer must judge the segmented region, not the whole picture, so each mask becomes a crop
around its box (plus a 10% margin for context) with every pixel outside the mask painted
neutral gray. SigLIP2 was trained with a sigmoid loss, so the score of one (crop, query) pair is
sigmoid(cosine * exp(logit_scale) + logit_bias), independent of the other candidates (a softmax
over candidates would not be). Queries are lower-cased, as Google's SigLIP2 evaluation does, and
padded or cut to 64 tokens.

Loads either SigLIP2 layout through the Auto classes: the fixed-resolution checkpoints
(google/siglip2-giant-opt-patch16-384, -so400m-patch14-384: SiglipModel, SiglipProcessor with a
GemmaTokenizer) and the NaFlex ones (Siglip2Model, Siglip2Processor).
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

from rescue_eval.models.loading import check_loading_info
from rescue_eval.models.tiny import resolve_checkpoint
from rescue_eval.core.masks import mask_box
from rescue_eval.core.types import ScoreItem

CROP_MARGIN = 0.10  # fraction of the mask's box added on each side
NEUTRAL_GRAY = 127
TEXT_LENGTH = 64  # SigLIP2 was trained on text padded / truncated to 64 tokens


def masked_crop(pixels: np.ndarray, mask: np.ndarray, margin: float = CROP_MARGIN) -> Image.Image | None:
    """From an HxWx3 uint8 image: the mask's box enlarged by `margin` on each side (clamped to the
    image), pixels outside the mask set to gray; None for an empty mask."""
    height, width = pixels.shape[:2]
    if mask.shape != (height, width):
        raise ValueError(f"Mask of shape {mask.shape} does not match the {width}x{height} image.")
    box = mask_box(mask)
    if box is None:
        return None
    x1, y1, x2, y2 = box
    dx, dy = margin * (x2 - x1), margin * (y2 - y1)
    left, top = max(0, math.floor(x1 - dx)), max(0, math.floor(y1 - dy))
    right, bottom = min(width, math.ceil(x2 + dx)), min(height, math.ceil(y2 + dy))
    crop = pixels[top:bottom, left:right].copy()
    crop[~mask[top:bottom, left:right].astype(bool)] = NEUTRAL_GRAY
    return Image.fromarray(crop)


class Siglip2Scorer:
    model_types = ("siglip", "siglip2")  # config.json model_type of the checkpoints it loads

    def __init__(self, checkpoint: str, device: str = "cpu", dtype: str = "float32", max_batch: int = 32):
        import torch
        from transformers import AutoModel, AutoProcessor

        path = resolve_checkpoint(checkpoint)
        self.device = torch.device(device)
        self.dtype = getattr(torch, dtype)
        self.max_batch = max_batch
        processor = AutoProcessor.from_pretrained(path)
        # The two halves are called separately: the text is encoded once per distinct query while
        # the crops go through in chunks. The image processor is called directly because a NaFlex
        # `Siglip2Processor.__call__` replaces the checkpoint's `max_num_patches` with its own
        # class default (256).
        self.tokenizer = processor.tokenizer
        self.image_processor = processor.image_processor
        model, info = AutoModel.from_pretrained(path, dtype=self.dtype, output_loading_info=True)
        check_loading_info("scorer", checkpoint, info)
        self.model = model.to(self.device).eval()

    def score(self, batch: list[ScoreItem]) -> list[list[float]]:
        """One score per mask of each item; an empty mask keeps 0.0.

        Each item goes through the model on its own: its query's text alone (encoded once per
        distinct query in the batch) and its crops in chunks of `max_batch`. Its scores are then
        the same bits whatever other samples share the batch; mixed passes moved them in the 7th
        digit, which the selection's min-max scaling magnifies by 1 / (the item's score spread).
        The price is smaller passes on a GPU: a sample's N crops instead of up to `max_batch`."""
        import torch

        texts: dict = {}
        with torch.inference_mode():
            scale, bias = self.model.logit_scale.float().exp(), self.model.logit_bias.float()
            return [self._score_item(item, texts, scale, bias) for item in batch]

    def _score_item(self, item: ScoreItem, texts: dict, scale, bias) -> list[float]:
        scores = [0.0] * len(item.masks)
        pixels = np.asarray(item.image.convert("RGB"))  # converted once, cropped per mask
        crops = [(j, crop) for j, mask in enumerate(item.masks) if (crop := masked_crop(pixels, mask)) is not None]
        if not crops:
            return scores
        query = item.query.lower()
        if query not in texts:
            texts[query] = self._encode_texts([query])
        for start in range(0, len(crops), self.max_batch):
            chunk = crops[start:start + self.max_batch]
            logits = (self._encode_images([crop for _, crop in chunk]) * texts[query]).sum(dim=-1) * scale + bias
            for (j, _), value in zip(chunk, logits.sigmoid().tolist()):
                scores[j] = float(value)
        return scores

    def _encode_texts(self, texts: list[str]):
        tokens = self.tokenizer(
            texts, padding="max_length", max_length=TEXT_LENGTH, truncation=True, return_tensors="pt"
        )
        embeds = self.model.get_text_features(**tokens.to(self.device)).pooler_output.float()
        return embeds / embeds.norm(dim=-1, keepdim=True)

    def _encode_images(self, images: list[Image.Image]):
        inputs = self.image_processor(images=images, return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        embeds = self.model.get_image_features(**inputs).pooler_output.float()
        return embeds / embeds.norm(dim=-1, keepdim=True)
