"""The SigLIP2 scorer on the tiny random checkpoint: masked crops, score range and determinism,
empty masks, text encoded once per query, chunking invariance, and the checkpoint round trip."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from rescue_eval.models import tiny
from rescue_eval.models.siglip2 import NEUTRAL_GRAY, Siglip2Scorer, masked_crop
from rescue_eval.core.types import ScoreItem
from tests.helpers import served_in_one_batch

pytestmark = pytest.mark.unit

WIDTH, HEIGHT = 200, 150


@pytest.fixture(scope="module")
def checkpoint() -> str:
    return str(tiny.build("siglip2"))  # the shared cache


@pytest.fixture(scope="module")
def scorer(checkpoint) -> Siglip2Scorer:
    return Siglip2Scorer(checkpoint)


def make_image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8))


def rect_mask(x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[y1:y2, x1:x2] = True
    return mask


MASKS = [rect_mask(20, 30, 120, 80), rect_mask(100, 50, 190, 140), rect_mask(0, 0, 200, 150)]


def test_a_role_server_batch_answers_as_separate_calls(scorer):
    """Served as the scorer, two samples merged into one batch get the scores each gets alone."""
    items = [ScoreItem(make_image(0), [rect_mask(10, 10, 100, 80), rect_mask(0, 0, 0, 0)], "a red square"),
             ScoreItem(make_image(1), [rect_mask(50, 40, 200, 150)], "the blue circle on the left")]
    alone = [scorer.score([item])[0] for item in items]
    merged = served_in_one_batch("scorer", scorer, "score", items)
    assert merged == alone  # the same bits: a sample's scores do not depend on the batch mix
    assert merged[0][1] == 0.0  # an empty mask scores 0


def test_a_samples_scores_are_the_same_bits_in_any_batch(scorer):
    """Other samples, with other queries and crop counts, around it in the batch or not: the
    selection scales a sample's scores by 1 / their spread, so no bit of them may move."""
    items = [ScoreItem(make_image(0), [rect_mask(10, 10, 100, 80)], "a red square"),
             ScoreItem(make_image(1), [rect_mask(50, 40, 200, 150)], "the blue circle on the left"),
             ScoreItem(make_image(14), MASKS * 3, "a red square")]
    alone = [scorer.score([item])[0] for item in items]
    for order in ([0, 1, 2], [2, 1, 0], [1, 0]):
        assert scorer.score([items[k] for k in order]) == [alone[k] for k in order], order


def test_masked_crop_adds_margin_and_grays_the_outside():
    image = make_image(0)
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[40:60, 50:150] = True  # a 100 x 20 box: margins of 10 px and 2 px
    mask[40, 50] = False  # one pixel inside the box but outside the mask
    crop = np.asarray(masked_crop(np.asarray(image), mask))
    assert crop.shape == (24, 120, 3)
    assert (crop[0] == NEUTRAL_GRAY).all() and (crop[2, 10] == NEUTRAL_GRAY).all()
    assert (crop[2, 11] == np.asarray(image)[40, 51]).all()
    assert masked_crop(np.asarray(image), np.zeros((HEIGHT, WIDTH), dtype=bool)) is None


def test_masked_crop_is_clamped_to_the_image():
    crop = masked_crop(np.asarray(make_image(0)), rect_mask(0, 0, 200, 150))
    assert crop.size == (WIDTH, HEIGHT)


def test_scores_in_unit_interval_and_deterministic(scorer):
    batch = [ScoreItem(make_image(1), MASKS, "the bread knife"), ScoreItem(make_image(2), MASKS[:1], "a dog")]
    first = scorer.score(batch)
    assert [len(s) for s in first] == [3, 1]
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for s in first for v in s)
    assert scorer.score(batch) == first


