"""LightningDataModules that yield `rescue_eval.types.Sample`s: ReasonSeg (LISA's folder
format and Seg-Zero's parquet) and the embedded demo set."""
from __future__ import annotations

import functools

import lightning as L

from datamodules.demo import DemoDataModule
from datamodules.reasonseg import ReasonSegDataModule
from rescue_eval.errors import UsageError

DATAMODULES = {
    "demo": DemoDataModule,
    "reasonseg": functools.partial(ReasonSegDataModule, format="folder"),
    "reasonseg_parquet": functools.partial(ReasonSegDataModule, format="parquet"),
}


def build_datamodule(name: str, **kwargs) -> L.LightningDataModule:
    """The data module registered under `name`, built with `kwargs` (e.g. root, split, fraction)."""
    if name not in DATAMODULES:
        raise UsageError(f"unknown data module {name!r}: choose one of {sorted(DATAMODULES)}.")
    return DATAMODULES[name](**kwargs)


__all__ = ["DATAMODULES", "DemoDataModule", "ReasonSegDataModule", "build_datamodule"]
