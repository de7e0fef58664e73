"""Role calls between ranks over torch.distributed.rpc (TensorPipe). The only module that knows RPC.

TensorPipe is in maintenance mode upstream; everything RPC-specific stays here so another
transport can replace it behind `RemoteRole` and `serve`.

On the wire: a pickle in which images are their original encoded bytes, sent once per role
host and sample (the host keeps the decoded image in a small cache and asks again if it was
evicted), and masks are COCO RLE (lossless), encoded once per process and decoded once per
host (`DecodedCache`). A backend error travels back as a value and is raised on the caller as
a RoleCallError (scored as that sample's failure); an RPC failure (a rank gone, a timeout) is
a TransportError, which stops the job instead of being recorded as a failed sample.
"""
from __future__ import annotations

import io
import itertools
import os
import pickle
import socket
import threading
from collections import OrderedDict
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.rpc as rpc
from PIL import Image

from rescue_eval.errors import FatalError
from rescue_eval.masks import decode_rle, encode_rle
from rescue_eval.serving import PROTOCOL_METHODS, RoleServer
from rescue_eval.types import decode_image_bytes


class TransportError(FatalError):
    """The transport itself failed: the job cannot go on correctly."""


class RoleCallError(RuntimeError):
    """The remote backend raised; the message names the role and the error."""


class ImageNotCached(Exception):
    pass


def worker_name(rank: int) -> str:
    return f"rank{rank}"


# ---- process group and RPC -----------------------------------------------------------------

