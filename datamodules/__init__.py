"""Datasets (installed as `rescue_eval.datamodules`): LightningDataModules whose `setup` gives a
`dataset` implementing `rescue_eval.core.protocols.Dataset`, registered below under the name
that `data.name` chooses.

Adding a dataset: one module with its DataModule (`prepare_data`, `setup` -> `self.dataset`),
and one `register` line here.
"""
from __future__ import annotations

from rescue_eval.core.registry import Registry

DATASETS = Registry("dataset", "data.name")
DATASETS.register("demo", "rescue_eval.datamodules.demo:DemoDataModule")
DATASETS.register("reasonseg", "rescue_eval.datamodules.reasonseg:ReasonSegDataModule")
DATASETS.register("reasonseg_parquet", "rescue_eval.datamodules.reasonseg_parquet:ReasonSegParquetDataModule")


def build_datamodule(name: str, **kwargs):
    """The data module registered under `name`, built with `kwargs` (root, split, fraction, ...)."""
    return DATASETS.get(name)(**kwargs)
