"""Items 1-3: pipeline efficiency against the ideal bound, speed-up over the sequential loop,
and the harness's own CPU time per sample. Models are SYNTHETIC (benchmarks/synthetic.py).

The pipelined run is the real harness under torchrun, dedicated layout on 4 ranks (planner on
rank 0, executor on 1, scorer on 2, judge on 3; every rank also drives its share of samples),
on copies of the demo scenes. Throughput is measured in steady state: from the moment the first
wave of samples is done (as many as are in flight: ranks x parallel_requests) to the moment
the last wave starts draining (as many left), so start-up, ramp-up and drain are left out; it
is the slope of samples done over that window (`steady_state` says why).

Ideal bound: role r, hosted on one rank, runs full batches of b_r = max_batch items in
c_r(b_r) = fixed_r + per_item_r * b_r seconds, so it serves b_r / c_r(b_r) items/s, which is
b_r / c_r(b_r) / k_r samples/s when a sample asks it for k_r items. k_r is taken from the
records of the samples finished in the steady window (one plan, one segmentation, one scoring
each, and their judge ratings and duel orders): samples differ in how many judge items they
need (cut the chase, duels), and the window's own samples are what its throughput is made of.
The slowest role is the bottleneck and its capacity the ideal samples/s; B = 1 / ideal is its
time per sample.

The sequential loop is how lmms-eval and VLMEvalKit run: one sample at a time, stage after
stage, every call at batch 1, over one copy of each role: the same devices as the dedicated
layout, so the comparison is fair in hardware. It calls the same synthetic backends directly
through the harness's own search code (`core.search.search_sample`), so the per-sample
call pattern (1 plan, 1 segment, 1 score, the judge's ratings and duels) is the harness's.
Its time per sample is the sum of the stages (S), the pipeline's is the bottleneck's (B): the
speed-up should approach S / B.

Harness overhead: the synthetic models only sleep, so the CPU time a rank's threads spend is
the harness's own work (the little the synthetic backends spend building answers is
subtracted). Per rank: the slope of its CPU seconds over the steady window divided by the
slope of the samples it finished, by thread group (benchmarks/pipeline_worker.py). The
target is on the driver, as item 3 defines it: this rank's own samples (search, requests
packed and sent, answers unpacked, JSONL, metrics). The whole rank is reported too: in the
dedicated layout it also serves one role to the other ranks (role servers: batching, packing
answers; transport: the threads that read requests, unpickle them and decode their images and
masks for the hosted model, and the transport's own I/O threads).
"""
from __future__ import annotations

import bisect
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from benchmarks import synthetic
from benchmarks.launch import COMMON_RUN_ARGS, torchrun
from benchmarks.table import Row

WORLD = 4
DEDICATED = [f"--placement.{role}=[{k}]" for k, role in enumerate(synthetic.ROLES)]


def make_dataset(root: Path, samples: int, image_size: int = 0) -> list[str]:
    """`samples` copies of the demo scenes in LISA's folder format, the images resized to
    image_size x image_size when it is not 0 (the synthetic masks, hence every mask the harness
    handles, are at image size); returns the data arguments."""
    from PIL import Image

    from rescue_eval.datamodules.demo import ensure_demo_set

    demo = sorted((ensure_demo_set() / "val").glob("*.jpg"))
    split = root / "val"
    split.mkdir(parents=True)
    for k in range(samples):
        scene = demo[k % len(demo)]
        for suffix in (".jpg", ".json"):
            shutil.copyfile(scene.with_suffix(suffix), split / f"{scene.stem}-{k:04d}{suffix}")
        if image_size:
            path = split / f"{scene.stem}-{k:04d}.jpg"
            Image.open(path).convert("RGB").resize((image_size, image_size)).save(path, quality=90)
    return ["--data.name", "reasonseg", "--data.root", str(root)]


def pipelined_run(costs: dict, data_args: list[str], parallel_requests: int, tmp: Path, transport: str = "tcp") -> dict:
    out, timelines = tmp / "out", tmp / "timelines"
    timelines.mkdir()
    run_args = ["--output", str(out), *data_args, *COMMON_RUN_ARGS, *DEDICATED,
                "--run.parallel_requests", str(parallel_requests), "--dist.transport", transport]
    torchrun(WORLD, "benchmarks.pipeline_worker", [synthetic.format_costs(costs), str(timelines), "--", *run_args],
             timeout_s=600)
    summary = json.loads((out / "summary.json").read_text())
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    max_batch = {role: resolved[role]["max_batch"] for role in synthetic.ROLES}
    ticks = [json.loads((timelines / f"rank-{r}.json").read_text()) for r in range(WORLD)]
    steady = steady_state(ticks, WORLD * parallel_requests)
    window = [rec for r, (n0, n1) in enumerate(steady["lines"])  # each rank's JSONL is in finishing order
              for rec in _read_jsonl(out / "results" / f"rank-{r}.jsonl")[n0:n1]]
    return {**steady, **ideal_bound(items_per_sample(window), costs, max_batch, summary)}


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def items_per_sample(records: list[dict]) -> dict[str, float]:
    """Items each role answered per sample, from the records: one plan, one segmentation and
    one scoring per sample, and the judge's ratings and duel orders (`vlm.judge_calls`)."""
    searched = [r for r in records if r["candidates"]]
    return {"planner": 1.0, "executor": len(searched) / len(records), "scorer": len(searched) / len(records),
            "judge": sum(r["vlm"]["judge_calls"] for r in records) / len(records)}


