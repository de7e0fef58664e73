"""One evaluation job: dataset -> RESCue search -> JSONL records -> metrics -> summary and report.

This rank walks its strided shard `range(rank, len, world)` (no padding, no duplicates),
skipping samples already in the output directory, in batches of `run.parallel_requests`.
"""
from __future__ import annotations

import gc
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import torch.distributed as dist
import yaml

from rescue_eval import config as config_mod
from rescue_eval.config import Config
from rescue_eval.errors import UsageError
from rescue_eval.metrics import SplitMetrics, record_counts
from rescue_eval.progress import JobProgress
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


def prepare(out: Path, cfg: Config) -> None:
    """Rank 0, before the others go on: the output directory, and the tiny checkpoints that the
    config names (built once, here, rather than by every rank at the same time)."""
    from models.tiny import resolve_checkpoint
    from rescue_eval.roles import needed_roles

    prepare_output(out, cfg)
    for role in needed_roles(cfg):
        resolve_checkpoint(getattr(cfg, role).checkpoint)
    build_data(cfg)  # the demo set is generated on first use


def settings_of(cfg: Config) -> SearchSettings:
    return SearchSettings(max_n=cfg.planner.max_n, dedup_iou=cfg.planner.dedup_iou, seed=cfg.run.seed,
                          verifier=cfg.verifier, oracle_boxes=cfg.planner.backend == "gt_box")


def build_data(cfg: Config):
    from datamodules import build_datamodule

    d = cfg.data
    dm = build_datamodule(d.name, root=d.root, split=d.split, fraction=d.fraction, fraction_seed=d.fraction_seed)
    dm.setup()
    return dm


def notes_of(cfg: Config, dm) -> list[str]:
    notes = []
    if cfg.planner.backend == "gt_box":
        notes.append("ORACLE ABLATION: the planner proposed jittered ground-truth boxes (planner.backend gt_box); "
                     "these scores are not comparable with any real planner's.")
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


def run(cfg: Config, out: Path) -> dict:
    """The job on this rank. Under torchrun every rank calls this with the same config."""
    from rescue_eval import transport
    from rescue_eval.roles import needed_roles, validate_placement

    rank, world, local_rank = transport.env_rank_world()
    validate_placement(cfg, world, rank, local_rank)
    servers: dict = {}
    # RPC only when some role lives on other ranks: colocated layouts need the process group alone
    with_rpc = world > 1 and any(getattr(cfg.placement, r) != "all" for r in needed_roles(cfg))
    if world > 1:
        transport.init(rank, world, cfg.dist.timeout_s, cfg.dist.rpc_timeout_s, with_rpc)
        explain_termination(cfg, rank, world)
    try:
        summary = _run_rank(cfg, Path(out), rank, world, local_rank, servers)
    except BaseException:
        if with_rpc:
            transport.abort()  # no graceful goodbye: torchrun stops the other ranks
        raise
    if world > 1:
        transport.shutdown(with_rpc)  # waits until no rank needs the roles served here
    for server in servers.values():
        server.close()
    return summary


def explain_termination(cfg: Config, rank: int, world: int) -> None:
    """When torchrun stops this rank because another one died, say which roles each rank
    hosts: torchrun's own summary names the rank that failed, this names what it was doing."""
    from rescue_eval.roles import hosts_of, needed_roles

    dedicated = [r for r in needed_roles(cfg) if getattr(cfg.placement, r) != "all"]
    hosted = {k: [r for r in dedicated if k in hosts_of(cfg, r, world)] for k in range(world)}
    layout = "; ".join(f"rank {k}: {', '.join(roles) or 'samples only'}" for k, roles in hosted.items())

    def on_term(signum, frame):
        sys.stderr.write(f"rescue-eval: rank {rank} stopped by the launcher (another rank failed, or the job was "
                         f"cancelled). Roles by rank: {layout}. Finished samples are kept; rerun the same "
                         f"command to resume.\n")
        sys.stderr.flush()
        os._exit(128 + signum)  # no cleanup: peers are gone and would make it hang

    signal.signal(signal.SIGTERM, on_term)


