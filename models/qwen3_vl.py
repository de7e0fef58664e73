"""Qwen3-VL planner and judge on Hugging Face transformers (CPU or GPU).

Both roles batch their requests into one `generate` call per chunk of `max_batch` prompts
(left padding). Answers are constrained to the role's JSON schema by xgrammar's transformers
logits processor and parsed leniently anyway (models/parsing.py).

Planner sampling is the Gumbel-max trick with one torch.Generator per row: hypothesis k draws
its noise from its own seed, so its draws do not depend on which other prompts share the batch
(its logits still move in the last digits with the padding: a token can change only at a tie
that close), and every row can have its own temperature. generate() itself runs greedy.
"""
from __future__ import annotations

import inspect
import json
import threading
from dataclasses import dataclass
from typing import Sequence

from PIL import Image

from rescue_eval.models.parsing import parse_rating, parse_verdict
from rescue_eval.models.prompts import DUEL_SCHEMA, PLAN_SCHEMA, RATE_SCHEMA, STRATEGIES, plan_messages
from rescue_eval.models.shared_prefix import PrefixedRow, generate_after_prefixes, item_groups, split_plan_prompt
from rescue_eval.models.loading import QWEN3_VL_MODEL_TYPES, check_loading_info, opens_thinking
from rescue_eval.models.tiny import resolve_checkpoint
from rescue_eval.models.vlm_requests import (JUDGE_MAX_PIXELS, PLANNER_MAX_PIXELS, check_plan_settings, duel_request,
                                             fit_image, plan_rows, PlanRow, rate_request, to_hypothesis)
from rescue_eval.core.types import DuelItem, Hypothesis, JudgeAnswer, PlanItem, RateItem


@dataclass
class Generation:
    text: str
    tokens_in: int  # prompt tokens, padding excluded (image tokens included)
    tokens_out: int  # generated tokens up to and including the stop token


class LoadedVLM:
    """One Qwen3-VL model + processor; planner and judge on the same checkpoint share it."""

    def __init__(self, path: str, device: str, dtype: str, device_map: str | None = None, role: str = "planner"):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(path)
        self.processor.tokenizer.padding_side = "left"  # generate appends on the right
        # the Auto class: Qwen3-VL-30B-A3B is qwen3_vl_moe, which the dense class would load with
        # random MLPs and only a warning
        # device_map ("auto"): a model too big for one GPU is spread over the visible ones by accelerate
        placement = {"device_map": device_map} if device_map else {}
        model, info = AutoModelForImageTextToText.from_pretrained(path, dtype=getattr(torch, dtype),
                                                                  output_loading_info=True, **placement)
        check_loading_info(role, path, info)
        self.model = (model if device_map else model.to(device)).eval()
        # a Thinking checkpoint's template opens <think> in the generation prompt: its answer is
        # what follows </think>, and text without it is reasoning cut short, not an answer
        self.thinking = opens_thinking(self.processor)
        self.device = self.model.device if device_map else device  # inputs go where the embeddings are
        eos = self.model.generation_config.eos_token_id or self.processor.tokenizer.eos_token_id
        self.stop_ids = list(eos) if isinstance(eos, (list, tuple)) else [eos]
        # the key/value cache's keyword and output field: `cache` from transformers 5.2x, `past_key_values` before
        self.cache_keyword = ("cache" if "cache" in inspect.signature(self.model.forward).parameters
                              else "past_key_values")
        # One generate() at a time, even when a planner and a judge sharing this model are served
        # from different threads: the model keeps per-call state (rope_deltas), the tokenizer
        # its padding settings, and the grammar cache is filled lazily.
        self.lock = threading.Lock()
        self._compiler = None
        self._grammars: dict[str, object] = {}

    def grammar(self, schema: dict):
        """The schema compiled for this tokenizer (compiled once, reused by every call)."""
        import xgrammar

        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            if self._compiler is None:
                # The mask must span the model's vocabulary (lm_head rows), which real Qwen
                # checkpoints pad beyond the tokenizer's length.
                info = xgrammar.TokenizerInfo.from_huggingface(
                    self.processor.tokenizer, vocab_size=self.model.config.text_config.vocab_size,
                    stop_token_ids=self.stop_ids)
                self._compiler = xgrammar.GrammarCompiler(info)
            # Compact separators: the answer starts '{"bbox_2d":[' and spends no tokens on spaces.
            self._grammars[key] = self._compiler.compile_json_schema(
                schema, any_whitespace=False, separators=(",", ":"))
        return self._grammars[key]

    def generate(self, conversations: list[list[dict]], images: list[list[Image.Image]],
                 max_new_tokens: int, schema: dict | None, sampler=None) -> list[Generation]:
        """One batched generate call; images[i] fill the {"type": "image"} parts of conversation i."""
        import torch

        with self.lock, torch.inference_mode():
            texts = [self.processor.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
                     for c in conversations]
            inputs = self.processor(text=texts, images=[im for row in images for im in row],
                                    padding=True, return_tensors="pt").to(self.device)
            return self.continue_prompts(inputs, max_new_tokens, schema, sampler)

    def continue_prompts(self, inputs: dict, max_new_tokens: int, schema: dict | None, sampler=None,
                         **cache) -> list[Generation]:
        """generate() on prepared inputs (the caller holds the lock); `cache` is a key/value cache
        already holding the first tokens of every row."""
        from transformers import LogitsProcessorList
        from xgrammar.contrib.hf import LogitsProcessor as GrammarLogitsProcessor

        # The grammar masks disallowed tokens to -inf first, so the sampler picks only allowed ones.
        processors = LogitsProcessorList()
        if schema is not None:
            processors.append(GrammarLogitsProcessor(self.grammar(schema)))  # single use per call
        if sampler is not None:
            processors.append(sampler)
        # Explicit greedy settings override sampling defaults a real checkpoint ships with.
        output = self.model.generate(**inputs, **cache, max_new_tokens=max_new_tokens, do_sample=False,
                                     repetition_penalty=1.0, logits_processor=processors)
        new_tokens = output[:, inputs["input_ids"].shape[1]:].tolist()
        prompt_lengths = inputs["attention_mask"].sum(dim=1).tolist()
        return [Generation(self._decode(tokens), int(n_in), self._count_until_stop(tokens))
                for tokens, n_in in zip(new_tokens, prompt_lengths)]

    def _count_until_stop(self, tokens: list[int]) -> int:
        for i, token in enumerate(tokens):
            if token in self.stop_ids:
                return i + 1
        return len(tokens)

    def _decode(self, tokens: list[int]) -> str:
        return self.processor.tokenizer.decode(tokens[:self._count_until_stop(tokens)], skip_special_tokens=True)


