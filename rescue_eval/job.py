"""One evaluation job: dataset -> RESCue search -> JSONL records -> metrics -> summary and report.

The same entry point serves one process, torchrun and SLURM. This rank walks its strided shard
`range(rank, len, world)` (no padding, no duplicates), skipping samples already in the output
directory, with up to `run.parallel_requests` samples in flight.
"""
from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import torch.distributed as dist

from rescue_eval import config as config_mod
from rescue_eval import roles as roles_mod
from rescue_eval.config import Config, needed_roles
from rescue_eval.core.errors import UsageError
from rescue_eval.core.metrics import SplitMetrics
from rescue_eval.core.search import SearchSettings, search_sample
from rescue_eval.dist import launch
from rescue_eval.dist.placement import dedicated, layout, merge_role_stats
from rescue_eval.dist.transport import TransportError, make_transport
from rescue_eval.io.progress import JobProgress
from rescue_eval.failures import TransientStop, retry_selector
from rescue_eval.io.results import ResultWriter, load_records, set_aside
from rescue_eval.io.summary import now_iso
from rescue_eval.outdir import datamodule_of, evaluated_ids, prepare_output, settings_of, write_results
from rescue_eval.suite import write_suite

log = logging.getLogger("rescue_eval")


def run(cfg: Config, out: Path, suite: list[tuple[Config, Path]] | None = None) -> dict:
    """The job on this rank. Under torchrun or srun every rank calls this with the same config.
    `suite`: several splits (each its config and output directory) evaluated by one job with
    the models of `cfg`, which then returns the suite's summary (`rescue_eval.suite`)."""
    me = launch.detect()
    roles_mod.validate(cfg, me.world, me.rank, me.local_rank)
    # role calls between ranks only when some role lives on some ranks: colocated layouts need
    # the process group alone
    remote = me.distributed and bool(dedicated(cfg.placement, needed_roles(cfg)))
    transport = make_transport(cfg.dist.transport if remote else "local")
    servers: dict = {}
    nodes = None
    if me.distributed:
        store = launch.init_process_group(me, cfg.dist.timeout_s)
        nodes = launch.gather(socket.gethostname(), me.world)
        transport.start(store, me.rank, me.world, cfg.dist)
    roles_by_rank = layout(cfg.placement, needed_roles(cfg), me.world, nodes)
    if me.distributed:
        explain_termination(me.rank, roles_by_rank)
    try:
        summary = _run_rank(cfg, Path(out), me, servers, transport, suite)
    except TransportError as exc:  # a rank gone: say where every role was
        transport.abort()
        raise TransportError(f"{exc} Roles by rank: {roles_by_rank}.") from exc
    except BaseException:
        transport.abort()  # no graceful goodbye: the launcher stops the other ranks
        raise
    try:
        transport.stop()  # waits until no rank needs the roles served here
    except Exception as exc:  # noqa: BLE001 - the results are written: a peer gone now costs a warning
        log.warning("rank %d: the transport did not stop cleanly (%s)", me.rank, exc)
    launch.destroy_process_group()
    for server in servers.values():
        server.close()
    return summary


def explain_termination(rank: int, roles_by_rank: str) -> None:
    """When the launcher stops this rank because another one died, say which roles each rank
    hosts (and on which node): the launcher's own summary names the rank that failed, this names
    what it was doing."""

    def on_term(signum, frame):
        sys.stderr.write(f"rescue-eval: rank {rank} stopped by the launcher (another rank failed, or the job was "
                         f"cancelled). Roles by rank: {roles_by_rank}. Finished samples are kept; rerun the same "
                         f"command to resume.\n")
        sys.stderr.flush()
        os._exit(128 + signum)  # no cleanup: peers are gone and would make it hang

    signal.signal(signal.SIGTERM, on_term)


