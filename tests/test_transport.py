"""What crosses the wire between ranks: original image bytes once per host and sample, masks
as lossless RLE. (RPC itself is exercised by test_distributed.py under torchrun.)"""
import io
import pickle

import numpy as np
import pytest
from PIL import Image

from rescue_eval.transport import ImageCache, ImageNotCached, WireImage, WireMask, pack, unpack
from rescue_eval.types import DuelItem, JudgeAnswer, Sample, ScoreItem


def sample_image():
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(buf, "JPEG")
    return Sample("s1", buf.getvalue(), "q", np.zeros((60, 80), np.uint8)).decode_image(), buf.getvalue()


def test_images_travel_as_their_original_bytes_once_per_host():
    image, data = sample_image()
    masks = [np.random.default_rng(k).random((60, 80)) < 0.3 for k in range(3)]
    sent = set()
    first = pack([ScoreItem(image, masks, "q")], sent)
    assert first[0].image == WireImage("s1", data)  # the file's bytes, not re-encoded pixels
    assert all(isinstance(m, WireMask) for m in first[0].masks)
    second = pack([DuelItem(image, masks[0], masks[1], "q")], sent)
    assert second[0].image == WireImage("s1", None)  # the host has it already

    cache = ImageCache(capacity=4)
    a = unpack(first, cache)[0]
    b = unpack(second, cache)[0]
    assert np.array_equal(np.asarray(a.image), np.asarray(image)) and b.image is a.image
    assert all(np.array_equal(x, y) for x, y in zip(a.masks, masks))  # lossless


def test_an_evicted_image_is_asked_for_again():
    cache = ImageCache(capacity=1)
    image, data = sample_image()
    cache.get(WireImage("s1", data))
    cache.get(WireImage("png:other", _png()))
    with pytest.raises(ImageNotCached):
        cache.get(WireImage("s1", None))


def test_masks_on_the_wire_are_much_smaller_than_raw_bool():
    mask = np.zeros((1024, 1024), dtype=bool)
    yy, xx = np.mgrid[:1024, :1024]
    mask[(yy - 500) ** 2 + (xx - 400) ** 2 < 300 ** 2] = True
    wire = len(pickle.dumps(pack(mask)))
    assert wire * 8 < mask.nbytes
    assert np.array_equal(unpack(pack(mask)), mask)


def test_answers_without_images_pass_unchanged():
    answers = [[JudgeAnswer("A", "raw", 3, 4)], [JudgeAnswer(None, "", 0, 0)]]
    assert unpack(pack(answers)) == answers


def _png():
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "PNG")
    return buf.getvalue()
