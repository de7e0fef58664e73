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
DATASETS.register("world", "rescue_eval.datamodules.world:WorldDataModule")
DATASETS.register("reasonseg", "rescue_eval.datamodules.reasonseg:ReasonSegDataModule")
DATASETS.register("reasonseg_parquet", "rescue_eval.datamodules.reasonseg_parquet:ReasonSegParquetDataModule")
DATASETS.register("refcoco", "rescue_eval.datamodules.refcoco:RefCocoDataModule")
DATASETS.register("refcoco+", "rescue_eval.datamodules.refcoco:RefCocoPlusDataModule")
DATASETS.register("refcocog", "rescue_eval.datamodules.refcoco:RefCocogDataModule")

# Datasets generated on first use (into the cache, or data.root when given): no data.root needed.
GENERATED = ("demo", "world")

# The refer datasets' partitions (data.split_by), the usual one first; here rather than in
# refcoco.py so that checking a config imports no data library.
SPLIT_BY = {"refcoco": ("unc",), "refcoco+": ("unc",), "refcocog": ("umd", "google")}


def build_datamodule(name: str, **kwargs):
    """The data module registered under `name`, built with `kwargs` (root, split, fraction, ...);
    `split_by` goes to the refer datasets only."""
    split_by = kwargs.pop("split_by", None)
    return DATASETS.get(name)(**kwargs, **({"split_by": split_by} if name in SPLIT_BY else {}))