def prepare(out: Path, cfg: Config, dm) -> None:
    """Rank 0, before the others go on: the output directory, the tiny checkpoints that the
    config names and the data module's files (built or checked once, here, rather than by every
    rank at the same time)."""
    prepare_output(out, cfg)
    moved = set_aside(out, retry_selector(cfg.run.retry_failed))
    if moved:
        log.info("%s: evaluating %d failed sample(s) again (%s; run.retry_failed %s); their records are kept in "
                 "results/attempts.jsonl", out, sum(moved.values()), ", ".join(f"{k} {v}" for k, v in moved.items()),
                 cfg.run.retry_failed)
    roles_mod.prepare_checkpoints(cfg)
    dm.prepare_data()


def on_rank0_first(step, rank: int, world: int) -> None:
    """Run `step` on rank 0 while the others wait; every rank raises its error (e.g. a config
    that does not match the output directory), so all stop with the same one sentence."""
    error = None
    if rank == 0:
        try:
            step()
        except UsageError as exc:
            error = str(exc)
    error = launch.broadcast_from_rank0(error, world)
    if error:
        raise UsageError(error)


@dataclass(eq=False)  # hashed by identity: a rank keeps one per split
class SplitRun:
    """One split of the job: its config and output directory, and what this rank does of it."""

    cfg: Config
    out: Path
    dataset: object
    ids: list[str]
    settings: SearchSettings
    metrics: SplitMetrics
    finished: dict  # id -> record, every rank's
    config_hash: str = ""  # config_mod.result_hash(cfg), carried by every record written
    writer: ResultWriter | None = None
    stages: dict = field(default_factory=dict)  # summed seconds per stage, this rank's new samples
    new: int = 0


def open_split(cfg: Config, out: Path, rank: int, world: int) -> SplitRun:
    dm = datamodule_of(cfg)
    on_rank0_first(lambda: prepare(out, cfg, dm), rank, world)
    dm.setup("predict")
    settings = settings_of(cfg)
    return SplitRun(cfg, out, dm.dataset, evaluated_ids(cfg, dm.dataset), settings,
                    SplitMetrics(settings.sweep, dm.dataset.subsets), load_records(out), config_mod.result_hash(cfg))


def _run_rank(cfg: Config, out: Path, me: launch.Launch, servers: dict, transport, suite: list | None) -> dict:
    rank, world = me.rank, me.world
    splits = [open_split(c, o, rank, world) for c, o in (suite or [(cfg, out)])]
    # one strided shard over every split in turn: no padding, no duplicates, and no rank idles at
    # the end of a split while others finish it
    shard = [(s, i) for s in splits for i in range(len(s.ids))][rank::world]
    todo = []
    for split, i in shard:
        if split.ids[i] in split.finished:
            split.metrics.update_record(split.finished[split.ids[i]])
        else:
            todo.append((split, i))
    log.info("rank %d/%d: %d samples in its shard, %d already done", rank, world, len(shard), len(shard) - len(todo))

    servers.update(roles_mod.start_servers(cfg, rank, world, me.local_rank))
    roles = roles_mod.clients(cfg, servers, world, transport)
    for server in servers.values():
        transport.serve(server)
    if world > 1:
        dist.barrier()  # every role is served before anyone calls it
    trackers = start_trackers(splits, cfg, servers) if rank == 0 and cfg.wandb.enabled else [None] * len(splits)
    start, started_at = time.perf_counter(), now_iso()
    progress = JobProgress([s.out for s in splits], rank, world, total=sum(len(s.ids) for s in splits),
                           done=sum(i in s.finished for s in splits for i in s.ids), enabled=cfg.run.progress)
    fault = FaultInjection.from_env(out, rank)
    # Models, libraries and the dataset index outlive the loop: keep the cyclic collector from
    # walking them while it runs (a full collection walks ~0.5M objects: 150 ms on 2 cores)
    gc.freeze()
    try:
        try:
            stop = TransientStop(cfg.run.transient_stop_share, cfg.run.transient_stop_window, len(todo))
            drive(todo, roles, rank, cfg.run.parallel_requests, progress, fault, stop, cfg.run.strict)
        finally:
            gc.unfreeze()
        summaries = [s.metrics.compute() for s in splits]  # syncs every rank's metric states: waits for the slowest
        mine = {"roles": {name: s.stats() for name, s in servers.items()},
                "splits": [{"new": s.new, "stages": s.stages} for s in splits]}
        gathered = launch.gather(mine, world)
    except BaseException:
        for tracker in filter(None, trackers):
            tracker.finish()  # what was logged live stays; the run ends with the job
        raise
    finally:
        progress.close()  # after every rank is done, so the job's bar ends at the total
    wall = time.perf_counter() - start
    if rank != 0:
        return summaries[0]
    role_stats = merge_role_stats([g["roles"] for g in gathered])
    for k, split in enumerate(splits):
        summaries[k] = write_results(split.cfg, split.out, split.ids, split.dataset, summaries[k],
                                     [g["splits"][k] for g in gathered], role_stats, wall, started_at, trackers[k])
    if suite:
        return write_suite(out, [(s.cfg, s.out, summary) for s, summary in zip(splits, summaries)])
    return summaries[0]


