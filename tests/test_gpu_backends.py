"""The GPU-only backends (vLLM planner / judge, the sam3 package's segmenter) without vllm, sam3
or a GPU: the requests they send (the transformers backend's prompts, per-hypothesis sampling, a
greedy judge), their glue code against stand-in modules with the real APIs' names, the
one-sentence errors that name the fix (the ROCm fallback is in test_rocm_fallback.py)."""
from __future__ import annotations

import os
import sys
import types
from contextlib import nullcontext
from importlib.machinery import ModuleSpec
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from rescue_eval.models import build_role, sam3_package, vllm_backend
from rescue_eval.models.prompts import DUEL_SCHEMA, PLAN_SCHEMA, RATE_SCHEMA, STRATEGIES, plan_messages
from rescue_eval.core.protocols import Judge, Planner, Segmenter
from rescue_eval.models.vlm_requests import duel_request, hypothesis_seed, plan_rows, rate_request
from rescue_eval.models.sam3_package import Sam3PackageSegmenter
from rescue_eval.models.vllm_backend import VLLMJudge, VLLMPlanner, judge_requests, plan_requests
from rescue_eval.config import PlannerConfig
from rescue_eval.core.errors import UsageError
from rescue_eval.core.types import DuelItem, PlanItem, RateItem, SegmentItem

pytestmark = pytest.mark.unit

TEMPERATURES = [0.3, 0.7, 1.0]
CHECKPOINT = "Qwen/Qwen3-VL-8B-Instruct"  # a hub id: resolve_checkpoint leaves it as it is


def make_image(seed: int, width: int = 64, height: int = 48) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def rect_mask(image: Image.Image, x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
    mask = np.zeros((image.height, image.width), dtype=bool)
    mask[y1:y2, x1:x2] = True
    return mask


def without_images(messages: list[dict]) -> tuple[list[dict], list[Image.Image]]:
    """vLLM messages back to the shared form: image parts as {"type": "image"}, images apart."""
    images = [part["image_pil"] for m in messages for part in m["content"] if part["type"] == "image_pil"]
    shared = [{**m, "content": [{"type": "image"} if part["type"] == "image_pil" else part for part in m["content"]]}
              for m in messages]
    return shared, images


def plan_batch() -> list[PlanItem]:
    return [PlanItem(make_image(0), "the thing to cut bread with", n=8, seed=11),
            PlanItem(make_image(1), "where you sit", n=3, seed=12)]


def judge_items():
    image = make_image(2)
    a, b = rect_mask(image, 5, 5, 30, 30), rect_mask(image, 20, 10, 60, 40)
    return [RateItem(image, a, "the cup")], [DuelItem(image, a, b, "the cup")]


# ---- requests, without vllm ---------------------------------------------------------------


def test_plan_requests_ask_what_the_transformers_backend_asks_with_per_hypothesis_sampling():
    batch = plan_batch()
    strategies = list(STRATEGIES)
    planned = plan_requests(batch, strategies, TEMPERATURES, max_tokens=40, structured=True)
    assert [row for row, _ in planned] == plan_rows(batch, strategies, TEMPERATURES)
    for row, (messages, sampling) in planned:
        item = batch[row.item]
        shared, images = without_images(messages)
        assert shared == plan_messages(item.query, strategies[row.index % len(strategies)])
        assert images == [item.image] and images[0] is item.image
        assert sampling == {"temperature": row.temperature, "seed": hypothesis_seed(item.seed, row.index),
                            "max_tokens": 40,
                            "structured_outputs": {"json": PLAN_SCHEMA, "disable_any_whitespace": True}}
    seeds = [sampling["seed"] for _, (_, sampling) in planned]
    assert len(set(seeds)) == len(seeds)  # every hypothesis its own sample


def test_eighteen_hypotheses_cross_every_strategy_with_every_temperature():
    """Six strategies and three temperatures: k % 6 and k % 3 would give only six of the 18 pairs."""
    strategies = list(STRATEGIES)
    rows = plan_rows([PlanItem(make_image(0), "q", n=18, seed=0)], strategies, [0.3, 0.7, 1.0])
    assert len(strategies) == 6 and len({(row.strategy, row.temperature) for row in rows}) == 18
    assert len({(row.strategy, row.temperature) for row in rows[:6]}) == 6


def test_schema_only_with_structured_output():
    rates, duels = judge_items()
    unconstrained = [plan_requests(plan_batch(), ["direct"], [1.0], 40, structured=False),
                     [(None, r) for r in judge_requests([rate_request(i) for i in rates], RATE_SCHEMA, 16, False)]]
    assert all("structured_outputs" not in sampling for group in unconstrained for _, (_, sampling) in group)


def test_judge_requests_are_the_shared_prompts_greedy():
    rates, duels = judge_items()
    for items, ask, schema in ((rates, rate_request, RATE_SCHEMA), (duels, duel_request, DUEL_SCHEMA)):
        asked = [ask(item) for item in items]
        for (messages, sampling), (expected_messages, expected_images) in zip(
                judge_requests(asked, schema, 16, True), asked):
            shared, images = without_images(messages)
            assert shared == expected_messages
            assert [np.asarray(i).tolist() for i in images] == [np.asarray(i).tolist() for i in expected_images]
            assert sampling == {"temperature": 0.0, "seed": None, "max_tokens": 16,
                                "structured_outputs": {"json": schema, "disable_any_whitespace": True}}
    # the mask overlays differ, and come in A, B order
    [(messages, _)] = judge_requests([duel_request(duels[0])], DUEL_SCHEMA, 16, True)
    a, b = without_images(messages)[1]
    assert np.asarray(a).tolist() != np.asarray(b).tolist()


def test_image_count_must_match_the_image_parts():
    with pytest.raises(ValueError):
        vllm_backend.with_images(plan_messages("q", "direct"), [])


# ---- the adapters against a stand-in vllm module ------------------------------------------


class FakeLLM:
    """vllm.LLM's constructor and chat(), answering by what the prompt asks."""

    def __init__(self, model: str, **kwargs):
        self.model, self.kwargs, self.calls = model, kwargs, []

    def chat(self, conversations, sampling_params, use_tqdm=True):
        self.calls.append((conversations, sampling_params))
        outputs = []
        for conversation in conversations:
            text = conversation[0]["content"][-1]["text"]
            answer = ('{"score":7}' if "Rate how well" in text else '{"winner":"B"}' if "Which mask" in text
                      else '{"bbox_2d":[100,250,500,750]}')
            outputs.append(SimpleNamespace(prompt_token_ids=[0] * 30,
                                           outputs=[SimpleNamespace(text=answer, token_ids=[1] * 9)]))
        return outputs


@pytest.fixture
def gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)


