"""Role calls between ranks over torch.distributed.rpc (TensorPipe). The only module that knows RPC.

TensorPipe is in maintenance mode upstream; everything RPC-specific stays here so another
transport can replace it behind `RemoteRole` and `serve`.

On the wire: images as their original encoded bytes, sent once per role host and sample
(the host keeps the decoded image in a small cache and asks again if it was evicted); masks as
COCO RLE (lossless). A backend error travels back as a value and is raised on the caller as a
RoleCallError (scored as that sample's failure); an RPC failure (a rank gone, a timeout) is a
TransportError, which stops the job instead of being recorded as a failed sample.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
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

@dataclasses.dataclass
class WireImage:
    key: str
    data: bytes | None  # None: the receiver has it cached under `key`


@dataclasses.dataclass
class WireMask:
    rle: dict


def pack(obj, sent: set | None = None):
    """Replace images and masks by their wire forms, recursively through dataclasses and lists.
    `sent` holds the image keys the receiver already has (their bytes are left out)."""
    if isinstance(obj, Image.Image):
        key, data = obj.info.get("source") or _encode_png(obj)
        if sent is not None and key in sent:
            return WireImage(key, None)
        if sent is not None:
            sent.add(key)
        return WireImage(key, data)
    if isinstance(obj, np.ndarray) and obj.dtype == bool and obj.ndim == 2:
        return WireMask(encode_rle(obj))
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: pack(getattr(obj, f.name), sent) for f in dataclasses.fields(obj)
                                           if f.init})
    if isinstance(obj, list):
        return [pack(x, sent) for x in obj]
    if isinstance(obj, tuple):
        return tuple(pack(x, sent) for x in obj)
    return obj


def unpack(obj, images: "ImageCache | None" = None):
    if isinstance(obj, WireImage):
        return images.get(obj)
    if isinstance(obj, WireMask):
        return decode_rle(obj.rle)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: unpack(getattr(obj, f.name), images)
                                           for f in dataclasses.fields(obj) if f.init})
    if isinstance(obj, list):
        return [unpack(x, images) for x in obj]
    if isinstance(obj, tuple):
        return tuple(unpack(x, images) for x in obj)
    return obj


def _encode_png(image: Image.Image) -> tuple[str, bytes]:
    """An image that did not come from a sample (none does today): lossless PNG, keyed by content."""
    import hashlib
    import io

    buf = io.BytesIO()
    image.save(buf, "PNG")
    data = buf.getvalue()
    return "png:" + hashlib.sha1(data).hexdigest(), data


class ImageCache:
    """Decoded images by key on a role host, least recently used dropped first."""

    def __init__(self, capacity: int = 256):
        self.capacity, self._items, self._lock = capacity, OrderedDict(), threading.Lock()

    def get(self, wire: WireImage) -> Image.Image:
        with self._lock:
            if wire.key in self._items:
                self._items.move_to_end(wire.key)
                return self._items[wire.key]
        if wire.data is None:
            raise ImageNotCached(wire.key)
        image = decode_image_bytes(wire.data)
        with self._lock:
            self._items[wire.key] = image
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return image


# ---- the serving side ------------------------------------------------------------------------

_SERVERS: dict[str, RoleServer] = {}
_IMAGES = ImageCache()
def host(server: RoleServer) -> None:
    """Make a role server on this rank reachable by the other ranks."""
    _SERVERS[server.name] = server


@rpc.functions.async_execution
def _serve(role: str, method: str, packed: list) -> torch.futures.Future:
    result = torch.futures.Future()
    try:
        items = unpack(packed, _IMAGES)
    except ImageNotCached as exc:
        result.set_result(("resend", str(exc)))
        return result

    def done(future):
        exc = future.exception()
        result.set_result(("error", f"{type(exc).__name__}: {exc}") if exc else ("ok", pack(future.result())))

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
                                     f"no sample is recorded as failed for it. Rerun to resume.") from exc
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