def _at(ticks: list, t: float) -> int:
    """Samples done by one rank at time t: its last tick before t."""
    i = max(0, bisect.bisect_right([tick[0] for tick in ticks], t) - 1)
    return ticks[i][1]


def _slope(times: list[float], values: list[float]) -> float:
    """Least-squares slope of values over times."""
    return float(np.polyfit(times, values, 1)[0]) if len(times) > 1 else 0.0


def steady_state(ticks: list[list], in_flight: int) -> dict:
    """Between the moments when `in_flight` samples were done and when `in_flight` were left:
    samples/s of the whole job, which lines of its JSONL each rank wrote, and each rank's
    harness CPU ms per sample of its own, by thread group.

    Rates are least-squares slopes over every tick in the window, not differences between its
    two ends: samples finish in clumps (a bottleneck's batch completes several at once, and the
    first wave starts together), so the count at either end can sit just before or just after a
    clump. On one run (16 in flight per rank, the judge at 107 items/s throughout) the ends'
    difference gave 0.86-1.08 of ideal as the window's ends moved by a few dozen samples, the
    slope 0.96-0.98."""
    done_at = []  # when each sample was seen done, all ranks together
    for rank in ticks:
        before = 0
        for t, lines, _ in rank:
            done_at += [t] * (lines - before)
            before = lines
    done_at.sort()
    first, last = in_flight, len(done_at) - 1 - in_flight
    start, end = done_at[first], done_at[last]
    samples_per_s, cpu_ms, lines = 0.0, [], []
    for rank in ticks:
        window = [tick for tick in rank if start <= tick[0] <= end]
        times = [t for t, _, _ in window]
        rate = _slope(times, [done for _, done, _ in window])  # this rank's samples/s
        samples_per_s += rate
        cpu_ms.append({g: 1000 * _slope(times, [cpu[g] for _, _, cpu in window]) / rate if rate > 0 else 0.0
                       for g in rank[0][2]})
        lines.append((_at(rank, start), _at(rank, end)))
    return {"samples_per_s": samples_per_s, "cpu_ms_per_sample": cpu_ms, "lines": lines}


def ideal_bound(items_per_sample: dict, costs: dict, max_batch: dict, summary: dict) -> dict:
    capacity, how = {}, []
    for role, k in items_per_sample.items():
        if k == 0 or role not in summary["roles"]:  # a role the run did not use cannot be its bottleneck
            continue
        c, b = costs[role], max_batch[role]
        capacity[role] = b / c.of(b) / k
        how.append(f"{role}: {b} items per batch in {c.of(b) * 1e3:.0f} ms, {k:.2f} items/sample (steady window) -> "
                   f"{capacity[role]:.2f} samples/s (the run's mean batch: {summary['roles'][role]['mean_batch']:.1f} "
                   f"items)")
    bottleneck = min(capacity, key=capacity.get)
    return {"ideal": capacity[bottleneck], "bottleneck": bottleneck, "how": how,
            "bottleneck_batch": (summary["roles"][bottleneck]["mean_batch"], max_batch[bottleneck])}


def sequential_run(costs: dict, data_args: list[str], samples: int) -> dict:
    """The lmms-eval / VLMEvalKit loop over one copy of each synthetic role."""
    from rescue_eval import config, outdir
    from rescue_eval.core.search import Roles, search_sample

    backends = {role: cls(costs[role]) for role, cls in synthetic.SYNTHETIC_CLASSES.items()}
    roles = Roles(**backends)
    cfg, _ = config.parse(["--output", "unused", *data_args])
    dm = outdir.datamodule_of(cfg)
    dm.prepare_data()
    dm.setup("predict")
    settings, dataset = outdir.settings_of(cfg), dm.dataset
    start = time.perf_counter()
    for i in range(samples):
        search_sample(dataset[i], roles, settings)
    wall = time.perf_counter() - start
    return {"samples_per_s": samples / wall, "stages_s": sum(b.slept_s for b in backends.values()) / samples}


