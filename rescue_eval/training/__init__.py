"""`rescue-eval train-demo`: the four demo twins, trained on the demo world.

Each twin has the random twin's model and processor classes (models/tiny), made somewhat
larger, and is trained from scratch on the world's training scenes (datamodules/world.py), in
this order: executor, scorer, planner, then the judge from the planner's weights. Every twin
gets a model card (README.md) with its data, steps, loss curve and held-out scores, measured
through the harness's own adapters on scenes no twin trained on. The weights are committed
under models/trained, so the demo needs no training; rerunning the command reproduces them.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from rescue_eval.training.loop import THREADS, Report, cpu_model, seed_for, write_card

# Steps per twin at scale 1: about 13.5 minutes in all on 2 CPU cores (runs here vary by 10 %).
STEPS = {"executor": 1000, "scorer": 3000, "planner": 1300, "judge": 200}
VISION_STEPS = 300  # the planner's vision pre-training (training/vision.py), before its STEPS
HELD_OUT = range(1_000_000, 1_000_100)  # training scenes far past any a twin trains on
JUDGE_FIRST_SCENE = 500_000  # the judge's scenes follow none of the planner's


def train_all(out_root: Path, scale: float = 1.0, held_out: range = HELD_OUT) -> list[Report]:
    """Train every twin into out_root/NAME (each replaced only once it is complete)."""
    import torch

    from rescue_eval.training import executor, scorer, vlm

    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    steps = {name: max(1, round(scale * count)) for name, count in STEPS.items()}
    vision_steps = max(1, round(scale * VISION_STEPS))
    out_root.mkdir(parents=True, exist_ok=True)
    reports = []
    with tempfile.TemporaryDirectory(prefix=".train-demo-", dir=out_root) as work:
        work = Path(work)
        trainers = {
            "executor": lambda folder: executor.train(folder, steps["executor"], held_out),
            "scorer": lambda folder: scorer.train(folder, steps["scorer"], held_out),
            "planner": lambda folder: vlm.train_planner(folder, steps["planner"], vision_steps, held_out),
            "judge": lambda folder: vlm.train_judge(folder, work / "planner", steps["judge"], held_out,
                                                    JUDGE_FIRST_SCENE),
        }
        for name, train in trainers.items():
            extra = f" after {vision_steps} of vision pre-training" if name == "planner" else ""
            print(f"training the demo {name} ({steps[name]} steps{extra})", flush=True)
            torch.manual_seed(seed_for(name))
            folder = work / name
            folder.mkdir()
            report = train(folder)
            report.cpu = cpu_model()
            write_card(report, folder)
            reports.append(report)
            print(f"  {name}: {report.seconds:.0f} s; held out: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in report.held_out.items()), flush=True)
        for name in trainers:
            shutil.rmtree(out_root / name, ignore_errors=True)
            shutil.copytree(work / name, out_root / name)
    return reports
