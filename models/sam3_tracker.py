"""Segmenter backend: SAM 3's single-instance tracker model through transformers.

`Sam3TrackerModel` turns one box into one mask (the concept model `Sam3Model` would treat a box
as an exemplar and return every similar object, which is not what a hypothesis means). The
expensive part is the image encoder, so each image is encoded once and all its boxes are
decoded together from that embedding. Images are encoded one at a time, so that a sample's masks
are the same bits whatever other samples a batch holds.

Checked against transformers 5.24 (models/sam3_tracker, models/sam3) and facebookresearch/sam3
(sam1_task_predictor.py, vl_combiner.py, utils/sam1_utils.py):
- facebook/sam3 is a `sam3_video` checkpoint: `AutoProcessor` returns its Sam3VideoProcessor or
  Sam3Processor (boxes as [0, 1] cxcywh exemplars, no `post_process_masks`), so the tracker's
  processor is loaded by name. `Sam3TrackerModel` reads the checkpoint's `tracker_config`.
- Its neck has four levels (scale factors 4, 2, 1, 0.5). `Sam3TrackerModel` adds the no-memory
  embedding to the last level and then keeps the first three, so the 1x map the decoder reads
  would not get it; SAM 3's predictor drops the 0.5x level first (scalp=1). The neck is cut to
  the tracker's levels after loading, which gives SAM 3's order.
- SAM 3's predictor fills background holes of up to 256 px in the low-resolution logits before
  upscaling (max_hole_area); transformers' `post_process_masks` accepts but ignores that option
  (a TODO in 5.24), so `fill_holes` does it here.
- A checkpoint that loads with missing or mismatched weights is an error, not a warning.
"""
from __future__ import annotations

import numpy as np

from rescue_eval.core.types import SegmentItem
from rescue_eval.models.loading import check_loading_info
from rescue_eval.models.sam3_layout import load_tracker
from rescue_eval.models.tiny import resolve_checkpoint

MAX_HOLE_AREA = 256  # SAM 3's predictor: background holes up to this many low-res pixels are filled


def fill_holes(logits, max_hole_area: float = MAX_HOLE_AREA, threshold: float = 0.0):
    """Low-resolution mask logits (..., h, w) with every background component (8-connected) of at
    most `max_hole_area` pixels turned foreground, as SAM 3's predictor does before upscaling."""
    import cv2
    import torch

    out = logits.float().clone()
    flat = out.view(-1, *out.shape[-2:])
    for k in range(flat.shape[0]):
        background = (flat[k] <= threshold).numpy().astype(np.uint8)
        _, labels, stats, _ = cv2.connectedComponentsWithStats(background, connectivity=8)
        small = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] <= max_hole_area)
        small = small[small > 0]  # label 0 is the foreground
        if small.size:
            flat[k][torch.from_numpy(np.isin(labels, small))] = threshold + 10.0
    return out


class Sam3TrackerSegmenter:
    model_types = ("sam3_video", "sam3_tracker", "sam3")  # config.json model_type of the checkpoints it loads

    def __init__(self, checkpoint: str, device: str = "cpu", dtype: str = "float32"):
        import torch
        from transformers import Sam3TrackerProcessor

        path = resolve_checkpoint(checkpoint)
        self.device = torch.device(device)
        self.dtype = getattr(torch, dtype)
        self.processor = Sam3TrackerProcessor.from_pretrained(path)
        model, info = load_tracker(path, self.dtype)  # facebook/sam3's sam3_video layout too
        check_loading_info("executor", checkpoint, info)
        neck = model.vision_encoder.neck
        levels = len(model.backbone_feature_sizes)
        if len(neck.fpn_layers) > levels:  # the 0.5x level is the concept detector's
            neck.fpn_layers = neck.fpn_layers[:levels]
        self.model = model.to(self.device).eval()

    def segment(self, batch: list[SegmentItem]) -> list[list[np.ndarray]]:
        import torch

        with torch.inference_mode():
            return [self._segment_item(item) if item.boxes else [] for item in batch]

    def _segment_item(self, item: SegmentItem) -> list[np.ndarray]:
        """The image encoded once, then all its boxes in one prompt-decoder call; one mask per box,
        in box order. One encoder pass per image, never one for the batch: the encoder's numbers
        then do not depend on which other samples share the call (GEMM shapes), so a mask pixel
        near the threshold cannot flip with world size or parallel_requests. SAM 3's own
        predictor (the sam3 package backend) also encodes one image at a time."""
        pixels = self.processor(images=[item.image.convert("RGB")], return_tensors="pt")["pixel_values"]
        image_embedding = self.model.get_image_embeddings(pixels.to(self.device, self.dtype))
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
        # pred_masks: 1 image x boxes x 1 mask x low-res h x w logits; small holes filled, then
        # upscaled to the original image size and thresholded at 0 by the processor.
        low_res = fill_holes(outputs.pred_masks.float().cpu())
        masks = self.processor.post_process_masks(low_res, prompts["original_sizes"])[0]
        return [mask.numpy().astype(bool) for mask in masks[:, 0]]
