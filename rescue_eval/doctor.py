"""`rescue-eval doctor --config FILE`: what would stop a long job, found before it starts.

One line per check, each failure with its fix; the exit status is non-zero when any check
fails. Nothing here loads weights: configs and processors are read from the Hugging Face cache
(offline), libraries are found without importing the heavy ones, and the transport is started
the way the job starts it (tcp listens on the job's address; rpc starts between two local processes).
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rescue_eval.config import Config, needed_roles, role_sections
from rescue_eval.dist.placement import dedicated, hosts_of

# Library versions the harness is tested with (pyproject's ranges); vllm's own pins decide the rest
SUPPORTED = {"torch": ("2.6", None), "transformers": ("5.16.1", "6"), "torchmetrics": ("1.4", None),
             "lightning": ("2.5", None), "pycocotools": ("2.0.8", None)}
# backends that load a checkpoint with transformers' from_pretrained, and how its processor is found
PROCESSOR_CLASS = {("planner", "transformers"): "AutoProcessor", ("judge", "transformers"): "AutoProcessor",
                   ("executor", "transformers"): "Sam3TrackerProcessor", ("scorer", "transformers"): "AutoProcessor",
                   ("planner", "vllm"): "AutoProcessor", ("judge", "vllm"): "AutoProcessor"}
OPTIONAL_PACKAGES = {"vllm": "vllm", "sam3": "sam3"}  # backend -> the package it imports


@dataclass
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name}: {self.detail}"


def _version_tuple(text: str) -> tuple:
    return tuple(int(part) for part in text.split("+")[0].split(".")[:3] if part.isdigit())


def check_versions() -> list[Check]:
    checks = [Check("python", sys.version_info >= (3, 10), f"{platform.python_version()} (supported: 3.10 or newer)")]
    for package, (low, high) in SUPPORTED.items():
        try:
            version = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            checks.append(Check(package, False, f"not installed; run pip install -e . (supported: >={low})"))
            continue
        fits = _version_tuple(version) >= _version_tuple(low) and (high is None or _version_tuple(version) < _version_tuple(high))
        wanted = f">={low}" + (f",<{high}" if high else "")
        checks.append(Check(package, fits, f"{version} (supported: {wanted})" + (
            "" if fits else f"; install {package}{wanted} (pip install -e . does)")))
    return checks


def check_gpus(cfg: Config, world: int) -> list[Check]:
    """Every cuda device a role names exists on the machine (each rank's `cuda` is its local rank)."""
    import torch

    visible = torch.cuda.device_count()
    needed = 0
    for role, section in role_sections(cfg).items():
        device = section.device
        if device == "cuda":
            needed = max(needed, max(hosts_of(cfg.placement, role, world)) + 1)
        elif device.startswith("cuda:"):
            needed = max(needed, int(device.split(":")[1]) + getattr(section, "tensor_parallel_size", 1))
    if needed == 0:
        return [Check("gpus", True, f"none needed (every role on cpu); {visible} visible")]
    return [Check("gpus", visible >= needed, f"{needed} needed by the roles' devices and placement, {visible} visible"
                  + ("" if visible >= needed else "; run on a machine with more GPUs, or change the roles' devices"))]


def check_checkpoint(role: str, section) -> Check:
    """The checkpoint's config and processor load from the cache or folder, without weights."""
    from rescue_eval.models.tiny import PREFIX, TRAINED_PREFIX, resolve_checkpoint

    spec, backend = section.checkpoint, section.backend
    name = f"{role} checkpoint {spec}"
    if (role, backend) not in PROCESSOR_CLASS:
        return Check(name, True, f"backend {backend} loads no checkpoint here")
    if spec.startswith(PREFIX):
        return Check(name, True, "a tiny random-weight twin, built on first use (scores test the harness only)")
    if spec.startswith(TRAINED_PREFIX):
        try:
            spec = resolve_checkpoint(spec)  # the committed folder
        except UsageError as exc:
            return Check(name, False, str(exc))
    import transformers

    try:
        transformers.AutoConfig.from_pretrained(spec, local_files_only=True)
        getattr(transformers, PROCESSOR_CLASS[(role, backend)]).from_pretrained(spec, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any loader error is this check's answer
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        return Check(name, False, f"cannot be read offline ({first}); run `rescue-eval download --config FILE` "
                                  f"on a machine with hub access, or point --{role}.checkpoint at a local folder")
    where = "the trained demo twin's folder" if section.checkpoint.startswith(TRAINED_PREFIX) else "the local cache"
    return Check(name, True, f"config and processor load from {where}")


def check_optional_packages(cfg: Config) -> list[Check]:
    checks = []
    for role, section in role_sections(cfg).items():
        package = OPTIONAL_PACKAGES.get(section.backend)
        if package is not None:
            found = importlib.util.find_spec(package) is not None
            checks.append(Check(f"{role} backend {section.backend}", found, "importable" if found else
                                f"the {package} package is not installed; pip install 'rescue-eval[{package}]' "
                                f"on the GPU machine (see the README's GPU install)"))
    return checks


def check_output(out: Path | None) -> list[Check]:
    if out is None:
        return []
    folder = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    try:
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as exc:
        return [Check("output", False, f"{folder} is not writable ({exc.strerror}); choose another --output")]
    return [Check("output", True, f"{out} can be written")]


def _rpc_worker(rank: int, port: int) -> None:
    import torch.distributed.rpc as rpc

    options = rpc.TensorPipeRpcBackendOptions(init_method=f"tcp://127.0.0.1:{port}", rpc_timeout=20,
                                              _transports=["uv"], _channels=["basic"])
    rpc.init_rpc(f"rank{rank}", rank=rank, world_size=2, rpc_backend_options=options)
    if rank == 0:
        assert rpc.rpc_sync("rank1", os.getpid) > 0
    rpc.shutdown()


def check_transport(cfg: Config) -> list[Check]:
    """The transport that role calls between ranks will use starts on this machine: tcp listens
    on the address other ranks reach it at; rpc starts TensorPipe between two local processes."""
    if not dedicated(cfg.placement, needed_roles(cfg)) or cfg.dist.transport not in ("tcp", "rpc"):
        return []
    return [_check_tcp() if cfg.dist.transport == "tcp" else _check_rpc()]


def _check_tcp() -> Check:
    import socket

    from rescue_eval.dist.tcp import listen
    from rescue_eval.dist.transport import TransportError

    try:
        with listen("this machine") as listener, socket.create_connection(listener.getsockname()[:2], 5):
            address = listener.getsockname()[0]
    except (TransportError, OSError) as exc:
        return Check("tcp", False, str(exc))
    return Check("tcp", True, f"role calls listen on {address}")


def _check_rpc() -> Check:
    import torch.multiprocessing as mp

    from rescue_eval.dist.rpc import free_port

    try:
        mp.start_processes(_rpc_worker, args=(free_port(),), nprocs=2, join=True, start_method="spawn")
    except Exception as exc:  # noqa: BLE001 - ProcessRaisedException and friends
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:160]
        return Check("rpc", False, f"TensorPipe could not start between two local processes ({first}); set "
                                   f"TP_SOCKET_IFNAME and GLOO_SOCKET_IFNAME to the interface the ranks share")
    return Check("rpc", True, "TensorPipe starts between two local processes")


UNSET_ROOT = "<unset>"


def check_data(cfg: Config) -> list[Check]:
    """The dataset's files are where data.root says (the data module's own check, rank 0's)."""
    from rescue_eval.core.errors import UsageError
    from rescue_eval.outdir import datamodule_of

    name = f"data {cfg.data.name}/{cfg.data.split}"
    if cfg.data.root == UNSET_ROOT:
        return [Check(name, False, "data.root is not set; pass --data.root PATH")]
    try:
        datamodule_of(cfg).prepare_data()
    except UsageError as exc:
        return [Check(name, False, str(exc))]
    return [Check(name, True, f"found under {cfg.data.root or 'the cache (generated on first use)'}")]


def run_checks(cfg: Config, out: Path | None, world: int) -> list[Check]:
    checks = check_versions() + check_gpus(cfg, world) + check_optional_packages(cfg) + check_data(cfg)
    checks += [check_checkpoint(role, section) for role, section in role_sections(cfg).items()]
    return checks + check_output(out) + check_transport(cfg)


def world_of(cfg: Config) -> int:
    """The smallest world size the placement fits."""
    ranks = [r for role in needed_roles(cfg) for r in (getattr(cfg.placement, role) if
                                                     getattr(cfg.placement, role) != "all" else [0])]
    return max(ranks) + 1
