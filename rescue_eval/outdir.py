"""The output directory of a job: its config.yaml, the dataset and notes it reports, and
`rescue-eval report OUT`, which rebuilds summary.json and the report from the records alone."""
from __future__ import annotations

import json
import re
import sys
from dataclasses import replace
from pathlib import Path

import yaml

from rescue_eval import config as config_mod
from rescue_eval.config import Config
from rescue_eval.core.errors import UsageError
from rescue_eval.core.metrics import SplitMetrics, record_counts
from rescue_eval.core.search import SearchSettings
from rescue_eval.io.report import write_report
from rescue_eval.io.results import load_records
from rescue_eval.io.summary import environment, now_iso, previous_attempts, total_timing, write_summary


CREDENTIALS = re.compile(r"://[^/@\s]*@")  # user:password@ in a URL of the command line, kept out of the summary


def prepare_output(out: Path, cfg: Config) -> None:
    """Create OUT and its config.yaml, or check that an existing OUT with results was made by the
    same config (one without a result, e.g. left by a failed start, takes the new config)."""
    path = out / "config.yaml"
    if path.exists() and load_records(out):
        previous = yaml.safe_load(path.read_text(encoding="utf-8"))
        diff = config_mod.result_affecting_diff(previous, config_mod.to_dict(cfg))
        if diff and not cfg.run.force:
            raise UsageError(f"{out} holds results of a different config ({', '.join(diff)}); "
                             f"use another --output, or --run.force true to resume it anyway.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        header = "".join(f"# {k}: {v}\n" for k, v in environment().items())
        text = "# resolved configuration of this run\n" + header + config_mod.to_yaml(cfg)
        path.write_text(text, encoding="utf-8")
        # every result-affecting config the directory has seen, by the hash its records carry
        (out / "configs").mkdir(exist_ok=True)
        seen = out / "configs" / f"{config_mod.result_hash(cfg)}.yaml"
        if not seen.exists():
            seen.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"Cannot write to the output directory {out} ({exc.strerror}); "
                         f"choose a writable --output.") from exc


def settings_of(cfg: Config) -> SearchSettings:
    return SearchSettings(max_n=cfg.planner.max_n, dedup_iou=cfg.planner.dedup_iou, seed=cfg.run.seed,
                          verifier=cfg.verifier, oracle_boxes=cfg.planner.backend == "gt_box")


def datamodule_of(cfg: Config):
    """The config's data module, not yet prepared or set up."""
    from rescue_eval.datamodules import build_datamodule

    d = cfg.data
    return build_datamodule(d.name, root=d.root, split=d.split, fraction=d.fraction, fraction_seed=d.fraction_seed,
                            split_by=d.split_by)


def evaluated_ids(cfg: Config, dataset) -> list[str]:
    """The ids this config evaluates: the split (or its fraction), cut to data.limit."""
    return list(dataset.ids[:cfg.data.limit] if cfg.data.limit else dataset.ids)


def dataset_entry(cfg: Config, ids: list[str], dataset) -> dict:
    """The summary's `dataset` section; `headline` is the metric the dataset's papers lead with."""
    return {"name": cfg.data.name, "split": cfg.data.split, "root": cfg.data.root, "n_total": len(ids),
            "headline": getattr(dataset, "headline", "giou")}


def config_counts(records: dict[str, dict], ids: list[str]) -> dict[str, int]:
    """Evaluated records by the hash of the config that made them (OUT/configs/<hash>.yaml)."""
    counts: dict[str, int] = {}
    for i in ids:
        if i in records:
            key = records[i].get("config", "unrecorded")
            counts[key] = counts.get(key, 0) + 1
    return counts


def with_config_counts(summary: dict, counts: dict[str, int]) -> dict:
    """The summary with `configs` (records per config hash); over records of several configs, a
    `warning` as its first key and as its first note (so the report and W&B show it too)."""
    summary = {k: v for k, v in summary.items() if k != "warning"}
    notes = [n for n in summary.get("notes", []) if not n.startswith("MIXED CONFIGS")]
    summary.update(configs=counts, notes=notes)
    if len(counts) < 2:
        return summary
    warning = ("MIXED CONFIGS: these scores combine records made with different configs (" +
               ", ".join(f"{n} with {h}" for h, n in sorted(counts.items())) + "; see configs/<hash>.yaml).")
    return {"warning": warning, **summary, "notes": [warning, *notes]}


