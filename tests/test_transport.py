"""What crosses the wire between ranks: original image bytes once per host and sample, masks
as lossless RLE. (RPC itself is exercised by test_distributed.py under torchrun.)"""
import io
import threading

import numpy as np
import pytest
from PIL import Image

from rescue_eval.core import masks as masks_mod
from rescue_eval.core.types import DuelItem, JudgeAnswer, Sample, ScoreItem
from rescue_eval.dist import rpc
from rescue_eval.dist.serving import LocalRole, RoleServer
from rescue_eval.dist.wire import DecodedCache, ImageNotCached, pack, unpack

pytestmark = pytest.mark.unit


def sample_image():
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(buf, "JPEG")
    return Sample("s1", buf.getvalue(), "q", np.zeros((60, 80), np.uint8)).decode_image(), buf.getvalue()


def test_images_travel_as_their_original_bytes_once_per_host():
    image, data = sample_image()
    masks = [np.random.default_rng(k).random((60, 80)) < 0.3 for k in range(3)]
    sent = set()
    first = pack([ScoreItem(image, masks, "q")], sent)
    assert data in first and sent == {"s1"}  # the file's bytes, not re-encoded pixels
    second = pack([DuelItem(image, masks[0], masks[1], "q")], sent)
    assert data not in second  # the host has the image already

    cache = DecodedCache(images=4)
    a = unpack(first, cache)[0]
    b = unpack(second, cache)[0]
    assert np.array_equal(np.asarray(a.image), np.asarray(image)) and b.image is a.image
    assert all(np.array_equal(x, y) for x, y in zip(a.masks, masks))  # lossless


def test_an_evicted_image_is_asked_for_again():
    cache = DecodedCache(images=1)
    image, data = sample_image()
    sent = set()
    first, second = pack([image], sent), pack([image], sent)
    unpack(first, cache)
    unpack(pack([Image.open(io.BytesIO(_png()))]), cache)  # a different image takes the only place
    with pytest.raises(ImageNotCached):
        unpack(second, cache)


def test_a_mask_is_encoded_once_per_process_and_decoded_once_per_host(monkeypatch):
    """A sample's masks cross several times (scorer, ratings, duels, the JSONL): a mask that
    came over the wire is read-only and keeps its RLE, and a host decodes an RLE once."""
    masks = [np.random.default_rng(k).random((60, 80)) < 0.3 for k in range(2)]
    received = unpack(pack(masks))  # the driver's copy of the executor's answer, not decoded
    assert all(isinstance(r, masks_mod.EncodedMask) and np.array_equal(r.pixels(), m) for r, m in zip(received, masks))
    encodes = []
    real_encode = masks_mod.coco_mask.encode
    monkeypatch.setattr(masks_mod.coco_mask, "encode", lambda a: encodes.append(1) or real_encode(a))
    cache = DecodedCache()
    on_host = [unpack(pack(x), cache) for x in (received, received[::-1])]
    assert encodes == []  # sent on twice without encoding again
    assert on_host[0][0] is on_host[1][1] and on_host[0][1] is on_host[1][0]  # decoded once here
    assert masks_mod.encode_rle(received[0]) == masks_mod.encode_rle(masks[0]) and len(encodes) == 1
    pixels = on_host[0][0]
    with pytest.raises(ValueError):
        pixels[0, 0] = True  # read-only, so the kept RLE cannot go stale
    with pytest.raises(ValueError):
        pixels.flags.writeable = True  # and it stays so
    assert masks_mod.encode_rle(pixels) == received[0].rle and len(encodes) == 1  # a decoded mask keeps its RLE


def test_a_local_backends_mask_is_encoded_once_once_frozen_and_a_writable_one_every_time(monkeypatch):
    """A colocated executor's masks never cross the wire: the search freezes them, so they too
    are encoded once however often they are sent and recorded; a writable mask may change, so
    its RLE is never kept."""
    encodes = []
    real_encode = masks_mod.coco_mask.encode
    monkeypatch.setattr(masks_mod.coco_mask, "encode", lambda a: encodes.append(1) or real_encode(a))
    writable = np.random.default_rng(0).random((60, 80)) < 0.3
    frozen = masks_mod.freeze(writable)
    assert frozen is not writable and np.array_equal(frozen, writable) and masks_mod.freeze(frozen) is frozen
    for _ in range(3):
        pack([frozen])
        masks_mod.encode_rle(frozen)
    assert len(encodes) == 1
    before = masks_mod.encode_rle(writable)
    writable[0, :] = ~writable[0, :]
    after = masks_mod.encode_rle(writable)
    assert before != after and masks_mod.decode_rle(after).tolist() == writable.tolist() and len(encodes) == 3


