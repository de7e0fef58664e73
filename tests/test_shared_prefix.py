"""The transformers planner's shared prefix (models/shared_prefix.py) on the tiny Qwen3-VL twin:
the same answers as whole-prompt rows for the same seeds, greedy and sampled, across prefill
groups and decode chunks; the image encoded once per sample whatever N; the split prompt
tokenizes as the whole one."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from rescue_eval.core.types import PlanItem
from rescue_eval.models import tiny
from rescue_eval.models.prompts import STRATEGIES, plan_messages
from rescue_eval.models.qwen3_vl import Qwen3VLPlanner
from rescue_eval.models.shared_prefix import item_groups, split_plan_prompt
from rescue_eval.models.vlm_requests import plan_rows

pytestmark = pytest.mark.unit

MAX_BATCH = 16


@pytest.fixture(scope="module")
def checkpoint() -> str:
    return tiny.resolve_checkpoint("tiny:qwen3-vl")


def image(seed: int, width: int, height: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


# Three images of different sizes (different prefix lengths, so the prefixes are left-padded
# together); n = 8 + 1 rows share one prefill group, n = 20 is a group of its own in two chunks.
ITEMS = [PlanItem(image(1, 320, 240), "the red ball", 8, 11),
         PlanItem(image(2, 200, 300), "the object that could roll, left of the blue triangle", 1, 12),
         PlanItem(image(3, 640, 480), "the largest shape with the most corners", 20, 13)]


@pytest.mark.parametrize("temperatures", [(0.0,), (0.3, 0.7, 1.0)], ids=["greedy", "sampled"])
def test_shared_prefix_answers_equal_whole_prompt_rows(checkpoint, temperatures):
    shared, whole = (Qwen3VLPlanner(checkpoint, max_new_tokens=32, max_batch=MAX_BATCH, temperatures=temperatures,
                                    share_prefix=flag) for flag in (True, False))
    got, expected = shared.propose(ITEMS), whole.propose(ITEMS)
    assert [[h.index for h in hs] for hs in got] == [list(range(item.n)) for item in ITEMS]
    assert got == expected
    texts = {h.raw_text for hs in got for h in hs}
    assert len(texts) > 5  # the rows really differ, so equal lists compare something


def test_the_image_is_encoded_once_per_sample_whatever_n(checkpoint):
    planner = Qwen3VLPlanner(checkpoint, max_new_tokens=8, max_batch=MAX_BATCH)
    model = planner.vlm.model.base_model
    encoded, prefilled = [], []
    hooks = [model.visual.register_forward_hook(lambda m, args, kwargs, out: encoded.append(len(kwargs["grid_thw"])),
                                                with_kwargs=True),
             model.language_model.register_forward_hook(
                 lambda m, args, kwargs, out: prefilled.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True)]
    try:
        per_n = {}
        for n in (1, 8, 32):
            encoded.clear(), prefilled.clear()
            planner.propose([PlanItem(image(1, 320, 240), "the red ball", n, 5)])
            per_n[n] = (sum(encoded), [length for length in prefilled if length > 1])
    finally:
        for hook in hooks:
            hook.remove()
    head, _ = split_plan_prompt(planner.vlm.processor, "the red ball")
    prefix_length = len(planner.vlm.processor(text=[head], images=[image(1, 320, 240)])["input_ids"][0])
    for n, (images, prefills) in per_n.items():
        assert images == 1
        # one prefill of the prefix, then one of the suffixes per decode chunk of at most MAX_BATCH rows
        assert prefills[0] == prefix_length and len(prefills) == 1 + -(-n // MAX_BATCH)


def test_the_split_prompt_tokenizes_as_the_whole_prompt(checkpoint):
    """Prefix tokens + suffix tokens == the whole prompt's tokens for every strategy: no token
    merges across the split (else shared and whole-row answers could differ)."""
    planner = Qwen3VLPlanner(checkpoint, max_new_tokens=8)
    processor = planner.vlm.processor
    for query in ("the red ball", "ends with a newline\n", "x" * 50, "contains \x00instruction\x00 the marker"):
        head, tail = split_plan_prompt(processor, query)
        for strategy, instruction in STRATEGIES.items():
            whole = processor.apply_chat_template(plan_messages(query, strategy), add_generation_prompt=True,
                                                  tokenize=False)
            assert head + instruction + tail == whole
            tokens = processor.tokenizer([head, instruction + tail, whole], add_special_tokens=False)["input_ids"]
            assert tokens[0] + tokens[1] == tokens[2]


def test_item_groups_keep_items_whole():
    items = [PlanItem(image(0, 8, 8), "q", n, 0) for n in (8, 1, 20, 3, 16, 0, 2)]
    groups = item_groups(plan_rows(items, list(STRATEGIES), [0.0]), MAX_BATCH)
    assert [[row.item for row in group] for group in groups] == [
        [0] * 8 + [1], [2] * 20, [3] * 3, [4] * 16, [6] * 2]


def test_share_prefix_is_a_key_of_the_transformers_planner_only():
    from rescue_eval.core.errors import UsageError
    from rescue_eval.models import adapter_kwargs
    from rescue_eval.sections import PlannerConfig

    assert adapter_kwargs("planner", PlannerConfig())["share_prefix"] is True
    assert adapter_kwargs("planner", PlannerConfig(share_prefix=False))["share_prefix"] is False
    with pytest.raises(UsageError, match="planner.share_prefix is set but planner.backend vllm does not use it"):
        adapter_kwargs("planner", PlannerConfig(backend="vllm", share_prefix=False))