@pytest.fixture
def fake_vllm(monkeypatch, gpus):
    vllm = types.ModuleType("vllm")
    sampling = types.ModuleType("vllm.sampling_params")
    vllm.__version__ = "0.33.0"
    vllm.LLM = FakeLLM
    vllm.EngineArgs = type("EngineArgs", (), {"device_ids": None})
    vllm.SamplingParams = sampling.SamplingParams = lambda **kwargs: SimpleNamespace(**kwargs)
    sampling.StructuredOutputsParams = lambda **kwargs: ("StructuredOutputsParams", kwargs)
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", sampling)
    monkeypatch.setattr(vllm_backend, "_ENGINES", {})
    return vllm


def test_engine_workers_are_spawned_not_forked(fake_vllm, monkeypatch):
    """A forked worker would inherit the harness's initialised torch.distributed group."""
    monkeypatch.delenv("VLLM_WORKER_MULTIPROC_METHOD", raising=False)
    VLLMPlanner(CHECKPOINT, device="cuda:0")
    assert os.environ["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"
    monkeypatch.setenv("VLLM_WORKER_MULTIPROC_METHOD", "forkserver")  # the user's choice is kept
    monkeypatch.setattr(vllm_backend, "_ENGINES", {})
    VLLMPlanner(CHECKPOINT, device="cuda:0")
    assert os.environ["VLLM_WORKER_MULTIPROC_METHOD"] == "forkserver"


def test_planner_and_judge_share_one_engine_with_prefix_caching(fake_vllm):
    planner = VLLMPlanner(CHECKPOINT, device="cuda:2", dtype="bfloat16", tensor_parallel_size=2,
                          gpu_memory_utilization=0.8, temperatures=TEMPERATURES)
    judge = VLLMJudge(CHECKPOINT, device="cuda:2", dtype="bfloat16", tensor_parallel_size=2,
                      gpu_memory_utilization=0.8)
    assert isinstance(planner, Planner) and isinstance(judge, Judge)
    assert planner.engine is judge.engine
    llm = planner.engine.llm
    assert llm.model == CHECKPOINT
    assert llm.kwargs == {"dtype": "bfloat16", "tensor_parallel_size": 2, "gpu_memory_utilization": 0.8,
                          "enable_prefix_caching": True, "max_model_len": 32768,
                          "limit_mm_per_prompt": {"image": 2, "video": 0},
                          "device_ids": [2, 3]}
    on_first_gpus = VLLMJudge(CHECKPOINT, device="cuda:0", dtype="bfloat16")
    assert on_first_gpus.engine is not judge.engine and "device_ids" not in on_first_gpus.engine.llm.kwargs


def test_adapters_turn_outputs_into_hypotheses_and_answers(fake_vllm):
    planner = VLLMPlanner(CHECKPOINT, device="cuda:0", max_new_tokens=40, temperatures=TEMPERATURES)
    batch = plan_batch()
    hypotheses = planner.propose(batch)
    assert [len(h) for h in hypotheses] == [8, 3]
    assert [h.index for h in hypotheses[0]] == list(range(8))
    first = hypotheses[1][0]
    assert first.status == "ok" and first.box == pytest.approx((6.4, 12.0, 32.0, 36.0))
    assert (first.tokens_in, first.tokens_out) == (30, 9)
    [(conversations, params)] = planner.engine.llm.calls
    assert len(conversations) == len(params) == 11  # one chat call for the whole batch
    assert params[0].seed == hypothesis_seed(11, 0) and params[0].temperature == 0.3
    assert params[0].structured_outputs == ("StructuredOutputsParams",
                                            {"json": PLAN_SCHEMA, "disable_any_whitespace": True})

    judge = VLLMJudge(CHECKPOINT, device="cuda:0", structured_output=False)
    rates, duels = judge_items()
    assert [a.value for a in judge.rate(rates)] == [pytest.approx(0.7)]
    assert [a.value for a in judge.duel(duels)] == ["B"]
    assert judge.engine.llm.calls[-1][1][0].temperature == 0.0
    assert not hasattr(judge.engine.llm.calls[-1][1][0], "structured_outputs")


def test_a_thinking_judge_gets_the_reasoning_parser_and_answers_only_after_think(fake_vllm):
    from rescue_eval.models import tiny

    fake_vllm.EngineArgs.reasoning_parser = ""
    thinking = str(tiny.build("qwen3-vl-moe-thinking"))
    judge = VLLMJudge(thinking, device="cuda:0")
    assert judge.engine.thinking and judge.engine.llm.kwargs["reasoning_parser"] == "qwen3"
    rates, duels = judge_items()
    assert [a.value for a in judge.duel(duels)] == [None]  # no </think>: reasoning cut short, no verdict
    instruct = VLLMJudge(str(tiny.build("qwen3-vl")), device="cuda:0")
    assert not instruct.engine.thinking and "reasoning_parser" not in instruct.engine.llm.kwargs
    assert [a.value for a in instruct.duel(duels)] == ["B"]


def test_roles_sharing_an_engine_need_the_same_engine_settings(fake_vllm):
    VLLMPlanner(CHECKPOINT, device="cuda:0", gpu_memory_utilization=0.8)
    with pytest.raises(UsageError, match="same values"):
        VLLMJudge(CHECKPOINT, device="cuda:0", gpu_memory_utilization=0.5)


def test_a_vllm_without_device_ids_runs_only_on_the_first_gpus(fake_vllm):
    fake_vllm.EngineArgs = type("EngineArgs", (), {})
    assert VLLMPlanner(CHECKPOINT, device="cuda:0").engine.llm.kwargs["tensor_parallel_size"] == 1
    with pytest.raises(UsageError, match="CUDA_VISIBLE_DEVICES and set --judge.device cuda:0"):
        VLLMJudge(CHECKPOINT, device="cuda:1")


def test_an_in_process_engine_under_torch_distributed_is_refused(fake_vllm, monkeypatch):
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    with pytest.raises(UsageError, match="unset it"):
        VLLMPlanner(CHECKPOINT, device="cuda:0")


# ---- errors that name the fix ------------------------------------------------------------


def test_vllm_missing_names_the_install(monkeypatch, gpus):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    with pytest.raises(UsageError, match=r"pip install 'rescue-eval\[vllm\]'"):
        VLLMPlanner(CHECKPOINT, device="cuda:0")


def test_vllm_needs_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(UsageError, match="none is visible; use --judge.backend transformers"):
        VLLMJudge(CHECKPOINT, device="cuda:0")


def test_tensor_parallel_engine_must_fit_the_visible_gpus(gpus):
    with pytest.raises(UsageError, match="needs 2 GPU"):
        VLLMPlanner(CHECKPOINT, device="cuda:3", tensor_parallel_size=2)


def test_build_role_vllm_on_cpu_names_the_fix():
    with pytest.raises(UsageError, match=r"--planner\.device cuda:K, or use --planner\.backend transformers"):
        build_role("planner", PlannerConfig(backend="vllm", device="cpu"))


def test_sam3_missing_names_the_install(monkeypatch, gpus):
    monkeypatch.setitem(sys.modules, "sam3", None)
    with pytest.raises(UsageError, match=r"pip install 'rescue-eval\[sam3\]'"):
        Sam3PackageSegmenter("facebook/sam3", device="cuda:0")


def test_sam3_needs_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError, match="none is visible"):
        Sam3PackageSegmenter("facebook/sam3", device="cuda:0")