def start_trackers(splits: list[SplitRun], cfg: Config, servers: dict) -> list:
    """Rank 0: a W&B run per split, logging live from the result files while the job runs (role
    statistics of the roles this rank hosts)."""
    from rescue_eval.io.tracking import tracker_for

    trackers = [tracker_for(s.out, config_mod.to_dict(s.cfg), cfg.wandb, 0) for s in splits]
    for tracker, split in zip(trackers, splits):
        tracker.start_live(total=len(split.ids), role_stats=lambda: {n: s.stats() for n, s in servers.items()})
    return trackers


def drive(todo: list[tuple[SplitRun, int]], roles, rank: int, parallel_requests: int, progress: JobProgress,
          fault: "FaultInjection", stop: TransientStop, strict: bool = False) -> None:
    """Search this rank's samples (split, index) with up to `parallel_requests` in flight; write
    each record to its split as it finishes. `strict`: the first bad input stops the job (its
    record is not written, so a rerun after the fix evaluates it).

    The thread that searched a sample also records it, under one lock: handing each record to
    the main thread woke it once per sample, and on the machines we measure a wake-up costs more
    CPU than writing the record (benchmarks/RESULTS.md, item 3). The main thread only waits."""
    lock = threading.Lock()
    done = 0

    def one(item: tuple[SplitRun, int]) -> None:
        nonlocal done
        split, index = item
        rec = search_sample(split.dataset[index], roles, split.settings)
        with lock:
            if strict and rec["failure"] == "bad_input":
                raise UsageError(f"run.strict: sample {rec['id']} is bad input ({rec['error']}); fix or "
                                 f"remove it, or run without --run.strict to score it as a failure.")
            rec["config"] = split.config_hash
            split.writer.append(rec)
            split.finished[rec["id"]] = rec
            split.metrics.update_record(rec)
            split.new += 1
            for stage, seconds in rec["timing"].items():
                split.stages[stage] = split.stages.get(stage, 0.0) + seconds
            progress.advance(rec["iou"])
            done += 1
            fault.after_sample(done)
            stop.check(rec)

    writers = []
    try:
        for split in dict.fromkeys(split for split, _ in todo):
            split.writer = ResultWriter(split.out, rank)
            writers.append(split.writer)
        with ThreadPoolExecutor(max_workers=parallel_requests, thread_name_prefix="sample") as pool:
            futures = [pool.submit(one, item) for item in todo]
            try:
                finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
                for future in finished:
                    future.result()  # the first error, if any, stops the job
            except BaseException:
                for f in futures:
                    f.cancel()  # a fatal error or Ctrl-C: stop taking new samples
                raise
    finally:
        for writer in writers:
            writer.close()


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

