"""Item 6: the demo with the tiny random-weight checkpoints (real model classes on CPU), in the
colocated and dedicated layouts at world sizes 1, 2 and 4, each next to the same repeat's
sequential baseline: one rank, one sample in flight (`--run.parallel_requests 1`), so every
role call carries one sample, as in lmms-eval's loop. Samples/s is the harness's own figure
(summary.json timing: new samples over rank 0's evaluation time, model loading left out).
No target: the two cores are shared by all ranks, so more ranks cannot mean more speed here."""
from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

from benchmarks.launch import COMMON_RUN_ARGS, REPO, torchrun
from benchmarks.table import Row

ROLES = ("planner", "executor", "scorer", "judge")
RUNS = ((1, "colocated"), (2, "colocated"), (4, "colocated"), (2, "dedicated"), (4, "dedicated"))


def placement(world: int, layout: str) -> list[str]:
    """colocated: every rank hosts every role; dedicated: role k on rank k % world."""
    if layout == "colocated":
        return []
    return [f"--placement.{role}=[{k % world}]" for k, role in enumerate(ROLES)]


def demo_samples_per_s(world: int, layout: str, out: Path, extra: tuple[str, ...] = ()) -> float:
    torchrun(world, "rescue_eval", ["run", "--config", str(REPO / "configs" / "demo.yaml"), "--output", str(out),
                                    *COMMON_RUN_ARGS, *placement(world, layout), *extra], timeout_s=600)
    return json.loads((out / "summary.json").read_text())["timing"]["samples_per_s"]


def run(repeats: int, log) -> list[Row]:
    rates: dict[tuple[int, str], list[float]] = {run: [] for run in ((1, "sequential"), *RUNS)}
    ratios: dict[tuple[int, str], list[float]] = {run: [] for run in RUNS}
    with tempfile.TemporaryDirectory(prefix="rescue-bench-demo-") as tmp:
        for k in range(repeats):
            try:
                baseline = demo_samples_per_s(1, "colocated", Path(tmp) / f"sequential-{k}",
                                              ("--run.parallel_requests", "1"))
            except RuntimeError as exc:  # one failed job should not lose the other figures: say so
                log(f"  repeat {k + 1}: the sequential baseline FAILED: {exc}")
                continue
            rates[(1, "sequential")].append(baseline)
            for world, layout in RUNS:
                try:
                    rate = demo_samples_per_s(world, layout, Path(tmp) / f"{layout}-{world}-{k}")
                except RuntimeError as exc:
                    log(f"  repeat {k + 1}: {layout}, {world} rank(s) FAILED: {exc}")
                    continue
                rates[(world, layout)].append(rate)
                ratios[(world, layout)].append(rate / baseline)
            log(f"  repeat {k + 1}: samples/s " + ", ".join(
                f"{layout} x{world} {values[-1]:.2f}" for (world, layout), values in rates.items() if len(values) > k))
    rows = []
    for (world, layout), values in rates.items():
        name = {"sequential": "sequential baseline (one sample in flight)",
                "colocated": "colocated = dedicated (one rank hosts every role)" if world == 1 else "colocated"}.get(
            layout, layout)
        failed = f" ({repeats - len(values)} of {repeats} runs failed)" if len(values) < repeats else ""
        value = (f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f}){failed}" if values
                 else "all runs failed")
        if layout != "sequential" and ratios[(world, layout)]:
            value += f"; {statistics.median(ratios[(world, layout)]):.2f}x the sequential"
        rows.append(Row("6", f"demo, tiny models, {name}, {world} rank(s): samples/s, median (spread)", value, "", None))
    return rows