def init(rank: int, world: int, timeout_s: float, rpc_timeout_s: float, with_rpc: bool = True) -> None:
    """gloo process group (metric sync) and, when roles live on other ranks, RPC (role calls),
    from torchrun's rendezvous.

    torchrun keeps one store for the whole job, so after a restart (--max-restarts) the keys of
    the previous round are still there and would send the new ranks to dead addresses: this
    round's keys get a prefix of their own, and RPC (which has no store argument) rendezvous on
    a fresh port that rank 0 publishes through it.
    """
    timeout = timedelta(seconds=timeout_s)
    store, _, _ = next(dist.rendezvous("env://", rank=rank, world_size=world, timeout=timeout))
    store = dist.PrefixStore(f"rescue-eval/round-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timeout)
    if not with_rpc:
        return
    if rank == 0:
        store.set("rpc_port", str(_free_port()))
    port = int(store.get("rpc_port"))
    # libuv sockets and the basic channel: TensorPipe's shared-memory transport and CMA channel
    # busy-poll, which on CPU ranks sharing cores cost 4x in throughput (benchmarks/RESULTS.md);
    # everything sent here is small CPU data (image bytes once, RLE masks), where they gain nothing
    options = rpc.TensorPipeRpcBackendOptions(rpc_timeout=rpc_timeout_s, num_worker_threads=32,
                                              init_method=f"tcp://{os.environ['MASTER_ADDR']}:{port}",
                                              _transports=["uv"], _channels=["basic"])
    rpc.init_rpc(worker_name(rank), rank=rank, world_size=world, rpc_backend_options=options)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def shutdown(with_rpc: bool = True) -> None:
    """Waits until every rank is done with RPC (nobody still needs a role hosted here), then
    closes RPC before the process group, in that order."""
    if with_rpc:
        rpc.shutdown(graceful=True)
    dist.destroy_process_group()


def abort() -> None:
    """Leave without waiting for the other ranks (this rank failed)."""
    try:
        rpc.shutdown(graceful=False)
    except Exception:  # noqa: BLE001 - already broken; the original error is what matters
        pass


# ---- packing: what crosses the wire ----------------------------------------------------------

def pack(obj, sent: set | None = None) -> bytes:
    """A request or an answer as a pickle in which images and masks are persistent references
    carrying their wire forms. `sent` holds the image keys the receiver already has (their
    bytes are left out)."""
    buf = io.BytesIO()
    _WirePickler(buf, sent).dump(obj)
    return buf.getvalue()


def unpack(data: bytes, cache: "DecodedCache | None" = None):
    """The inverse of pack. With a cache (on a role host), images come from it when the sender
    left their bytes out, and a mask already decoded here is not decoded again."""
    return _WireUnpickler(io.BytesIO(data), cache).load()


class _WirePickler(pickle.Pickler):
    def __init__(self, file, sent: set | None):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.sent = sent

    def persistent_id(self, obj):
        if isinstance(obj, np.ndarray) and obj.dtype == bool and obj.ndim == 2:
            return "mask", encode_rle(obj)  # free for a mask that came over the wire (masks.decode_rle)
        if isinstance(obj, Image.Image):
            key, data = obj.info.get("source") or _encode_png(obj)
            if self.sent is not None:
                if key in self.sent:
                    return "image", key, None
                self.sent.add(key)
            return "image", key, data
        return None  # everything else is pickled as usual


class _WireUnpickler(pickle.Unpickler):
    def __init__(self, file, cache: "DecodedCache | None"):
        super().__init__(file)
        self.cache = cache

    def persistent_load(self, pid):
        if pid[0] == "mask":
            return self.cache.mask(pid[1]) if self.cache is not None else decode_rle(pid[1])
        return self.cache.image(pid[1], pid[2])


def _encode_png(image: Image.Image) -> tuple[str, bytes]:
    """An image that did not come from a sample (none does today): lossless PNG, keyed by content."""
    import hashlib

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


# ---- the serving side ------------------------------------------------------------------------

_SERVERS: dict[str, RoleServer] = {}
_DECODED = DecodedCache()


def host(server: RoleServer) -> None:
    """Make a role server on this rank reachable by the other ranks."""
    _SERVERS[server.name] = server


@rpc.functions.async_execution
def _serve(role: str, method: str, packed: bytes) -> torch.futures.Future:
    result = torch.futures.Future()
    try:
        items = unpack(packed, _DECODED)
    except ImageNotCached as exc:
        result.set_result(("resend", str(exc)))
        return result

    def done(future):
        try:  # whatever fails here must still answer: torch would swallow it and the caller wait out the timeout
            answer = ("ok", pack(future.result()))
        except Exception as exc:  # noqa: BLE001 - the backend's error, or an answer that cannot be packed
            answer = ("error", f"{type(exc).__name__}: {exc}")
        result.set_result(answer)

    _SERVERS[role].submit(method, items).add_done_callback(done)
    return result


# ---- the calling side ------------------------------------------------------------------------

class RemoteRole:
    """The protocol methods of a role hosted on other ranks, spread over its hosts in turn."""

    def __init__(self, name: str, hosts: list[int]):
        self.name, self.hosts = name, list(hosts)
        self._next = itertools.cycle(self.hosts)
        self._lock = threading.Lock()
        self._sent = {h: set() for h in self.hosts}  # image keys each host already has

    def __getattr__(self, method: str):
        if method not in PROTOCOL_METHODS:
            raise AttributeError(method)
        return lambda batch: self.call(method, batch)

    def call(self, method: str, batch: list) -> list:
        with self._lock:
            target = next(self._next)
        for attempt in range(2):
            with self._lock:
                packed = pack(batch, None if attempt else self._sent[target])
            try:
                status, value = rpc.rpc_sync(worker_name(target), _serve, args=(self.name, method, packed))
            except Exception as exc:  # noqa: BLE001 - any RPC failure means a rank is gone or stuck
                raise TransportError(f"{self.name} on rank {target} did not answer ({type(exc).__name__}: "
                                     f"{str(exc).splitlines()[0] if str(exc) else ''}); the job stops so that "
                                     f"no sample is recorded as failed for it. Rerun the same command to "
                                     f"resume.") from exc
            if status == "ok":
                return unpack(value)
            if status == "error":
                raise RoleCallError(f"{self.name} on rank {target}: {value}")
            with self._lock:  # "resend": the host evicted the image; send the bytes again
                self._sent[target].clear()
        raise TransportError(f"{self.name} on rank {target} keeps losing images; raise its cache size.")


def env_rank_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) in a plain process."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))
