"""Segmenter backend: SAM 3 through Meta's `sam3` package, on a CUDA (or ROCm) GPU only.

Single instance, as in models/sam3_tracker.py: SAM 3's SAM-1 task predictor turns one box into
one mask (the concept path, `set_text_prompt` / exemplar boxes, would return every similar
object). Each image is encoded once; all its boxes are decoded in one `predict_inst` call.

Checked against the sam3 0.1.4 wheel's sources (model_builder.py, model/sam3_image.py,
model/sam3_image_processor.py, model/sam1_task_predictor.py, model/tokenizer_ve.py) and the
repository's notebooks/sam3_for_sam1_task_example.ipynb:
- `build_sam3_image_model(bpe_path=, device="cuda", checkpoint_path=, load_from_HF=False,
  enable_inst_interactivity=True)`; the instance predictor exists only with
  enable_inst_interactivity. `device="cuda"` calls `model.cuda()`, i.e. the *current* CUDA
  device, and other sam3 code says "cuda" too, hence `torch.cuda.device(K)` around every call.
- `Sam3Processor(model, device=).set_image(pil) -> state` runs the image encoder.
- `model.predict_inst(state, box=Bx4 xyxy pixels, multimask_output=False) -> (masks, scores,
  low-res logits)`; masks are thresholded at 0, at the image's size, B x 1 x H x W (1 x H x W
  when B == 1: the predictor squeezes the batch axis).
- The notebook runs under `torch.autocast("cuda", dtype=torch.bfloat16)`; `dtype` selects that.
- The wheel ships no weights (sam3.pt is in the gated hub repo facebook/sam3) and not the CLIP
  BPE vocabulary its text encoder reads at build time (bpe_simple_vocab_16e6.txt.gz; the
  open_clip_torch wheel has it).
- sam3 calls torchvision's roi_align (geometry encoder, decoder) and nms: on ROCm they run on the
  CPU (patch_torchvision_for_rocm), as the original RESCue SAM 3 server did.
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np

from rescue_eval.models.vllm_backend import require_cuda
from rescue_eval.core.errors import UsageError
from rescue_eval.core.types import SegmentItem

log = logging.getLogger(__name__)

WEIGHTS = "sam3.pt"
BPE_VOCAB = "bpe_simple_vocab_16e6.txt.gz"
NO_WEIGHTS = ("the sam3 package ships no weights: download sam3.pt (and bpe_simple_vocab_16e6.txt.gz) from the "
              "gated hub repo facebook/sam3 and point --executor.checkpoint at the file or its folder")
CPU_FALLBACK_OPS = ("roi_align", "nms")


def weights_file(checkpoint: str) -> str:
    """sam3.pt from a file, a folder holding it, or a hub repo id (the hub cache works offline)."""
    path = Path(checkpoint)
    if path.is_dir():
        path = path / WEIGHTS
    if path.is_file():
        return str(path)
    try:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(repo_id=checkpoint, filename=WEIGHTS)
    except Exception as exc:  # not a repo id, no access, no network, not in the cache
        raise UsageError(f"executor.checkpoint {checkpoint!r} is not a sam3 checkpoint ({type(exc).__name__}); "
                         f"{NO_WEIGHTS}.") from exc


def bpe_vocab_file(weights: str) -> str:
    """The text encoder's vocabulary: beside the weights, in a source checkout of sam3 (assets/),
    or in the open_clip_torch package."""
    candidates = [Path(weights).parent / BPE_VOCAB]
    for package, folder in (("sam3", "../assets"), ("open_clip", ".")):
        spec = importlib.util.find_spec(package)  # finds, without importing, the package's folder
        if spec is not None and spec.origin:
            candidates.append(Path(spec.origin).parent / folder / BPE_VOCAB)
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    raise UsageError(f"{BPE_VOCAB} was not found beside {weights}, in sam3's assets or in open_clip_torch; "
                     f"{NO_WEIGHTS}, or pip install open_clip_torch.")


def patch_torchvision_for_rocm() -> bool:
    """On ROCm, run torchvision's roi_align and nms on the CPU and move the results back.

    ROCm builds of torchvision may lack working HIP kernels for these ops. The patch replaces
    torch.ops.torchvision.roi_align / nms, which torchvision.ops.roi_align, RoIAlign, nms and
    batched_nms all call at run time, so every caller gets it. Errors propagate unchanged.
    Returns whether the ops run on the CPU now; off ROCm (torch.version.hip unset) it does nothing.
    """
    import torch
    import torchvision  # noqa: F401  (registers torch.ops.torchvision)

    if torch.version.hip is None:
        return False
    for name in CPU_FALLBACK_OPS:
        op = getattr(torch.ops.torchvision, name)
        if not getattr(op, "runs_on_cpu", False):  # patched once, however often it is called
            setattr(torch.ops.torchvision, name, on_cpu(name, op))
    return True


def on_cpu(name: str, op):
    """`op` run on CPU copies of its tensor arguments; its result goes back to their device."""
    import torch

    warned = False

    def run_on_cpu(*args, **kwargs):
        nonlocal warned
        device = next(a.device for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor))
        if not warned:
            log.warning("torchvision %s runs on the CPU (ROCm fallback): correct, but slower", name)
            warned = True
        log.debug("torchvision %s on the CPU for inputs on %s", name, device)
        result = op(*[a.cpu() if isinstance(a, torch.Tensor) else a for a in args],
                    **{k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()})
        return result.to(device)

    run_on_cpu.runs_on_cpu = True
    return run_on_cpu


class Sam3PackageSegmenter:
    def __init__(self, checkpoint: str, device: str = "cuda", dtype: str = "float32"):
        import torch

        (gpu,) = require_cuda("executor", "sam3", device)
        try:
            from sam3.model.sam3_image_processor import Sam3Processor
            from sam3.model_builder import build_sam3_image_model
        except ImportError as exc:
            raise UsageError("executor.backend sam3 needs the sam3 package, which is not installed; run "
                             "pip install 'rescue-eval[sam3]' (it ships no weights: see executor.checkpoint).") from exc
        weights = weights_file(checkpoint)
        patch_torchvision_for_rocm()
        self.device = torch.device("cuda", gpu)
        self.dtype = getattr(torch, dtype)
        with torch.cuda.device(self.device):
            self.model = build_sam3_image_model(bpe_path=bpe_vocab_file(weights), device="cuda",
                                                checkpoint_path=weights, load_from_HF=False,
                                                enable_inst_interactivity=True)
        self.processor = Sam3Processor(self.model, device=str(self.device))

    def segment(self, batch: list[SegmentItem]) -> list[list[np.ndarray]]:
        import torch

        with (torch.cuda.device(self.device), torch.inference_mode(),
              torch.autocast("cuda", dtype=self.dtype, enabled=self.dtype != torch.float32)):
            return [self._segment_item(item) if item.boxes else [] for item in batch]

    def _segment_item(self, item: SegmentItem) -> list[np.ndarray]:
        image = item.image.convert("RGB")
        state = self.processor.set_image(image)  # the image encoder, once per item
        masks, _, _ = self.model.predict_inst(state, box=np.asarray(item.boxes, dtype=np.float32),
                                              multimask_output=False)  # a box is one instance
        return list(masks.reshape(len(item.boxes), image.height, image.width).astype(bool))
