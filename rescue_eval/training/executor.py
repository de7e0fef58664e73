"""The demo executor: the SAM 3 tracker twin, trained to segment the shape inside a box.

Each step takes scenes, puts jittered boxes around some of their shapes (a planner's boxes are
rarely tight) and fits the decoder's low-resolution logits to the shape's visible pixels (soft
targets at that resolution), with binary cross-entropy plus a Dice term. Boxes and images go
through the tracker's own processor, as the executor sends them.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from rescue_eval.models.sam3_layout import load_tracker
from rescue_eval.models.sam3_tracker import Sam3TrackerSegmenter
from rescue_eval.models.tiny import sam3_tracker
from rescue_eval.core.masks import mask_box
from rescue_eval.core.types import SegmentItem
from rescue_eval.training.examples import answer_box_pixels, iou, jittered_box, training_scene
from rescue_eval.training.loop import Report, fit

SCENES_PER_STEP, BOXES_PER_SCENE = 8, 3


def train(out_dir: Path, steps: int, held_out: range) -> Report:
    import torch
    import torch.nn.functional as F
    from transformers import Sam3TrackerProcessor

    report = Report("executor", "executor", "facebook/sam3 (tracker)", data=(
        f"demo-world training scenes 0-{steps * SCENES_PER_STEP - 1}, {BOXES_PER_SCENE} shapes each; half the "
        "boxes as the demo planner answers them (rounded outward to tenths of the picture), half tight boxes with "
        "each side moved by up to 15% of the box; target: the shape's visible pixels"),
        steps=steps, batch=f"{SCENES_PER_STEP} scenes x {BOXES_PER_SCENE} boxes", learning_rate=2e-3)
    built = out_dir.with_name(out_dir.name + ".init")
    shutil.rmtree(built, ignore_errors=True)
    built.mkdir(parents=True)
    sam3_tracker.build(built, hidden=64, layers=4)
    processor = Sam3TrackerProcessor.from_pretrained(built)
    model, _ = load_tracker(str(built), torch.float32)
    neck = model.vision_encoder.neck
    all_levels = neck.fpn_layers
    neck.fpn_layers = all_levels[:len(model.backbone_feature_sizes)]  # as the executor runs it
    low_res = 4 * sam3_tracker.IMAGE_SIZE // sam3_tracker.PATCH_SIZE
    rng = np.random.default_rng(0)

    def loss_of_step(step: int):
        images, boxes, targets = [], [], []
        for index in range(step * SCENES_PER_STEP, (step + 1) * SCENES_PER_STEP):
            scene = training_scene(index)
            visible = [m for m in scene.masks if m.sum() >= 30]
            picks = rng.choice(len(visible), size=BOXES_PER_SCENE, replace=len(visible) < BOXES_PER_SCENE)
            images.append(scene.image)
            # half loose boxes as the demo planner answers them, half tight boxes moved a little
            boxes.append([answer_box_pixels(visible[p]) if rng.random() < 0.5 else jittered_box(visible[p], rng)
                          for p in picks])
            targets.append(np.stack([visible[p] for p in picks]))
        inputs = processor(images=images, input_boxes=boxes, return_tensors="pt")
        outputs = model(pixel_values=inputs["pixel_values"], input_boxes=inputs["input_boxes"], multimask_output=False)
        logits = outputs.pred_masks[:, :, 0]  # scenes x boxes x h x w
        target = torch.from_numpy(np.stack(targets)).float()
        target = F.interpolate(target, size=(low_res, low_res), mode="area")
        probability = logits.sigmoid()
        dice = 1 - (2 * (probability * target).sum((-1, -2)) + 1) / (probability.sum((-1, -2)) + target.sum((-1, -2)) + 1)
        return F.binary_cross_entropy_with_logits(logits, target) + dice.mean()

    fit(model, report, loss_of_step)
    neck.fpn_layers = all_levels
    sam3_tracker.save_video_layout(model, out_dir)
    for file in built.glob("*.json"):
        if file.name != "config.json":
            shutil.copy(file, out_dir / file.name)
    shutil.rmtree(built)
    report.held_out = evaluate(out_dir, held_out)
    return report


def evaluate(folder: Path, scenes: range) -> dict[str, float]:
    """Mean IoU of the executor's masks (through the harness's own adapter) for tight, jittered
    and loose (planner-style) boxes around the targets."""
    segmenter = Sam3TrackerSegmenter(str(folder))
    rng = np.random.default_rng(1)
    tight, jittered, loose = [], [], []
    for index in scenes:
        scene = training_scene(index)
        target = scene.target_mask
        boxes = [mask_box(target), tuple(jittered_box(target, rng)), tuple(answer_box_pixels(target))]
        masks = segmenter.segment([SegmentItem(scene.image, boxes)])[0]
        for scores, mask in zip((tight, jittered, loose), masks):
            scores.append(iou(mask, target))
    return {"mean IoU, tight box on the target": float(np.mean(tight)),
            "mean IoU, jittered box on the target": float(np.mean(jittered)),
            "mean IoU, the planner's loose box on the target": float(np.mean(loose))}