def test_empty_mask_scores_zero_without_the_model(scorer, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the model must not run for empty masks")

    monkeypatch.setattr(scorer.model, "get_image_features", fail)
    monkeypatch.setattr(scorer.model, "get_text_features", fail)
    empty = np.zeros((HEIGHT, WIDTH), dtype=bool)
    assert scorer.score([ScoreItem(make_image(3), [empty, empty], "anything")]) == [[0.0, 0.0]]
    assert scorer.score([ScoreItem(make_image(3), [], "anything")]) == [[]]


def test_empty_mask_among_others_keeps_its_place(scorer):
    empty = np.zeros((HEIGHT, WIDTH), dtype=bool)
    [scores] = scorer.score([ScoreItem(make_image(4), [MASKS[0], empty, MASKS[1]], "a cup")])
    [alone] = scorer.score([ScoreItem(make_image(4), [MASKS[0], MASKS[1]], "a cup")])
    assert scores == [alone[0], 0.0, alone[1]]


def test_query_matters_and_is_lower_cased(scorer):
    image = make_image(5)
    [[knife]] = scorer.score([ScoreItem(image, MASKS[:1], "the bread knife")])
    [[dog]] = scorer.score([ScoreItem(image, MASKS[:1], "a dog sleeping on the sofa")])
    [[upper]] = scorer.score([ScoreItem(image, MASKS[:1], "The Bread KNIFE")])
    assert knife != dog
    assert upper == knife


def test_long_query_is_truncated_not_an_error(scorer):
    long_query = " ".join(["the small red cup on the left of the table near the window"] * 20)
    assert len(scorer.tokenizer(long_query)["input_ids"]) > 64
    [[score]] = scorer.score([ScoreItem(make_image(6), MASKS[:1], long_query)])
    assert 0.0 <= score <= 1.0


def test_text_encoded_once_per_distinct_query(scorer, monkeypatch):
    texts_encoded = []
    real_get_text_features = scorer.model.get_text_features

    def spy(input_ids, **kwargs):
        texts_encoded.append(input_ids.shape[0])
        return real_get_text_features(input_ids, **kwargs)

    monkeypatch.setattr(scorer.model, "get_text_features", spy)
    batch = [ScoreItem(make_image(7), MASKS, "a cup"), ScoreItem(make_image(8), MASKS, "A cup"),
             ScoreItem(make_image(9), MASKS, "a dog")]
    scorer.score(batch)
    assert texts_encoded == [1, 1]  # "a cup" (either case), then "a dog", each alone


def test_chunking_does_not_change_scores(checkpoint, scorer):
    batch = [ScoreItem(make_image(10), MASKS, "a cup"), ScoreItem(make_image(11), MASKS[::-1], "a dog")]
    chunked = Siglip2Scorer(checkpoint, max_batch=2).score(batch)
    whole = scorer.score(batch)
    for a, b in zip(chunked, whole):
        assert a == pytest.approx(b, abs=1e-5)


def test_scores_match_the_models_own_forward(scorer):
    """The adapter's split text / image encoding gives the model's sigmoid(logits_per_image)."""
    image = make_image(12)
    [[score]] = scorer.score([ScoreItem(image, MASKS[:1], "The Cup")])
    text = scorer.tokenizer(["the cup"], padding="max_length", max_length=64, truncation=True, return_tensors="pt")
    pixels = scorer.image_processor(images=[masked_crop(np.asarray(image), MASKS[0])], return_tensors="pt")
    with torch.inference_mode():
        logits = scorer.model(**text, **pixels).logits_per_image
    assert score == pytest.approx(torch.sigmoid(logits).item(), abs=1e-5)


def test_deterministic_build_and_load_round_trip(checkpoint, tmp_path):
    from transformers import AutoModel, AutoProcessor, GemmaTokenizer, SiglipModel, SiglipProcessor

    # the classes google/siglip2-giant-opt-patch16-384 loads as (fixed resolution: SigLIP's architecture)
    model = AutoModel.from_pretrained(checkpoint)
    processor = AutoProcessor.from_pretrained(checkpoint)
    assert isinstance(model, SiglipModel) and model.config.model_type == "siglip"
    assert isinstance(processor, SiglipProcessor) and isinstance(processor.tokenizer, GemmaTokenizer)
    assert processor.image_processor.size == {"height": 384, "width": 384}
    assert model.config.vision_config.image_size == 384 and model.config.vision_config.patch_size == 16
    # Gemma's tokenizer keeps case: the scorer lower-cases queries itself
    assert processor.tokenizer("A Red CUP")["input_ids"] != processor.tokenizer("a red cup")["input_ids"]
    assert model.config.text_config.vocab_size == len(processor.tokenizer)

    rebuilt_dir = tiny.build("siglip2", root=tmp_path)
    assert (rebuilt_dir / "model.safetensors").stat().st_size < 1_000_000
    rebuilt = SiglipModel.from_pretrained(rebuilt_dir).state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, rebuilt[name]), name
    assert AutoProcessor.from_pretrained(rebuilt_dir).tokenizer.get_vocab() == processor.tokenizer.get_vocab()