def run(costs: dict, repeats: int, samples: int, parallel_requests: int, sequential_samples: int,
        image_size: int, transport: str, log) -> list[Row]:
    if samples <= 3 * WORLD * parallel_requests:
        raise ValueError(f"give more than {3 * WORLD * parallel_requests} samples: the first and the last "
                         f"{WORLD * parallel_requests} (one wave in flight) are not steady state")
    pipelined, sequential = [], []
    with tempfile.TemporaryDirectory(prefix="rescue-bench-") as tmp:
        data_args = make_dataset(Path(tmp) / "data", samples, image_size)
        for k in range(repeats):
            run_dir = Path(tmp) / f"run-{k}"
            run_dir.mkdir()
            pipelined.append(pipelined_run(costs, data_args, parallel_requests, run_dir, transport))
            sequential.append(sequential_run(costs, data_args, sequential_samples))
            p, s = pipelined[-1], sequential[-1]
            cpu = ", ".join(f"{x['driver']:.1f} / {sum(x.values()):.1f}" for x in p["cpu_ms_per_sample"])
            log(f"  run {k + 1}/{repeats}: pipelined {p['samples_per_s']:.2f}/s (ideal {p['ideal']:.2f}/s), "
                f"sequential {s['samples_per_s']:.2f}/s, CPU ms/sample by rank (driver / whole rank) {cpu}")
    log("  ideal bound (last run) = min over roles of max_batch / (fixed + per_item x max_batch) / items per sample:")
    for line in pipelined[-1]["how"]:
        log(f"    {line}")

    med = statistics.median
    efficiencies = [p["samples_per_s"] / p["ideal"] for p in pipelined]
    efficiency = med(efficiencies)
    speedup = med([p["samples_per_s"] / s["samples_per_s"] for p, s in zip(pipelined, sequential)])
    stages_s = med([s["stages_s"] for s in sequential])
    bottleneck_s = med([1 / p["ideal"] for p in pipelined])
    expected = med([s["stages_s"] * p["ideal"] for p, s in zip(pipelined, sequential)])
    # item 3: each run's median over its ranks, then the median and spread of those over the runs
    driver = [med([x["driver"] for x in p["cpu_ms_per_sample"]]) for p in pipelined]
    whole = [med([sum(x.values()) for x in p["cpu_ms_per_sample"]]) for p in pipelined]
    by_rank = [x for p in pipelined for x in p["cpu_ms_per_sample"]]  # every rank of every run
    groups = " / ".join(f"{g} {med([x[g] for x in by_rank]):.1f}" for g in by_rank[0])
    mean_batch, max_batch = pipelined[-1]["bottleneck_batch"]
    bottleneck = pipelined[-1]["bottleneck"]
    images = f"{image_size}x{image_size}" if image_size else "320x240"
    runs = f"median of {repeats} run(s), spread"
    return [
        Row("1", f"pipelined samples/s ({WORLD} ranks, dedicated, {transport} transport, {parallel_requests} in flight "
                 f"per rank, steady)",
            f"{med([p['samples_per_s'] for p in pipelined]):.2f}", "", None),
        Row("1", f"ideal samples/s (bottleneck: {bottleneck} at {max_batch} items per batch)",
            f"{med([p['ideal'] for p in pipelined]):.2f}", "", None),
        Row("1", f"{bottleneck} mean batch in the run (items, of max_batch {max_batch})", f"{mean_batch:.1f}", "", None),
        Row("1", f"pipelined / ideal, {runs} {spread(efficiencies, 3)}", f"{efficiency:.3f}", ">= 0.95",
            efficiency >= 0.95),
        Row("2", "sequential loop samples/s (one sample at a time, batch 1)",
            f"{med([s['samples_per_s'] for s in sequential]):.2f}", "", None),
        Row("2", f"speed-up pipelined / sequential; S/B = {stages_s * 1e3:.0f}/{bottleneck_s * 1e3:.0f} ms = "
                 f"{expected:.2f}", f"{speedup:.2f}x", ">= 0.9 x S/B", speedup >= 0.9 * expected),
        Row("3", f"driver CPU ms per sample, {images} images, median over ranks; {runs} {spread(driver, 1)}",
            f"{med(driver):.2f}", "<= 5", med(driver) <= 5),
        Row("3", f"whole rank incl. serving its role to the others, median over ranks; {runs} {spread(whole, 1)}",
            f"{med(whole):.2f}", "<= 15", med(whole) <= 15),
        Row("3", "  by thread group (medians over ranks and runs, ms)", groups, "", None),
    ]


def spread(values: list[float], digits: int) -> str:
    return f"{min(values):.{digits}f}-{max(values):.{digits}f}"
