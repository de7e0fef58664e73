"""One evaluation job: dataset -> RESCue search -> JSONL records -> metrics -> summary and report.

This rank walks its strided shard `range(rank, len, world)` (no padding, no duplicates),
skipping samples already in the output directory, in batches of `run.parallel_requests`.
"""
from __future__ import annotations

import json
import logging
import platform
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import yaml
from tqdm import tqdm

from rescue_eval import config as config_mod
from rescue_eval.config import Config
from rescue_eval.errors import UsageError
from rescue_eval.metrics import SplitMetrics
from rescue_eval.report import write_report
from rescue_eval.rescue import SearchSettings, search_batch
from rescue_eval.results import ResultWriter, load_records

log = logging.getLogger("rescue_eval")


def environment() -> dict:
    import numpy
    import torch
    import torchmetrics
    import transformers

    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        rev = "unknown"
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "torchmetrics": torchmetrics.__version__, "numpy": numpy.__version__, "git": rev}


def prepare_output(out: Path, cfg: Config) -> None:
    """Create OUT and its config.yaml, or check that an existing OUT was made by the same config."""
    path = out / "config.yaml"
    if path.exists():
        previous = yaml.safe_load(path.read_text(encoding="utf-8"))
        diff = config_mod.result_affecting_diff(previous, config_mod.to_dict(cfg))
        if diff and not cfg.run.force:
            raise UsageError(f"{out} holds results of a different config ({', '.join(diff)}); "
                             f"use another --output, or --run.force true to resume it anyway.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        header = "".join(f"# {k}: {v}\n" for k, v in environment().items())
        path.write_text("# resolved configuration of this run\n" + header + config_mod.to_yaml(cfg), encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"Cannot write to the output directory {out} ({exc.strerror}); "
                         f"choose a writable --output.") from exc


def settings_of(cfg: Config) -> SearchSettings:
    return SearchSettings(max_n=cfg.planner.max_n, dedup_iou=cfg.planner.dedup_iou, seed=cfg.run.seed,
                          verifier=cfg.verifier)


def build_data(cfg: Config):
    from datamodules import build_datamodule

    d = cfg.data
    dm = build_datamodule(d.name, root=d.root, split=d.split, fraction=d.fraction, fraction_seed=d.fraction_seed)
    dm.setup()
    return dm


def notes_of(cfg: Config, dm) -> list[str]:
    notes = []
    tiny = [r for r in ("planner", "executor", "scorer", "judge") if getattr(cfg, r).checkpoint.startswith("tiny:")]
    if tiny:
        notes.append(f"{', '.join(tiny)} use tiny random-weight checkpoints: the scores test the harness, "
                     f"not a model.")
    if cfg.data.name == "reasonseg_parquet":
        notes.append("parquet ReasonSeg masks were made with astype(bool): ignore pixels count as foreground, "
                     "so scores are not strictly comparable with LISA's folder-format evaluation.")
    if cfg.data.fraction < 1:
        notes.append(f"evaluated a deterministic {cfg.data.fraction:.0%} subset (seed {cfg.data.fraction_seed}).")
    return notes


def run(cfg: Config, out: Path, rank: int = 0, world: int = 1) -> dict:
    out = Path(out)
    prepare_output(out, cfg)
    dm = build_data(cfg)
    dataset, ids = dm.dataset, dm.ids
    settings = settings_of(cfg)
    metrics = SplitMetrics(settings.sweep, dm.subsets)

    shard = list(range(rank, len(ids), world))
    finished = load_records(out)
    todo = [i for i in shard if ids[i] not in finished]
    for i in shard:
        if ids[i] in finished:
            metrics.update_record(finished[ids[i]])
    log.info("rank %d: %d samples in its shard, %d already done", rank, len(shard), len(shard) - len(todo))

    from rescue_eval.roles import start_local_roles

    roles, servers = start_local_roles(cfg) if todo else (None, {})
    start = time.perf_counter()
    try:
        stage_totals = drive(todo, dataset, roles, settings, ResultWriter(out, rank), metrics, finished,
                             cfg.run.parallel_requests, progress=cfg.run.progress, already=len(shard) - len(todo))
    finally:
        for server in servers.values():
            server.close()
    wall = time.perf_counter() - start

    summary = metrics.compute()
    summary.update(
        dataset={"name": cfg.data.name, "split": cfg.data.split, "root": cfg.data.root, "n_total": len(ids)},
        mode=cfg.verifier.mode, notes=notes_of(cfg, dm),
        roles={name: {"ranks": [rank], **s.stats()} for name, s in servers.items()},
        timing={"wall_s": wall, "new_samples": len(todo), "samples_per_s": len(todo) / wall if wall > 0 else 0.0,
                "mean_stage_s": {k: v / max(len(todo), 1) for k, v in stage_totals.items()}},
        environment=environment(),
    )
    write_summary(out, summary)
    write_report(out, summary, finished, dm.dataset, cfg.run.overlays)
    return summary


def drive(todo: list[int], dataset, roles, settings: SearchSettings, writer: ResultWriter, metrics: SplitMetrics,
          finished: dict, parallel_requests: int, progress: bool, already: int) -> dict[str, float]:
    """Search this rank's samples with up to `parallel_requests` in flight; write each record as
    it finishes. Returns the summed per-stage seconds."""
    stage_totals: dict[str, float] = {}
    iou_sum = 0.0
    bar = tqdm(total=len(todo) + already, initial=already, unit="sample", desc="rescue-eval",
               disable=not progress, dynamic_ncols=True)

    def one(index: int) -> dict:
        return search_batch([dataset[index]], roles, settings)[0]

    try:
        with ThreadPoolExecutor(max_workers=parallel_requests, thread_name_prefix="sample") as pool:
            for done, future in enumerate(as_completed([pool.submit(one, i) for i in todo]), start=1):
                rec = future.result()
                writer.append(rec)
                finished[rec["id"]] = rec
                metrics.update_record(rec)
                iou_sum += rec["iou"]
                for stage, s in rec["timing"].items():
                    stage_totals[stage] = stage_totals.get(stage, 0.0) + s
                bar.update(1)
                bar.set_postfix(gIoU=f"{100 * iou_sum / done:.1f}")  # of this run's new samples
    finally:
        bar.close()
        writer.close()
    return stage_totals


def write_summary(out: Path, summary: dict) -> None:
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=False), encoding="utf-8")
    tmp.replace(out / "summary.json")
