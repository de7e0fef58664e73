"""One prefill per sample for the transformers planner.

A sample's N hypothesis prompts differ only in the strategy instruction, which comes last
(models/prompts.plan_conversation). The part before it (chat header, image, query, answer
format) is prefilled once per sample: the vision encoder runs once and the prefix's key/value
cache is computed once. Each decode chunk starts from a copy of those caches, one row per
hypothesis, prefills only the row's own suffix (its instruction and the generation prompt) and
decodes with the row's seed and temperature.

A row sees the very tokens, at the very positions, of its whole prompt: suffixes are left-padded
to the chunk's longest, and that padding (between prefix and suffix) is masked and skipped by
the positions, as left padding is in per-row generation. tests/test_shared_prefix.py compares
the two, greedy and sampled. Library facts used (transformers 5.16-5.24): a cache passed to
generate() holds the first tokens of input_ids, which are not fed again; Qwen3-VL continues a
cached prompt at text positions + `base_model.rope_deltas` (one delta per row, set by the
prefill); the keyword is `cache` from 5.2x, `past_key_values` before.
"""
from __future__ import annotations

import copy
import itertools
from typing import Callable, NamedTuple

from PIL import Image

from rescue_eval.models.prompts import plan_conversation

MARKER = "\x00instruction\x00"
PER_TOKEN = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")  # processor outputs per token


class PrefixedRow(NamedTuple):
    """One prompt to generate: a prefilled prefix and the text that follows it."""
    prefix: int  # index into the prefixes prefilled together
    suffix: str


def item_groups(rows: list, max_rows: int) -> list[list]:
    """Rows (in item order) cut into groups of whole items, at most max_rows rows per group unless
    one item alone has more: a group's prefixes are prefilled together."""
    groups: list[list] = [[]]
    for _, item_rows in itertools.groupby(rows, key=lambda row: row.item):
        item_rows = list(item_rows)
        if groups[-1] and len(groups[-1]) + len(item_rows) > max_rows:
            groups.append([])
        groups[-1] += item_rows
    return [group for group in groups if group]


def split_plan_prompt(processor, query: str) -> tuple[str, str]:
    """The rendered planner prompt before and after the strategy instruction."""
    text = processor.apply_chat_template(plan_conversation(query, MARKER), add_generation_prompt=True, tokenize=False)
    head, _, tail = text.rpartition(MARKER)  # the last one: a query may contain the marker too
    return head, tail


def generate_after_prefixes(vlm, prefixes: list[str], images: list[Image.Image], rows: list[PrefixedRow],
                            max_batch: int, max_new_tokens: int, schema: dict | None,
                            sampler_for: Callable[[range], object]) -> list:
    """Generations of `rows` (in order), `max_batch` rows per generate call; prefix i holds
    images[i]. sampler_for(range of rows) gives the logits processor of a chunk."""
    import torch

    with vlm.lock, torch.inference_mode():
        inputs = vlm.processor(text=prefixes, images=images, padding=True, return_tensors="pt").to(vlm.device)
        prefix_cache = getattr(vlm.model(**inputs, use_cache=True), vlm.cache_keyword)
        rope_deltas = vlm.model.base_model.rope_deltas
        suffix_ids = vlm.processor.tokenizer([row.suffix for row in rows], add_special_tokens=False)["input_ids"]
        pad_id = vlm.processor.tokenizer.pad_token_id
        generations = []
        for start in range(0, len(rows), max_batch):
            chunk = range(start, min(start + max_batch, len(rows)))
            which = torch.tensor([rows[i].prefix for i in chunk])  # on the CPU: it indexes tensors on every device
            cache = copy.deepcopy(prefix_cache)
            cache.batch_select_indices(which)
            vlm.model.base_model.rope_deltas = rope_deltas[which]
            chunk_inputs = append_suffixes(inputs, which, [suffix_ids[i] for i in chunk], pad_id)
            generations += vlm.continue_prompts(chunk_inputs, max_new_tokens, schema, sampler_for(chunk),
                                                **{vlm.cache_keyword: cache})
        return generations


def append_suffixes(inputs: dict, which, suffixes: list[list[int]], pad_id: int) -> dict:
    """Per-token inputs of the prefixes `which`, each followed by its suffix, left-padded between."""
    import torch

    width = max(map(len, suffixes))
    ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in suffixes])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in suffixes])
    tails = {"input_ids": ids, "attention_mask": mask}  # token types of the text: 0
    return {key: torch.cat([inputs[key][which], tails.get(key, torch.zeros_like(ids)).to(inputs[key].device,
                                                                                         inputs[key].dtype)], dim=1)
            for key in PER_TOKEN if key in inputs}
