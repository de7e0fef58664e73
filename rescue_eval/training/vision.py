"""Dense pre-training of the Qwen3-VL twin's vision tower on the demo world, before the planner.

Trained only through the language model, the twin's vision tower stops learning within a
hundred steps: the language model reads its tokens through RMSNorm, so their scale is free, and
Adam's steps inflate the merger's weights until the tower's effective rate is nil (gradient norm
5.9 at step 0, 0.002 at step 100; image tokens' norm 0.6 to 20 against 0.3 for text). So the
tower first learns what the world's pictures hold: every merged image token (32 x 32 px at the
processor's size) predicts the colour and the kind of the shape covering most of it (or
background) and its own row and column, through a linear head on its layer-normed output. The
head is then dropped and the merger's output scaled to mean norm 1, near the text's scale, so
the language model starts from features it can read. The deepstack mergers (their output is
added to the language model's hidden states) are not pre-trained, only scaled the same way. The
planner then trains the tower at a tenth of the rate (vlm.py).
"""
from __future__ import annotations

import time

import numpy as np

from rescue_eval.datamodules import world
from rescue_eval.models.vlm_requests import PLANNER_MAX_PIXELS, fit_image

COLOURS = list(world.COLORS)
KINDS = list(world.CORNERS)
POSITIONS = 16  # classes for a token's row and column: a cap above the demo pictures' 7 x 10 grid
LABEL_CLASSES = {"colour": 1 + len(COLOURS), "kind": 1 + len(KINDS), "row": POSITIONS, "column": POSITIONS}
SCENES_PER_STEP = 16
LEARNING_RATE = 3e-3


def token_labels(scene: world.Scene, rows: int, columns: int, cell: int) -> np.ndarray:
    """(rows x columns) x 4 ints: the colour and kind (0: background) of the shape covering most
    of each merged token's cell (`cell` px square at the processor's size), and the cell's row and
    column, in the tower's token order (row-major)."""
    from PIL import Image

    if rows > POSITIONS or columns > POSITIONS:
        raise ValueError(f"position labels cover at most {POSITIONS} x {POSITIONS} merged tokens, "
                         f"not {rows} x {columns}")
    # the processor resizes the picture to the grid; the instance map is stretched the same way
    instances = Image.fromarray(scene.instance_map()).resize((columns * cell, rows * cell), Image.NEAREST)
    cells = np.asarray(instances).reshape(rows, cell, columns, cell).transpose(0, 2, 1, 3).reshape(rows * columns, -1)
    labels = []
    for index, pixels in enumerate(cells):
        shape = int(np.bincount(pixels).argmax())
        colour, kind = 0, 0
        if shape:
            colour = 1 + COLOURS.index(scene.shapes[shape - 1].color)
            kind = 1 + KINDS.index(scene.shapes[shape - 1].kind)
        labels.append((colour, kind, index // columns, index % columns))
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
        loss = sum(F.cross_entropy(out, labels[:, k]) for k, out in enumerate(logits(inputs)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
    visual.eval()
    with torch.no_grad():
        _scale_mergers_to_unit_norm(visual, inputs)  # the last training batch: no held-out scene decides it
        inputs, labels = batch(processor, held_out)
        accuracy = {f"image tokens' {name} read right (vision pre-training)": float((out.argmax(-1) == labels[:, k])
                                                                                     .float().mean())
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