_LOADED: dict[tuple[str, str, str], LoadedVLM] = {}
_LOADED_LOCK = threading.Lock()


def load_shared(checkpoint: str, device: str = "cpu", dtype: str = "float32", device_map: str | None = None,
                role: str = "planner") -> LoadedVLM:
    """The model for (checkpoint, device, dtype), loaded on first request only."""
    with _LOADED_LOCK:
        key = (resolve_checkpoint(checkpoint), device, dtype, device_map)  # `tiny:x` and its path are one model
        if key not in _LOADED:
            _LOADED[key] = LoadedVLM(*key, role=role)
        return _LOADED[key]


class GumbelSampler:
    """Logits processor: sampling as argmax(logits / T + Gumbel noise), one generator per row.

    A plain callable (LogitsProcessorList takes any), so this module imports no model library
    until a model is loaded. Every row draws one full-vocabulary noise vector per step from its own seeded generator,
    so a row's samples are those it would get alone. A temperature of 0 means greedy.
    """

    def __init__(self, seeds: list[int], temperatures: list[float]):
        import torch

        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        self.temperatures = temperatures

    def __call__(self, input_ids, scores):
        import torch

        rows = []
        for row, generator, temperature in zip(scores, self.generators, self.temperatures):
            if temperature <= 0:
                rows.append(row)
                continue
            # noise from a CPU generator: the same stream on every device
            uniform = torch.rand(row.shape[-1], generator=generator, dtype=torch.float32)
            gumbel = -torch.log(-torch.log(uniform.clamp_(min=torch.finfo(torch.float32).tiny)))
            rows.append(row.float() / temperature + gumbel.to(row.device))
        return torch.stack(rows).to(scores.dtype)


