"""The SAM 3 tracker segmenter on the tiny random checkpoint: shapes, order, one encoder pass per
image, batching invariance, and the checkpoint's save / load round trip."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rescue_eval.models import sam3_tracker, tiny
from rescue_eval.models.sam3_layout import load_tracker
from rescue_eval.models.sam3_tracker import Sam3TrackerSegmenter, fill_holes
from rescue_eval.core.types import SegmentItem
from tests.helpers import served_in_one_batch

pytestmark = pytest.mark.unit

WIDTH, HEIGHT = 200, 150  # non-square, so a swapped height / width shows


@pytest.fixture(scope="module")
def checkpoint() -> str:
    return str(tiny.build("sam3-tracker"))  # the shared cache


@pytest.fixture(scope="module")
def segmenter(checkpoint) -> Sam3TrackerSegmenter:
    return Sam3TrackerSegmenter(checkpoint)


def make_image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8))


BOXES = [(10.0, 10.0, 100.0, 90.0), (50.0, 20.0, 190.0, 140.0), (0.0, 0.0, 200.0, 150.0)]


def test_a_role_server_batch_answers_as_separate_calls(segmenter):
    """Served as the executor, two samples merged into one batch get the masks each gets alone."""
    items = [SegmentItem(make_image(0), BOXES), SegmentItem(make_image(1), BOXES[:1])]
    alone = [segmenter.segment([item])[0] for item in items]
    merged = served_in_one_batch("executor", segmenter, "segment", items)
    for got, want in zip(merged, alone):
        assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want))


def test_one_bool_mask_per_box_at_image_size(segmenter):
    [masks] = segmenter.segment([SegmentItem(make_image(0), BOXES)])
    assert len(masks) == len(BOXES)
    for mask in masks:
        assert mask.dtype == bool
        assert mask.shape == (HEIGHT, WIDTH)
    assert not all(np.array_equal(masks[0], m) for m in masks[1:])  # the boxes do steer the decoder


def test_boxes_decoded_together_match_one_at_a_time_in_order(segmenter):
    image = make_image(1)
    [together] = segmenter.segment([SegmentItem(image, BOXES)])
    for box, mask in zip(BOXES, together):
        [[alone]] = segmenter.segment([SegmentItem(image, [box])])
        assert np.array_equal(mask, alone)


def test_an_items_logits_are_the_same_bits_alone_and_batched(segmenter, monkeypatch):
    """Not only the masks: the decoder's logits, so that no pixel near the threshold can flip
    when other samples share the batch (an encoder pass over several images changed them)."""
    logits = []
    monkeypatch.setattr(sam3_tracker, "fill_holes", lambda low_res: logits.append(low_res) or fill_holes(low_res))
    items = [SegmentItem(make_image(2), BOXES[:2]), SegmentItem(make_image(3), BOXES[2:]),
             SegmentItem(make_image(9), BOXES)]
    batched = segmenter.segment(items)
    together, logits[:] = list(logits), []
    for k, item in enumerate(items):
        [alone] = segmenter.segment([item])
        assert torch.equal(logits.pop(), together[k])
        assert len(batched[k]) == len(alone) and all(np.array_equal(a, b) for a, b in zip(batched[k], alone))


def test_item_without_boxes_gets_no_masks(segmenter):
    assert segmenter.segment([SegmentItem(make_image(4), [])]) == [[]]
    out = segmenter.segment([SegmentItem(make_image(4), []), SegmentItem(make_image(5), BOXES[:1])])
    assert out[0] == [] and len(out[1]) == 1


def test_each_image_encoded_once_and_decoded_once(segmenter, monkeypatch):
    model = segmenter.model
    images_embedded, encoder_calls, decoder_calls = [], [], []
    real_get_image_embeddings = model.get_image_embeddings

    def spy(pixel_values, **kwargs):
        images_embedded.append(pixel_values.shape[0])
        return real_get_image_embeddings(pixel_values, **kwargs)

    monkeypatch.setattr(model, "get_image_embeddings", spy)
    hooks = [
        model.vision_encoder.register_forward_hook(lambda *_: encoder_calls.append(1)),
        model.mask_decoder.register_forward_hook(lambda *_: decoder_calls.append(1)),
    ]
    try:
        items = [SegmentItem(make_image(6), BOXES), SegmentItem(make_image(7), []), SegmentItem(make_image(8), BOXES[:2])]
        segmenter.segment(items)
    finally:
        for hook in hooks:
            hook.remove()
    assert images_embedded == [1, 1]  # the two images with boxes, each once and on its own
    assert len(encoder_calls) == 2  # decoding never re-runs the image encoder
    assert len(decoder_calls) == 2  # one batched prompt call per image with boxes


def test_deterministic_build_and_load_round_trip(checkpoint, tmp_path):
    import torch
    from transformers import AutoProcessor, Sam3TrackerProcessor

    # facebook/sam3's layout: a sam3_video config with the tracker's under tracker_config
    assert json.loads((Path(checkpoint) / "config.json").read_text())["model_type"] == "sam3_video"
    model, info = load_tracker(checkpoint, torch.float32)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    processor = Sam3TrackerProcessor.from_pretrained(checkpoint)
    assert processor.image_processor.size["height"] == model.config.prompt_encoder_config.image_size == 224
    # like facebook/sam3, the checkpoint names another processor: AutoProcessor is the wrong door
    with pytest.raises(OSError, match="video processor"):
        AutoProcessor.from_pretrained(checkpoint)

    rebuilt_dir = tiny.build("sam3-tracker", root=tmp_path)
    assert (rebuilt_dir / "model.safetensors").stat().st_size < 1_000_000
    rebuilt = load_tracker(str(rebuilt_dir), torch.float32)[0].state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, rebuilt[name]), name


def test_tiny_spec_builds_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RESCUE_EVAL_CACHE", str(tmp_path))
    segmenter = Sam3TrackerSegmenter("tiny:sam3-tracker")
    assert (tmp_path / "tiny" / "sam3-tracker" / "config.json").exists()
    [masks] = segmenter.segment([SegmentItem(make_image(9), BOXES[:1])])
    assert masks[0].shape == (HEIGHT, WIDTH)


def test_the_decoder_reads_the_1x_level_with_the_no_memory_embedding(segmenter, checkpoint):
    """SAM 3's order: the 0.5x level is dropped before the no-memory embedding is added, so the
    1x map the mask decoder reads carries it (transformers adds it to the dropped level)."""
    import torch
    model = segmenter.model
    assert len(model.vision_encoder.neck.fpn_layers) == len(model.backbone_feature_sizes) == 3
    raw = load_tracker(checkpoint, torch.float32)[0].eval()
    assert len(raw.vision_encoder.neck.fpn_layers) == 4  # the twin has facebook/sam3's four levels
    pixels = segmenter.processor(images=[make_image(3)], return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        fixed = model.get_image_embeddings(pixels)[-1]
        levels = raw.get_image_features(pixels).fpn_hidden_states
        one_x = levels[2] + raw.no_memory_embedding
        expected = one_x.permute(1, 2, 0).view(1, -1, *raw.backbone_feature_sizes[-1])
        assert torch.allclose(fixed, expected, atol=1e-6)
        assert not torch.allclose(raw.get_image_embeddings(pixels)[-1], expected, atol=1e-6)


def test_small_background_holes_are_filled_as_sam3_does():
    import torch

    logits = torch.full((1, 1, 1, 40, 40), -5.0)
    logits[..., 5:35, 5:35] = 5.0
    logits[..., 10:13, 10:13] = -5.0  # a 9-pixel hole inside the object: filled
    filled = fill_holes(logits, max_hole_area=16)
    assert (filled[..., 10:13, 10:13] > 0).all()
    assert (filled[..., :5, :] < 0).all()  # the background around it is one big component: kept
    assert (fill_holes(logits, max_hole_area=4)[..., 10:13, 10:13] < 0).all()
