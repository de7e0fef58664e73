"""What crosses the wire between ranks: requests and answers as pickles in which images and
masks are reduced to their wire forms.

Images are their original encoded bytes, sent once per role host and sample (the host keeps
the decoded image in a small cache and asks again if it was evicted); masks are COCO RLE
(lossless), encoded once per process (`core.masks` remembers the RLE of a mask it decoded),
decoded once per host (`DecodedCache`), and not at all in answers: the caller gets
`EncodedMask`s, whose pixels only a backend needs. Every transport uses these forms.
"""
from __future__ import annotations

import hashlib
import io
import pickle
import threading
from collections import OrderedDict

import numpy as np
from PIL import Image

from rescue_eval.core.masks import EncodedMask, decode_rle, encode_rle
from rescue_eval.core.types import decode_image_bytes


class ImageNotCached(Exception):
    """The sender left an image's bytes out, but this host no longer has it."""


def pack(obj, sent: set | None = None) -> bytes:
    """A request or an answer as a pickle in which images and masks are reduced to their wire
    forms. `sent` holds the image keys the receiver already has (their bytes are left out)."""
    buf = io.BytesIO()
    _WirePickler(buf, sent).dump(obj)
    return buf.getvalue()


def unpack(data: bytes, cache: "DecodedCache | None" = None):
    """The inverse of pack. With a cache (on a role host), images come from it when the sender
    left their bytes out, and a mask already decoded here is not decoded again."""
    _receiving.cache = cache
    try:
        return pickle.loads(data)
    finally:
        _receiving.cache = None


_receiving = threading.local()  # the DecodedCache of the unpack running on this thread


class _WirePickler(pickle.Pickler):
    """reducer_override, unlike persistent_id, is not called for the built-in types (numbers,
    strings, lists, dicts) that make up most of a request: a sample's requests and answers hold
    about 450 such objects, and a Python call for each was a tenth of the driver's CPU time."""

    def __init__(self, file, sent: set | None):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.sent = sent

    def reducer_override(self, obj):
        if isinstance(obj, np.ndarray) and obj.dtype == bool and obj.ndim == 2:
            return _received_mask, (encode_rle(obj),)  # free for a mask that came over the wire
        if isinstance(obj, EncodedMask):
            return _received_mask, (obj.rle,)
        if isinstance(obj, Image.Image):
            key, data = obj.info.get("source") or _encode_png(obj)
            if self.sent is not None:
                if key in self.sent:
                    return _received_image, (key, None)
                self.sent.add(key)
            return _received_image, (key, data)
        return NotImplemented  # everything else is pickled as usual


def _received_mask(rle: dict) -> np.ndarray | EncodedMask:
    """Pixels on a role host, for its backend; an EncodedMask in an answer, for the search."""
    cache = _receiving.cache
    return cache.mask(rle) if cache is not None else EncodedMask(rle)


def _received_image(key: str, data: bytes | None) -> Image.Image:
    cache = _receiving.cache
    if cache is None:  # only role hosts receive images, and they unpack with their cache
        raise ImageNotCached(key)
    return cache.image(key, data)


def _encode_png(image: Image.Image) -> tuple[str, bytes]:
    """An image that did not come from a sample (none does today): lossless PNG, keyed by content."""
    buf = io.BytesIO()
    image.save(buf, "PNG")
    data = buf.getvalue()
    return "png:" + hashlib.sha1(data).hexdigest(), data


class DecodedCache:
    """What a role host has decoded, least recently used dropped first: images by key (the
    sender leaves out the bytes of those it sent before, and sends them again if asked) and
    masks by their RLE (a sample's masks arrive again for ratings and duels). Requests share
    them: the masks are read-only, and no backend changes an image."""

    def __init__(self, images: int = 256, mask_bytes: int = 512 << 20):
        self.image_capacity, self.mask_capacity = images, mask_bytes
        self._images: OrderedDict[str, Image.Image] = OrderedDict()
        self._masks: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._mask_bytes = 0
        self._lock = threading.Lock()

    def image(self, key: str, data: bytes | None) -> Image.Image:
        """The image under `key`; `data` None: the sender expects it here already."""
        with self._lock:
            if key in self._images:
                self._images.move_to_end(key)
                return self._images[key]
        if data is None:
            raise ImageNotCached(key)
        image = decode_image_bytes(data)
        with self._lock:
            self._images[key] = image
            while len(self._images) > self.image_capacity:
                self._images.popitem(last=False)
        return image

    def mask(self, rle: dict) -> np.ndarray:
        key = (*rle["size"], rle["counts"])
        with self._lock:
            if key in self._masks:
                self._masks.move_to_end(key)
                return self._masks[key]
        mask = decode_rle(rle)
        with self._lock:
            if key not in self._masks:
                self._masks[key] = mask
                self._mask_bytes += mask.nbytes
            while self._mask_bytes > self.mask_capacity:
                self._mask_bytes -= self._masks.popitem(last=False)[1].nbytes
        return mask
