"""The GPU tier: the adapters on CUDA in bfloat16 on their twins, the dedicated layout on one GPU,
and the GPU-only backends (the sam3 package, vLLM) when installed. Skipped where no CUDA device
is visible (tests/conftest.py); tests/gpu/run.sh runs it on a lent GPU machine."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from rescue_eval.core.types import DuelItem, PlanItem, RateItem, ScoreItem, SegmentItem

pytestmark = pytest.mark.gpu

DEVICE = "cuda:0"


def scene(seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    pixels[60:180, 80:240] = (200, 40, 40)
    return Image.fromarray(pixels)


def box_mask(x1, y1, x2, y2) -> np.ndarray:
    mask = np.zeros((240, 320), bool)
    mask[y1:y2, x1:x2] = True
    return mask


def test_qwen3_vl_planner_and_judge_in_bfloat16():
    from rescue_eval.models.qwen3_vl import Qwen3VLJudge, Qwen3VLPlanner

    planner = Qwen3VLPlanner("tiny:qwen3-vl", device=DEVICE, dtype="bfloat16", max_new_tokens=32)
    [hypotheses] = planner.propose([PlanItem(scene(), "the red rectangle", n=8, seed=0)])
    assert [h.index for h in hypotheses] == list(range(8)) and all(h.tokens_out > 0 for h in hypotheses)
    assert all(h.status in ("ok", "degenerate") for h in hypotheses)  # the grammar holds on CUDA too
    judge = Qwen3VLJudge("tiny:qwen3-vl", device=DEVICE, dtype="bfloat16")
    [rating] = judge.rate([RateItem(scene(), box_mask(80, 60, 240, 180), "the red rectangle")])
    [verdict] = judge.duel([DuelItem(scene(), box_mask(80, 60, 240, 180), box_mask(0, 0, 50, 50), "q")])
    assert rating.value is not None and verdict.value in ("A", "B")


def test_the_shared_prefix_planner_answers_as_whole_rows_on_cuda():
    """Greedy and sampled rows of two samples, one prefilled once each, against whole prompts, in
    float32: in bfloat16 whole-prompt rows themselves change with the batch's shapes, and some of
    these rows differed on the H200 (tests/gpu/RESULTS.md)."""
    from rescue_eval.models.qwen3_vl import Qwen3VLPlanner

    items = [PlanItem(scene(1), "the red rectangle", n=8, seed=3), PlanItem(scene(2), "the left one", n=20, seed=4)]
    answers = [Qwen3VLPlanner("tiny:qwen3-vl", device=DEVICE, dtype="float32", max_new_tokens=32, share_prefix=flag,
                              temperatures=(0.0, 0.7)).propose(items) for flag in (True, False)]
    assert answers[0] == answers[1]


def test_the_moe_thinking_judge_loads_on_cuda():
    from transformers import Qwen3VLMoeForConditionalGeneration

    from rescue_eval.models.qwen3_vl import Qwen3VLJudge

    judge = Qwen3VLJudge("tiny:qwen3-vl-moe-thinking", device=DEVICE, dtype="bfloat16", max_new_tokens=8)
    assert isinstance(judge.vlm.model, Qwen3VLMoeForConditionalGeneration) and judge.vlm.thinking
    [answer] = judge.rate([RateItem(scene(), box_mask(80, 60, 240, 180), "q")])
    assert answer.tokens_out > 0


def test_sam3_tracker_on_cuda_matches_cpu(monkeypatch):
    """The low-resolution logits on CUDA against CPU's in float32, and masks in bfloat16. Masks in
    bfloat16 cannot be compared with float32's on the twin: its random logits are about 1e-5, so
    rounding flips them about the threshold (half of one box's pixels on the H200 and on CPU)."""
    from rescue_eval.models import sam3_tracker

    logits = []
    fill_holes = sam3_tracker.fill_holes
    monkeypatch.setattr(sam3_tracker, "fill_holes", lambda low_res: logits.append(low_res) or fill_holes(low_res))
    boxes = [(80.0, 60.0, 240.0, 180.0), (10.0, 10.0, 60.0, 50.0)]
    for device in (DEVICE, "cpu"):
        sam3_tracker.Sam3TrackerSegmenter("tiny:sam3-tracker", device=device).segment([SegmentItem(scene(), boxes)])
    on_gpu, on_cpu = logits
    assert on_gpu.shape == on_cpu.shape and (on_gpu - on_cpu).abs().max() <= 0.01 * on_cpu.abs().max()
    [masks] = sam3_tracker.Sam3TrackerSegmenter("tiny:sam3-tracker", device=DEVICE, dtype="bfloat16").segment(
        [SegmentItem(scene(), boxes)])
    assert [(m.shape, m.dtype) for m in masks] == [((240, 320), np.dtype(bool))] * 2


def test_siglip2_in_bfloat16_matches_float32_on_cpu():
    from rescue_eval.models.siglip2 import Siglip2Scorer

    item = ScoreItem(scene(), [box_mask(80, 60, 240, 180), box_mask(0, 0, 100, 100)], "the red rectangle")
    [on_gpu] = Siglip2Scorer("tiny:siglip2", device=DEVICE, dtype="bfloat16").score([item])
    [on_cpu] = Siglip2Scorer("tiny:siglip2").score([item])
    assert np.allclose(on_gpu, on_cpu, atol=0.02)


def test_dedicated_layout_on_one_gpu(tmp_path, cli_env):
    """Four ranks, each role on rank 0-3, every model on the one GPU; the job finishes clean."""
    out = tmp_path / "dedicated"
    devices = [arg for role in ("planner", "executor", "scorer", "judge")
               for arg in (f"--{role}.device", DEVICE, f"--{role}.dtype", "bfloat16")]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=4", "-m", "rescue_eval",
                           "run", "--config", "configs/demo_dedicated.yaml", "--output", str(out), "--max_n", "4",
                           "--run.progress", "false", "--wandb.enabled", "false", *devices],
                          env=cli_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_samples"] == 16 and summary["n_failed"] == 0


