"""Dense pre-training of the Qwen3-VL twin's vision tower on the demo world, before the planner.

Trained only through the language model, the twin's vision tower stops learning within a
hundred steps: the language model reads its tokens through RMSNorm, so their scale is free, and
Adam's steps inflate the merger's weights until the tower's effective rate is nil (gradient norm
5.9 at step 0, 0.002 at step 100; image tokens' norm 0.6 to 20 against 0.3 for text). So the
tower first learns what the world's pictures hold: every merged image token (32 x 32 px at the
processor's size) predicts the colour and the kind of the shape covering most of it (or
background), its own row and column, and that shape's box (grounding.py reads it there),
through a linear head on its layer-normed output. The head is then dropped and the merger's
output scaled to mean norm 1, near the text's scale, so the language model starts from features
it can read. The deepstack mergers (their output is added to the language model's hidden
states) are not pre-trained, only scaled the same way. The planner then trains the tower at a
tenth of the rate (vlm.py).
"""
from __future__ import annotations

import time

import numpy as np

from rescue_eval.datamodules import world
from rescue_eval.models.prompts import GRID
from rescue_eval.models.vlm_requests import PLANNER_MAX_PIXELS, fit_image
from rescue_eval.training.examples import BOX_STEP, box_steps

COLOURS = list(world.COLORS)
KINDS = list(world.CORNERS)
POSITIONS = 16  # classes for a token's row and column: a cap above the demo pictures' 7 x 10 grid
BOX_CLASSES = GRID // BOX_STEP + 1  # a box side on the planner's grid, in steps (examples.box_steps)
LABEL_CLASSES = {"colour": 1 + len(COLOURS), "kind": 1 + len(KINDS), "row": POSITIONS, "column": POSITIONS,
                 "box left": BOX_CLASSES, "box top": BOX_CLASSES, "box right": BOX_CLASSES, "box bottom": BOX_CLASSES}
# the box terms at a quarter: at full weight the tower lost the rows (row read right 0.19, not 0.998)
LABEL_WEIGHTS = {name: 0.25 if name.startswith("box") else 1.0 for name in LABEL_CLASSES}
SCENES_PER_STEP = 16
LEARNING_RATE = 3e-3


def cell_coverage(instances: np.ndarray, rows: int, columns: int, cell: int) -> np.ndarray:
    """(rows x columns) x (1 + max id): each merged token's share of pixels per instance id, for an
    instance map as the processor stretches the picture to its grid, in the tower's token order."""
    from PIL import Image

    stretched = np.asarray(Image.fromarray(instances.astype(np.int32)).resize((columns * cell, rows * cell),
                                                                            Image.NEAREST))
    cells = stretched.reshape(rows, cell, columns, cell).transpose(0, 2, 1, 3).reshape(rows * columns, -1)
    size = int(instances.max()) + 1
    return np.stack([np.bincount(pixels, minlength=size) for pixels in cells]) / cells.shape[1]


def token_labels(scene: world.Scene, rows: int, columns: int, cell: int) -> np.ndarray:
    """(rows x columns) x 8 ints: the colour and kind (0: background) of the shape covering most
    of each merged token's cell (`cell` px square at the processor's size), the cell's row and
    column, and that shape's answer box in steps (examples.box_steps; -100, ignored, on the
    background), in the tower's token order (row-major)."""
    if rows > POSITIONS or columns > POSITIONS:
        raise ValueError(f"position labels cover at most {POSITIONS} x {POSITIONS} merged tokens, "
                         f"not {rows} x {columns}")
    instances = scene.instance_map()
    boxes = [box_steps(instances == i + 1) if (instances == i + 1).any() else None
             for i in range(len(scene.shapes))]
    labels = []
    for index, shares in enumerate(cell_coverage(instances, rows, columns, cell)):
        shape = int(shares.argmax())
        colour, kind, box = 0, 0, [-100] * 4
        if shape:
            colour = 1 + COLOURS.index(scene.shapes[shape - 1].color)
            kind = 1 + KINDS.index(scene.shapes[shape - 1].kind)
            box = boxes[shape - 1]
        labels.append((colour, kind, index // columns, index % columns, *box))
    return np.array(labels, dtype=np.int64)


def batch(processor, scenes: range):
    """The pictures as the planner's processor gives them, and every merged token's labels."""
    import torch

    shown = [world.scene("train", index) for index in scenes]
    inputs = processor.image_processor(images=[fit_image(s.image, PLANNER_MAX_PIXELS) for s in shown],
                                       return_tensors="pt")
    merge = processor.image_processor.merge_size
    cell = processor.image_processor.patch_size * merge
    labels = [token_labels(s, h // merge, w // merge, cell)
              for s, (_, h, w) in zip(shown, inputs["image_grid_thw"].tolist())]
    return inputs, torch.from_numpy(np.concatenate(labels))


def pretrain(model, processor, steps: int, held_out: range) -> tuple[dict[str, float], float]:
    """Train `model`'s vision tower on the training scenes 0 .. steps x 16 - 1, rescale its
    mergers (measured on the last training batch), and return the head's accuracy per label on
    the `held_out` scenes and the seconds it took."""
    import torch
    import torch.nn.functional as F

    start = time.perf_counter()
    visual = model.model.visual
    head = torch.nn.Linear(model.config.text_config.hidden_size, sum(LABEL_CLASSES.values()))
    params = list(visual.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=0.01)

    def logits(inputs):
        tokens = visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"], return_dict=True).pooler_output
        return head(F.layer_norm(tokens, tokens.shape[-1:])).split(list(LABEL_CLASSES.values()), dim=-1)

    visual.train()
    for step in range(steps):
        inputs, labels = batch(processor, range(step * SCENES_PER_STEP, (step + 1) * SCENES_PER_STEP))
        loss = sum(weight * F.cross_entropy(out, labels[:, k])
                   for k, (weight, out) in enumerate(zip(LABEL_WEIGHTS.values(), logits(inputs))))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
    visual.eval()
    with torch.no_grad():
        _scale_mergers_to_unit_norm(visual, inputs)  # the last training batch: no held-out scene decides it
        inputs, labels = batch(processor, held_out)
        accuracy = {f"image tokens' {name} read right (vision pre-training)":
                    float((out.argmax(-1) == labels[:, k])[labels[:, k] >= 0].float().mean())
                    for k, (name, out) in enumerate(zip(LABEL_CLASSES, logits(inputs)))}
    return accuracy, time.perf_counter() - start


def _scale_mergers_to_unit_norm(visual, inputs) -> None:
    """Scale the merger's and the deepstack mergers' last layers so their tokens have mean norm 1."""
    out = visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"], return_dict=True)
    for merger, tokens in [(visual.merger, out.pooler_output),
                           *zip(visual.deepstack_merger_list, out.deepstack_features)]:
        scale = 1.0 / tokens.norm(dim=-1).mean()
        merger.linear_fc2.weight.mul_(scale)
        merger.linear_fc2.bias.mul_(scale)
