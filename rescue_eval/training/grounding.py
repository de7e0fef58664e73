"""Two auxiliary losses that make the demo planner look where its query points.

Trained on its answers alone, the planner twin learnt to look at the picture but not to read
the query: asked for each named shape of a picture in turn it gave one box whatever the name
(README). So every answer that gives a shape's box also trains, at the answer's positions:
- **where to look**: head FOCUS_HEAD of language-model layer FOCUS_LAYER puts its attention on
  the image tokens the shape covers (a token counts when the shape covers an eighth of its cell,
  else the shape's best-covered token), with loss -log(that attention mass);
- **what to read there**: a linear probe on that layer's attention output predicts the shape's
  box in steps of 100 on the 0..1000 grid (cross-entropy), so what the head reads carries the
  box. The vision tower's pre-training gives each image token the box of the shape covering it
  (vision.py).
The layer's other heads and the layers above learn only from the answers. The probe is dropped
before the weights are saved.
"""
from __future__ import annotations

import numpy as np

from rescue_eval.training import vision
from rescue_eval.training.examples import box_steps

FOCUS_LAYER, FOCUS_HEAD = 2, 0
COVERED = 0.125  # the share of a token's cell a shape must cover for the token to count as its


class GroundingLoss:
    """Installs itself on `model`: a hook on the focus layer's attention, and the probe as
    `model.grounding_probe` (so the optimiser trains it); `remove()` undoes both."""

    def __init__(self, model, processor):
        import torch

        self.model = model
        self.merge = processor.image_processor.merge_size
        self.cell = processor.image_processor.patch_size * self.merge
        self.image_token = model.config.image_token_id
        self.captured = {}
        self.attention = model.model.language_model.layers[FOCUS_LAYER].self_attn
        self.hook = self.attention.register_forward_hook(self._capture, with_kwargs=True)
        model.grounding_probe = torch.nn.Linear(model.config.text_config.hidden_size, 4 * vision.BOX_CLASSES)

    def _capture(self, module, args, kwargs, output) -> None:
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        self.captured.update(hidden=hidden, rotary=kwargs["position_embeddings"], output=output[0])

    def focus_weights(self):
        """The focus head's attention weights (batch x query x key) in the forward pass just run,
        computed as eager attention does: the model itself runs SDPA, which keeps no weights and
        takes half the time."""
        import torch
        from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb

        layer, hidden = self.attention, self.captured["hidden"]
        heads = (*hidden.shape[:-1], -1, layer.head_dim)
        query = layer.q_norm(layer.q_proj(hidden).view(heads))[:, :, FOCUS_HEAD]
        key = layer.k_norm(layer.k_proj(hidden).view(heads))[:, :, FOCUS_HEAD // layer.num_key_value_groups]
        query, key = apply_rotary_pos_emb(query[:, None], key[:, None], *self.captured["rotary"])
        scores = (query[:, 0] @ key[:, 0].transpose(1, 2)) * layer.scaling
        causal = torch.ones(scores.shape[-2:], dtype=torch.bool).tril()
        return scores.masked_fill(~causal, float("-inf")).softmax(-1)

    def target_tokens(self, mask: np.ndarray, grid_thw) -> np.ndarray:
        _, height, width = grid_thw
        shares = vision.cell_coverage(mask.astype(np.int32), height // self.merge, width // self.merge, self.cell)[:, 1]
        return shares >= COVERED if (shares >= COVERED).any() else shares == shares.max()

    def _flatten(self, inputs, answers: list[tuple[int, range, np.ndarray]]):
        """Every answer position as (row, position, answer index), and per answer its target's
        image tokens (each row holds one picture, the planner's)."""
        import torch

        places = torch.tensor([(row, position, a) for a, (row, positions, _) in enumerate(answers)
                               for position in positions])
        on_target = torch.zeros(len(answers), inputs["input_ids"].shape[1], dtype=torch.bool)
        for a, (row, _, mask) in enumerate(answers):
            image = (inputs["input_ids"][row] == self.image_token).nonzero()[:, 0]
            covered = self.target_tokens(mask, inputs["image_grid_thw"][row].tolist())
            on_target[a, image[torch.from_numpy(covered)]] = True
        return places.unbind(1), on_target

    def attention_on_targets(self, inputs, answers: list[tuple[int, range, np.ndarray]]):
        """For `answers` (batch row, the positions that predict the answer's tokens, the target's
        mask) of the forward pass just run: at every answer position, the focus head's attention mass
        on the target's image tokens, and the position's answer index."""
        places, on_target = self._flatten(inputs, answers)
        return self._mass(places, on_target), places[2]

    def _mass(self, places, on_target):
        rows, positions, index = places
        return (self.focus_weights()[rows, positions] * on_target[index]).sum(-1)

    def __call__(self, inputs, answers: list[tuple[int, range, np.ndarray]]):
        """The sum of both losses, each a mean over the answers' positions."""
        import torch
        import torch.nn.functional as F

        if not answers:
            return 0.0
        places, on_target = self._flatten(inputs, answers)
        rows, positions, index = places
        logits = self.model.grounding_probe(self.captured["output"][rows, positions]).view(-1, vision.BOX_CLASSES)
        boxes = torch.tensor([box_steps(mask) for _, _, mask in answers])[index].view(-1)
        return -(self._mass(places, on_target) + 1e-6).log().mean() + F.cross_entropy(logits, boxes)

    def remove(self) -> None:
        self.hook.remove()
        del self.model.grounding_probe