class Qwen3VLPlanner:
    """Planner: item.n box hypotheses per item; hypothesis k uses strategy k % len(strategies),
    temperature (k // len(strategies)) % len(temperatures) and seed hypothesis_seed(item.seed, k).

    share_prefix (default): the image and query are prefilled once per item and the N strategy
    suffixes decoded from copies of that cache (models/shared_prefix.py); the answers are those
    of whole-prompt rows (share_prefix false), which prefill the image N times."""

    model_types = QWEN3_VL_MODEL_TYPES  # config.json model_type of the checkpoints it loads

    def __init__(self, checkpoint: str, device: str = "cpu", dtype: str = "float32",
                 max_new_tokens: int = 64, structured_output: bool = True, max_batch: int = 16,
                 strategies: Sequence[str] | None = None, temperatures: Sequence[float] = (0.3, 0.7, 1.0),
                 max_pixels: int = PLANNER_MAX_PIXELS, device_map: str | None = None, share_prefix: bool = True):
        self.vlm = load_shared(checkpoint, device, dtype, device_map)
        self.max_pixels = max_pixels
        self.max_new_tokens = max_new_tokens
        self.schema = PLAN_SCHEMA if structured_output else None
        self.max_batch = max_batch
        self.strategies, self.temperatures = check_plan_settings(strategies, temperatures)
        self.share_prefix = share_prefix

    def propose(self, batch: list[PlanItem]) -> list[list[Hypothesis]]:
        rows = plan_rows(batch, self.strategies, self.temperatures)
        images = [fit_image(item.image, self.max_pixels) for item in batch]  # once per item
        generate = self._after_shared_prefixes if self.share_prefix else self._whole_rows
        results: list[list[Hypothesis]] = [[] for _ in batch]
        for row, g in zip(rows, generate(batch, rows, images)):
            results[row.item].append(to_hypothesis(row, batch[row.item].image, g.text, g.tokens_in, g.tokens_out))
        return results

    def _whole_rows(self, batch: list[PlanItem], rows: list[PlanRow], images: list[Image.Image]) -> list[Generation]:
        generations = []
        for start in range(0, len(rows), self.max_batch):
            chunk = rows[start:start + self.max_batch]
            generations += self.vlm.generate([plan_messages(batch[row.item].query, row.strategy) for row in chunk],
                                             [[images[row.item]] for row in chunk], self.max_new_tokens,
                                             self.schema, row_sampler(chunk))
        return generations

    def _after_shared_prefixes(self, batch: list[PlanItem], rows: list[PlanRow],
                               images: list[Image.Image]) -> list[Generation]:
        generations = []
        for group in item_groups(rows, self.max_batch):
            items = list(dict.fromkeys(row.item for row in group))
            position = {item: i for i, item in enumerate(items)}
            heads, tails = zip(*(split_plan_prompt(self.vlm.processor, batch[i].query) for i in items))
            prefixed = [PrefixedRow(position[row.item], STRATEGIES[row.strategy] + tails[position[row.item]])
                        for row in group]
            generations += generate_after_prefixes(
                self.vlm, list(heads), [images[i] for i in items], prefixed, self.max_batch, self.max_new_tokens,
                self.schema, lambda chunk, group=group: row_sampler([group[i] for i in chunk]))
        return generations


def row_sampler(rows: list[PlanRow]) -> GumbelSampler:
    return GumbelSampler([row.seed for row in rows], [row.temperature for row in rows])


class Qwen3VLJudge:
    """Judge: greedy (deterministic) answers about masks drawn in red on the image. On a Thinking
    checkpoint the answer is what follows </think>; reasoning cut short by max_new_tokens is an
    unusable answer, counted (the hybrid score decides)."""

    model_types = QWEN3_VL_MODEL_TYPES  # config.json model_type of the checkpoints it loads

    def __init__(self, checkpoint: str, device: str = "cpu", dtype: str = "float32",
                 max_new_tokens: int = 16, structured_output: bool = True, max_batch: int = 16,
                 max_pixels: int = JUDGE_MAX_PIXELS, device_map: str | None = None):
        self.vlm = load_shared(checkpoint, device, dtype, device_map, role="judge")
        self.max_pixels = max_pixels
        self.max_new_tokens = max_new_tokens
        # A grammar from the first token would forbid a Thinking model's reasoning and its
        # </think>: such a judge answers freely and is parsed after </think> (as with vLLM
        # without a reasoning parser)
        self.structured_output = structured_output and not self.vlm.thinking
        self.max_batch = max_batch

    def rate(self, batch: list[RateItem]) -> list[JudgeAnswer]:
        return self._ask([rate_request(item, self.max_pixels) for item in batch], RATE_SCHEMA, parse_rating)

    def duel(self, batch: list[DuelItem]) -> list[JudgeAnswer]:
        return self._ask([duel_request(item, self.max_pixels) for item in batch], DUEL_SCHEMA, parse_verdict)

    def _ask(self, requests, schema, parse) -> list[JudgeAnswer]:
        conversations, images = [r[0] for r in requests], [r[1] for r in requests]
        answers = []
        for start in range(0, len(conversations), self.max_batch):
            end = start + self.max_batch
            generations = self.vlm.generate(conversations[start:end], images[start:end], self.max_new_tokens,
                                            schema if self.structured_output else None)
            answers += [JudgeAnswer(parse(g.text, thinking=self.vlm.thinking), g.text, g.tokens_in, g.tokens_out)
                        for g in generations]
        return answers
