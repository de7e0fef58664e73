"""Item 6: the demo with the tiny random-weight checkpoints (real model classes on CPU), in the
colocated and dedicated layouts at world sizes 1, 2 and 4. Samples/s is the harness's own
figure (summary.json timing: new samples over rank 0's evaluation time, model loading left out).
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


def demo_samples_per_s(world: int, layout: str, out: Path) -> float:
    torchrun(world, "rescue_eval", ["run", "--config", str(REPO / "configs" / "demo.yaml"), "--output", str(out),
                                    *COMMON_RUN_ARGS, *placement(world, layout)], timeout_s=600)
    return json.loads((out / "summary.json").read_text())["timing"]["samples_per_s"]


def run(repeats: int, log) -> list[Row]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="rescue-bench-demo-") as tmp:
        for world, layout in RUNS:
            name = "colocated = dedicated (one rank hosts every role)" if world == 1 else layout
            rates = []
            for k in range(repeats):
                try:
                    rates.append(demo_samples_per_s(world, layout, Path(tmp) / f"{layout}-{world}-{k}"))
                except RuntimeError as exc:  # one failed job should not lose the other figures: say so
                    log(f"  {name}, {world} rank(s), run {k + 1} FAILED: {exc}")
            log(f"  {name}, {world} rank(s): " + ", ".join(f"{r:.2f}" for r in rates) + " samples/s")
            failed = f" ({repeats - len(rates)} of {repeats} runs failed)" if len(rates) < repeats else ""
            rows.append(Row("6", f"demo, tiny models, {name}, {world} rank(s): samples/s",
                            f"{statistics.median(rates):.2f}{failed}" if rates else "all runs failed", "", None))
    return rows
