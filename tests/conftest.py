"""Shared fixtures and the test tiers.

Tiers are pytest markers, one per module unless a test says otherwise: `unit` (in-process,
fast: `pytest -m unit`), `cli` (the command line in subprocesses, end to end on the demo),
`torchrun` (several ranks on CPU), `slurm` (a real SLURM cluster), `gpu` (CUDA; skipped when no
GPU is visible). One tiny-checkpoint cache serves the whole run: RESCUE_EVAL_CACHE when set
(CI keeps it between runs), else a folder made once per session.
"""
from __future__ import annotations

import os
import tempfile

import pytest

TIERS = ("unit", "cli", "torchrun", "slurm", "gpu")


def pytest_configure(config):
    for tier in TIERS:
        config.addinivalue_line("markers", f"{tier}: the {tier} tier (see tests/conftest.py)")
    if "RESCUE_EVAL_CACHE" not in os.environ:
        os.environ["RESCUE_EVAL_CACHE"] = tempfile.mkdtemp(prefix="rescue-eval-test-cache-")


def pytest_collection_modifyitems(config, items):
    import torch

    no_gpu = pytest.mark.skip(reason="no CUDA device is visible")
    for item in items:
        tiers = [m.name for m in item.iter_markers() if m.name in TIERS]
        if not tiers:
            raise pytest.UsageError(f"{item.nodeid} has no tier marker ({', '.join(TIERS)})")
        if "gpu" in tiers and not torch.cuda.is_available():
            item.add_marker(no_gpu)


@pytest.fixture(scope="session")
def cache_dir() -> str:
    """The tiny checkpoints and the demo set, built once for the whole test run."""
    return os.environ["RESCUE_EVAL_CACHE"]


@pytest.fixture(scope="session")
def cli_env(cache_dir) -> dict:
    """The environment of a CLI subprocess: the shared cache, W&B offline, one thread per op."""
    env = {**os.environ, "RESCUE_EVAL_CACHE": cache_dir, "OMP_NUM_THREADS": "1"}
    for name in ("WANDB_API_KEY", "WANDB_MODE"):  # W&B runs offline here
        env.pop(name, None)
    return env


@pytest.fixture
def remote():
    """Builds remote adapters and closes their connection pools afterwards."""
    built = []

    def build(cls, **kwargs):
        built.append(cls(**kwargs))
        return built[-1]

    yield build
    for adapter in built:
        (adapter.chat if hasattr(adapter, "chat") else adapter.client).close()