def test_an_answer_that_cannot_be_packed_comes_back_as_that_requests_error():
    """Packing happens in a callback whose exceptions torch would swallow (the caller would wait
    for the RPC timeout): the host answers with the error instead."""
    class UnpicklableScorer:
        def score(self, batch):
            return [[lambda: None] for _ in batch]

    server = RoleServer("scorer", UnpicklableScorer(), max_wait_s=0)
    rpc.RpcTransport().serve(server)
    try:
        image, _ = sample_image()
        status, (message, transient) = rpc._serve("scorer", "score", pack([ScoreItem(image, [], "q")])).wait()
    finally:
        server.close()
    assert status == "error" and "pickle" in message.lower() and not transient  # a rerun would fail alike


def test_the_mask_cache_keeps_to_its_byte_budget():
    cache = DecodedCache(mask_bytes=2 * 60 * 80)
    rles = [masks_mod.encode_rle(np.random.default_rng(k).random((60, 80)) < 0.5) for k in range(3)]
    first, second = cache.mask(rles[0]), cache.mask(rles[1])
    assert cache.mask(rles[0]) is first  # still there; now the most recently used
    cache.mask(rles[2])  # over budget: the least recently used, rles[1], goes
    assert cache.mask(rles[0]) is first
    again = cache.mask(rles[1])
    assert again is not second and np.array_equal(again, second)  # decoded anew
    assert cache._mask_bytes <= cache.mask_capacity


def test_a_driver_with_a_remote_executor_decodes_no_mask(monkeypatch):
    """The executor's masks reach the searching thread as EncodedMasks: it scores, records and
    sends them on without their pixels, and each is decoded once, by the local scorer's and
    judge's server (with_pixels). The record is the one an all-local search writes."""
    from rescue_eval.core.search import Roles, search_sample
    from rescue_eval.dist.calls import RemoteRole, answer_request
    from tests.doubles import BoxFillSegmenter
    from tests.test_rescue import roles, sample, settings

    def without_timing(record):
        return {k: v for k, v in record.items() if k != "timing"}

    expected = search_sample(sample(0), roles(), settings(8))
    local = roles()
    servers = {name: RoleServer(name, backend) for name, backend in
               (("executor", BoxFillSegmenter()), ("scorer", local.scorer), ("judge", local.judge))}
    host_cache = DecodedCache()

    def send(target, role, method, packed):  # a transport within this process
        answered, answers = threading.Event(), []
        answer_request(servers, host_cache, role, method, packed, lambda a: answers.append(a) or answered.set())
        assert answered.wait(10)
        return answers[0]

    decoded_by = []
    real_decode = masks_mod.coco_mask.decode
    monkeypatch.setattr(masks_mod.coco_mask, "decode",
                        lambda rles: decoded_by.append(threading.current_thread().name) or real_decode(rles))
    searched = Roles(local.planner, RemoteRole("executor", [1], send), LocalRole(servers["scorer"]),
                     LocalRole(servers["judge"]))
    try:
        record = search_sample(sample(0), searched, settings(8))
    finally:
        for server in servers.values():
            server.close()
    assert without_timing(record) == without_timing(expected)
    assert decoded_by and all(name in ("role-scorer", "role-judge") for name in decoded_by)
    assert len(decoded_by) == len(record["candidates"])  # once per mask


def test_masks_on_the_wire_are_much_smaller_than_raw_bool():
    mask = np.zeros((1024, 1024), dtype=bool)
    yy, xx = np.mgrid[:1024, :1024]
    mask[(yy - 500) ** 2 + (xx - 400) ** 2 < 300 ** 2] = True
    wire = len(pack(mask))
    assert wire * 8 < mask.nbytes
    assert np.array_equal(unpack(pack(mask)).pixels(), mask)


def test_answers_without_images_pass_unchanged():
    answers = [[JudgeAnswer("A", "raw", 3, 4)], [JudgeAnswer(None, "", 0, 0)]]
    assert unpack(pack(answers)) == answers


def _png():
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "PNG")
    return buf.getvalue()
