"""The demo scorer: the SigLIP2 twin, trained on masked crops and queries with SigLIP's sigmoid loss.

Each step pairs every training scene's query with the masked crops (made by the scorer's own
`masked_crop`) of the masks a search would propose there: the target, the other shapes, a part
of the target, the target grown into a neighbour, an empty patch, and what the executor makes
of loose boxes (every shape's pixels inside them). The label of a pair is the crop mask's IoU
with the target, so a part scores between the target and a wrong shape; pairs are taken within
a scene, the choice the verifier makes. The tokenizer is also trained on the world's queries.

The twin takes 48 x 48 crops (9 patches) where the real checkpoint takes 384 x 384 (576): the
crops are of shapes some 20-60 px across, and a step costs an eighth as much, so the same
minutes buy several times the steps. Trained at 384 px on whole shapes alone, the scorer's pick
among a search's candidates was no better than a random one.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from rescue_eval.core.types import ScoreItem
from rescue_eval.models.siglip2 import TEXT_LENGTH, Siglip2Scorer, masked_crop
from rescue_eval.models.tiny import siglip2
from rescue_eval.training.examples import (by_kind, candidate_masks, iou, loose_box_masks, training_scene,
                                          whole_shapes, world_queries)
from rescue_eval.training.loop import Report, fit

SCENES_PER_STEP = 8
WIDTH = 48
IMAGE_SIZE = 48


def train(out_dir: Path, steps: int, held_out: range) -> Report:
    import torch
    import torch.nn.functional as F
    from transformers import SiglipModel, SiglipProcessor

    report = Report("scorer", "scorer", "google/siglip2-giant-opt-patch16-384", data=(
        f"demo-world training scenes 0-{steps * SCENES_PER_STEP - 1}: each query against the masked crops of "
        "its scene's candidate masks (target, other shapes, a part, the target grown into a neighbour, an empty "
        "patch, every shape's pixels in a loose box around the target and around two shapes drawn at random), "
        f"labelled with the mask's IoU with the target; crops at {IMAGE_SIZE} x {IMAGE_SIZE} px"),
        steps=steps, batch=f"{SCENES_PER_STEP} scenes (about 85 pairs)", learning_rate=4e-3)
    siglip2.build(out_dir, hidden=WIDTH, extra_lines=world_queries(), image_size=IMAGE_SIZE)
    processor = SiglipProcessor.from_pretrained(out_dir)
    model = SiglipModel.from_pretrained(out_dir)
    rng = np.random.default_rng(2)

    def loss_of_step(step: int):
        crops, labels, owners, queries = [], [], [], []
        for s, index in enumerate(range(step * SCENES_PER_STEP, (step + 1) * SCENES_PER_STEP)):
            scene = training_scene(index)
            pixels = np.asarray(scene.image)
            queries.append(scene.query.lower())
            for mask in candidate_masks(scene, rng) + loose_box_masks(scene, rng):
                crop = masked_crop(pixels, mask)
                if crop is not None:
                    crops.append(crop)
                    labels.append(iou(mask, scene.target_mask))
                    owners.append(s)
        text = processor.tokenizer(queries, padding="max_length", max_length=TEXT_LENGTH, truncation=True,
                                   return_tensors="pt")
        images = processor.image_processor(images=crops, return_tensors="pt")
        text_embeds = F.normalize(model.get_text_features(**text).pooler_output, dim=-1)
        image_embeds = F.normalize(model.get_image_features(**images).pooler_output, dim=-1)
        logits = (image_embeds * text_embeds[owners]).sum(-1) * model.logit_scale.exp() + model.logit_bias
        return F.binary_cross_entropy_with_logits(logits, torch.tensor(labels, dtype=torch.float32))

    fit(model, report, loss_of_step)
    model.save_pretrained(out_dir)
    report.held_out = evaluate(out_dir, held_out)
    return report


def evaluate(folder: Path, scenes: range) -> dict[str, float]:
    """How often the scorer (the harness's own adapter) ranks the target's mask first among the
    scene's shapes (by kind of query: a crop cannot tell relations and comparisons), and above a
    part of it."""
    scorer = Siglip2Scorer(str(folder))
    rng = np.random.default_rng(3)
    first, above_part, kinds = [], [], {}
    for index in scenes:
        scene = training_scene(index)
        candidates = candidate_masks(scene, rng)
        shapes = whole_shapes(scene)
        scores = scorer.score([ScoreItem(scene.image, candidates, scene.query)])[0]
        first.append(int(np.argmax(scores[:shapes]) == 0))
        kinds.setdefault(scene.reasoning, []).append(first[-1])
        above_part.append(int(scores[0] > scores[shapes]))
    return {**by_kind("target ranked first among the scene's shapes", kinds),
            "target ranked first among the scene's shapes": float(np.mean(first)),
            "target scored above a part of it": float(np.mean(above_part))}