def test_sam3_weights_not_found_says_the_package_ships_none(tmp_path):
    for checkpoint in ("tiny:sam3-tracker", str(tmp_path)):  # a folder without sam3.pt
        with pytest.raises(UsageError, match="ships no weights.*facebook/sam3"):
            sam3_package.weights_file(checkpoint)
    (tmp_path / "sam3.pt").write_bytes(b"")
    assert sam3_package.weights_file(str(tmp_path)) == str(tmp_path / "sam3.pt")


def test_bpe_vocabulary_beside_the_weights_or_a_clear_error(tmp_path, monkeypatch):
    weights = tmp_path / "sam3.pt"
    monkeypatch.setattr(sam3_package.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UsageError, match="bpe_simple_vocab_16e6.txt.gz was not found"):
        sam3_package.bpe_vocab_file(str(weights))
    (tmp_path / "bpe_simple_vocab_16e6.txt.gz").write_bytes(b"")
    assert sam3_package.bpe_vocab_file(str(weights)) == str(tmp_path / "bpe_simple_vocab_16e6.txt.gz")


# ---- the sam3 segmenter against a stand-in sam3 package ------------------------------------


@pytest.fixture
def fake_sam3(monkeypatch, gpus, tmp_path):
    """build_sam3_image_model / Sam3Processor / predict_inst with sam3 0.1.4's shapes: masks are
    B x 1 x H x W floats, squeezed to 1 x H x W for one box."""
    calls = {"build": [], "set_image": 0}

    class Model:
        def predict_inst(self, state, box, multimask_output):
            assert multimask_output is False
            masks = np.zeros((len(box), 1, state["original_height"], state["original_width"]), np.float32)
            for k, (x1, y1, x2, y2) in enumerate(box.astype(int)):
                masks[k, 0, y1:y2, x1:x2] = 1.0
            return masks[0] if len(box) == 1 else masks, np.ones((len(box), 1)), None  # torch's squeeze(0)

    class Processor:
        def __init__(self, model, device):
            self.device = device

        def set_image(self, image):
            calls["set_image"] += 1
            return {"original_height": image.height, "original_width": image.width}

    def build_sam3_image_model(**kwargs):
        calls["build"].append(kwargs)
        return Model()

    modules = {name: types.ModuleType(name) for name in
               ("sam3", "sam3.model", "sam3.model.sam3_image_processor", "sam3.model_builder")}
    modules["sam3"].__spec__ = ModuleSpec("sam3", None)  # found, as an installed wheel, without assets/
    modules["sam3.model.sam3_image_processor"].Sam3Processor = Processor
    modules["sam3.model_builder"].build_sam3_image_model = build_sam3_image_model
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(torch.cuda, "device", lambda device: nullcontext())  # no GPU to switch to
    for name in ("sam3.pt", "bpe_simple_vocab_16e6.txt.gz"):
        (tmp_path / name).write_bytes(b"")
    return calls, str(tmp_path)


def test_sam3_segmenter_one_encoding_per_image_one_mask_per_box(fake_sam3):
    calls, checkpoint = fake_sam3
    segmenter = Sam3PackageSegmenter(checkpoint, device="cuda:1")
    assert isinstance(segmenter, Segmenter)
    [build] = calls["build"]
    assert build["enable_inst_interactivity"] is True and build["load_from_HF"] is False
    assert build["checkpoint_path"].endswith("sam3.pt") and build["bpe_path"].endswith(".txt.gz")
    assert segmenter.processor.device == "cuda:1"

    image = make_image(3)
    boxes = [(0.0, 0.0, 10.0, 20.0), (5.0, 5.0, 64.0, 48.0)]
    several, one, none = segmenter.segment([SegmentItem(image, boxes), SegmentItem(image, boxes[:1]),
                                            SegmentItem(image, [])])
    assert calls["set_image"] == 2  # one encoder pass per item with boxes
    assert [m.shape for m in several + one] == [(48, 64)] * 3 and all(m.dtype == bool for m in several + one)
    assert several[0].sum() == 200 and several[1].sum() == 59 * 43
    assert np.array_equal(one[0], several[0]) and none == []