@pytest.mark.skipif(importlib.util.find_spec("sam3") is None, reason="the sam3 package is not installed")
def test_sam3_package_on_a_randomly_initialised_model(tmp_path, monkeypatch):
    import torch
    from sam3.model_builder import build_sam3_image_model

    from rescue_eval.models import sam3_package

    model = build_sam3_image_model(bpe_path=sam3_package.bpe_vocab_file(str(tmp_path / "sam3.pt")), device="cuda",
                                   checkpoint_path=None, load_from_HF=False, enable_inst_interactivity=True)
    torch.save(model.state_dict(), tmp_path / "sam3.pt")
    segmenter = sam3_package.Sam3PackageSegmenter(str(tmp_path / "sam3.pt"), device=DEVICE, dtype="bfloat16")
    [masks] = segmenter.segment([SegmentItem(scene(), [(80.0, 60.0, 240.0, 180.0)])])
    assert masks[0].shape == (240, 320) and masks[0].dtype == bool


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
def test_vllm_planner_and_judge_on_the_twin():
    from rescue_eval.models.vllm_backend import VLLMJudge, VLLMPlanner

    planner = VLLMPlanner("tiny:qwen3-vl", device=DEVICE, gpu_memory_utilization=0.3, max_model_len=4096)
    [hypotheses] = planner.propose([PlanItem(scene(), "the red rectangle", n=4, seed=0)])
    assert [h.index for h in hypotheses] == [0, 1, 2, 3]
    judge = VLLMJudge("tiny:qwen3-vl", device=DEVICE, gpu_memory_utilization=0.3, max_model_len=4096)
    [verdict] = judge.duel([DuelItem(scene(), box_mask(80, 60, 240, 180), box_mask(0, 0, 50, 50), "q")])
    assert verdict.value in ("A", "B", None)