def _run_rank(cfg: Config, out: Path, rank: int, world: int, local_rank: int, servers: dict) -> dict:
    from rescue_eval.roles import clients, merge_role_stats, start_servers

    on_all_ranks(lambda: prepare(out, cfg), rank, world)
    dm = build_data(cfg)
    dataset, ids = dm.dataset, dm.ids
    settings = settings_of(cfg)
    metrics = SplitMetrics(settings.sweep, dm.subsets)

    shard = list(range(rank, len(ids), world))  # strided: no padding, no duplicates
    finished = load_records(out)
    todo = [i for i in shard if ids[i] not in finished]
    for i in shard:
        if ids[i] in finished:
            metrics.update_record(finished[ids[i]])
    log.info("rank %d/%d: %d samples in its shard, %d already done", rank, world, len(shard), len(shard) - len(todo))

    servers.update(start_servers(cfg, rank, world, local_rank))
    roles = clients(cfg, servers, world)
    if world > 1:
        from rescue_eval import transport

        for server in servers.values():
            transport.host(server)
        dist.barrier()  # every role is served before anyone calls it
    tracker = None
    if cfg.wandb.enabled:
        from rescue_eval.tracking import tracker_for

        tracker = tracker_for(out, config_mod.to_dict(cfg), cfg.wandb, rank)
    start = time.perf_counter()
    progress = JobProgress(out, rank, world, total=len(ids), done=sum(i in finished for i in ids),
                           enabled=cfg.run.progress)
    fault = FaultInjection.from_env(out, rank)
    # Models, libraries and the dataset index outlive the loop: keep the cyclic collector from
    # walking them while it runs (a full collection walks ~0.5M objects: 150 ms on 2 cores)
    gc.freeze()
    try:
        try:
            stage_totals = drive(todo, dataset, roles, settings, ResultWriter(out, rank), metrics, finished,
                                 cfg.run.parallel_requests, progress, fault, cfg.run.strict)
        finally:
            gc.unfreeze()
        summary = metrics.compute()  # syncs the metric states of all ranks: waits for the slowest
        mine = {"roles": {name: s.stats() for name, s in servers.items()}, "new": len(todo), "stages": stage_totals}
        gathered = gather(mine, world)
    finally:
        progress.close()  # after every rank is done, so the job's bar ends at the total
    wall = time.perf_counter() - start
    if rank != 0:
        return summary
    new = sum(g["new"] for g in gathered)
    stages: dict[str, float] = {}
    for g in gathered:
        for k, v in g["stages"].items():
            stages[k] = stages.get(k, 0.0) + v
    summary.update(
        dataset={"name": cfg.data.name, "split": cfg.data.split, "root": cfg.data.root, "n_total": len(ids)},
        mode=cfg.verifier.mode, world_size=world, notes=notes_of(cfg, dm),
        oracle_boxes=cfg.planner.backend == "gt_box",
        roles=merge_role_stats([g["roles"] for g in gathered]),
        timing={"wall_s": wall, "new_samples": new, "samples_per_s": new / wall if wall > 0 else 0.0,
                "mean_stage_s": {k: v / max(new, 1) for k, v in stages.items()}},
        environment=environment(),
    )
    records = load_records(out)  # every rank's records
    summary.update(record_counts(records[i] for i in ids if i in records))
    write_summary(out, summary)
    write_report(out, summary, records, dataset, cfg.run.overlays)
    if tracker is not None:
        tracker.log_results(summary, records, dataset, cfg.wandb.table_samples)
        tracker.finish()
    return summary


def on_all_ranks(step, rank: int, world: int) -> None:
    """Run `step` on rank 0; every rank raises its error (e.g. a config that does not match the
    output directory), so all stop with the same one sentence."""
    error = None
    if rank == 0:
        try:
            step()
        except UsageError as exc:
            error = str(exc)
    if world > 1:
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error:
        raise UsageError(error)


def gather(obj, world: int) -> list:
    if world == 1:
        return [obj]
    box = [None] * world
    dist.all_gather_object(box, obj)
    return box


def drive(todo: list[int], dataset, roles, settings: SearchSettings, writer: ResultWriter, metrics: SplitMetrics,
          finished: dict, parallel_requests: int, progress: JobProgress, fault: "FaultInjection",
          strict: bool = False) -> dict:
    """Search this rank's samples with up to `parallel_requests` in flight; write each record as
    it finishes. Returns the summed per-stage seconds. `strict`: the first bad input stops the
    job (its record is not written, so a rerun after the fix evaluates it)."""
    stage_totals: dict[str, float] = {}

    def one(index: int) -> dict:
        return search_batch([dataset[index]], roles, settings)[0]

    try:
        with ThreadPoolExecutor(max_workers=parallel_requests, thread_name_prefix="sample") as pool:
            futures = [pool.submit(one, i) for i in todo]
            try:
                for done, future in enumerate(as_completed(futures), start=1):
                    rec = future.result()
                    if strict and rec["failure"] == "bad_input":
                        raise UsageError(f"run.strict: sample {rec['id']} is bad input ({rec['error']}); fix or "
                                         f"remove it, or run without --run.strict to score it as a failure.")
                    writer.append(rec)
                    finished[rec["id"]] = rec
                    metrics.update_record(rec)
                    for stage, s in rec["timing"].items():
                        stage_totals[stage] = stage_totals.get(stage, 0.0) + s
                    progress.advance(rec["iou"])
                    fault.after_sample(done)
            except BaseException:
                for f in futures:
                    f.cancel()  # a fatal error: stop taking new samples
                raise
    finally:
        writer.close()
    return stage_totals


class FaultInjection:
    """RESCUE_EVAL_FAULT=RANK:K kills rank RANK with SIGKILL after K new samples, once per
    output directory (a marker file keeps a restarted job from crashing again). For tests of
    crash, restart and resume."""

    def __init__(self, marker: Path | None, after: int):
        self.marker, self.after = marker, after

    @classmethod
    def from_env(cls, out: Path, rank: int) -> "FaultInjection":
        spec = os.environ.get("RESCUE_EVAL_FAULT", "")
        if spec:
            fault_rank, after = (int(x) for x in spec.split(":"))
            if fault_rank == rank and not (out / ".fault-injected").exists():
                return cls(out / ".fault-injected", after)
        return cls(None, 0)

    def after_sample(self, done: int) -> None:
        if self.marker is not None and done >= self.after:
            self.marker.touch()
            log.warning("RESCUE_EVAL_FAULT: killing this rank after %d samples", done)
            os.kill(os.getpid(), signal.SIGKILL)


def write_summary(out: Path, summary: dict) -> None:
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=False), encoding="utf-8")
    tmp.replace(out / "summary.json")