def notes_of(cfg: Config) -> list[str]:
    """What a reader of the scores must know about how they were made."""
    notes = []
    if cfg.planner.backend == "gt_box":
        notes.append("ORACLE ABLATION: the planner proposed jittered ground-truth boxes (planner.backend gt_box); "
                     "these scores are not comparable with any real planner's.")
    if tiny := config_mod.tiny_roles_note(cfg):
        notes.append(tiny)
    if cfg.data.name == "reasonseg_parquet":
        notes.append("parquet ReasonSeg masks were made with astype(bool): ignore pixels count as foreground, "
                     "so scores are not strictly comparable with LISA's folder-format evaluation.")
    if cfg.data.fraction < 1:
        notes.append(f"evaluated a deterministic {cfg.data.fraction:.0%} subset (seed {cfg.data.fraction_seed}).")
    if cfg.data.limit:
        notes.append(f"evaluated at most the first {cfg.data.limit} samples in dataset order (data.limit).")
    return notes


def write_results(cfg: Config, out: Path, ids: list[str], dataset, summary: dict, per_rank: list[dict],
                  role_stats: dict, wall: float, started_at: str, tracker=None) -> dict:
    """Rank 0, at the end of a job: the split's summary.json, report and W&B results from every
    rank's records and this attempt's figures (`per_rank`: each rank's new samples and summed
    stage seconds). In a suite the wall time and the role statistics are the whole job's."""
    new = sum(g["new"] for g in per_rank)
    stages: dict[str, float] = {}
    for g in per_rank:
        for k, v in g["stages"].items():
            stages[k] = stages.get(k, 0.0) + v
    attempt = {"started_at": started_at, "ended_at": now_iso(), "command": [CREDENTIALS.sub("://", a) for a in sys.argv],
               "world_size": len(per_rank),
               "roles": role_stats,
               "timing": {"wall_s": wall, "new_samples": new, "samples_per_s": new / wall if wall > 0 else 0.0,
                          "mean_stage_s": {k: v / max(new, 1) for k, v in stages.items()}}}
    attempts = previous_attempts(out) + [attempt]
    summary.update(
        dataset=dataset_entry(cfg, ids, dataset),
        mode=cfg.verifier.mode, siglip_scaling=cfg.verifier.siglip_scaling, world_size=len(per_rank),
        notes=notes_of(cfg), oracle_boxes=cfg.planner.backend == "gt_box",
        # the latest attempt that evaluated samples: a rerun with nothing left to do keeps them
        roles=next((a["roles"] for a in reversed(attempts) if a["timing"]["new_samples"]), role_stats),
        timing=total_timing(attempts), attempts=attempts, environment=environment(),
    )
    records = load_records(out)  # every rank's records
    summary.update(record_counts(records[i] for i in ids if i in records))
    summary = with_config_counts(summary, config_counts(records, ids))
    write_summary(out, summary)
    write_report(out, summary, records, dataset, cfg.run.overlays)
    if tracker is None and cfg.wandb.enabled:
        from rescue_eval.io.tracking import tracker_for

        tracker = tracker_for(out, config_mod.to_dict(cfg), cfg.wandb, 0)
    if tracker is not None:
        tracker.log_results(summary, records, dataset, cfg.wandb.table_samples)
        tracker.finish()
    return summary


def rebuild(out: Path, data_root: str | None = None) -> dict:
    """Recompute summary.json from the JSONL records and regenerate the report files; `data_root`
    is where the dataset is now, when it moved since the run.

    Scores come from the records alone; the run's timing, roles and environment are kept from
    the previous summary when there is one."""
    out = Path(out)
    if not (out / "config.yaml").exists():
        raise UsageError(f"{out} has no config.yaml; give the output directory of a `rescue-eval run`.")
    cfg = config_mod.load_yaml(out / "config.yaml")
    if data_root:
        cfg = replace(cfg, data=replace(cfg.data, root=data_root))
    dm = datamodule_of(cfg)
    dm.prepare_data()
    dm.setup("predict")
    dataset = dm.dataset
    records = load_records(out)
    ids = evaluated_ids(cfg, dataset)
    metrics = SplitMetrics(settings_of(cfg).sweep, dataset.subsets)
    for sample_id in ids:
        if sample_id in records:
            metrics.update_record(records[sample_id])
    previous = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    summary = {**previous, **metrics.compute(), **record_counts(records[i] for i in ids if i in records)}
    summary.setdefault("dataset", dataset_entry(cfg, ids, dataset))
    summary.setdefault("mode", cfg.verifier.mode)
    summary.setdefault("siglip_scaling", cfg.verifier.siglip_scaling)
    summary.setdefault("notes", notes_of(cfg))
    summary = with_config_counts(summary, config_counts(records, ids))
    write_summary(out, summary)
    write_report(out, summary, records, dataset, cfg.run.overlays)
    return summary
