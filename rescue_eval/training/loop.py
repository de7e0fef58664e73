"""The optimisation loop every demo twin shares, and its model card.

Deterministic: each twin seeds torch from its own name, runs on the CPU with a fixed number of
threads and deterministic algorithms, and draws its examples from seeded generators, so the
same command on the same CPU model writes the same weights. Another CPU model may not: the math
libraries pick their kernels by instruction set, and the float sums differ (README), so each
card names the CPU it was trained on.
"""
from __future__ import annotations

import json
import math
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

THREADS = 2  # a fixed count: the order of float sums, and so the weights, depend on it


@dataclass
class Report:
    """What a twin's model card says about its training."""
    name: str
    role: str
    base: str  # the real checkpoint it is shaped like
    data: str
    steps: int
    batch: str
    learning_rate: float
    rate_scales: dict[str, float] = field(default_factory=dict)  # parameter-name prefix -> factor on the rate
    parameters: int = 0
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, mean loss since the last entry)
    held_out: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    cpu: str = ""  # the CPU model it was trained on (cpu_model()); empty on cards written before it was recorded


def cpu_model() -> str:
    """The CPU's model name as Linux reports it (platform.processor() elsewhere)."""
    import platform

    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor()


def seed_for(name: str) -> int:
    return zlib.crc32(name.encode())


def fit(model, report: Report, loss_of_step: Callable[[int], "object"], log_every: int = 25,
        warmup: int = 20) -> None:
    """AdamW with a linear warm-up and a cosine decay to a tenth of the rate; `loss_of_step(step)`
    builds step's batch and returns its loss. A parameter whose name starts with a prefix in
    `report.rate_scales` trains at that factor of the rate."""
    import torch

    groups: dict[float, list] = {}
    matched = set()
    for name, param in model.named_parameters():
        if param.requires_grad:
            prefix = next((prefix for prefix in report.rate_scales if name.startswith(prefix)), None)
            matched.add(prefix)
            groups.setdefault(report.rate_scales.get(prefix, 1.0), []).append(param)
    if unmatched := set(report.rate_scales) - matched:  # a renamed module must not train at the full rate unseen
        raise ValueError(f"no trainable parameter of the {report.name} starts with {sorted(unmatched)}")
    params = [p for group in groups.values() for p in group]
    report.parameters = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW([{"params": group, "lr": report.learning_rate * scale}
                                   for scale, group in groups.items()], weight_decay=0.01)

    def rate(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, report.steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    model.train()
    start, window = time.perf_counter(), []
    for step in range(report.steps):
        loss = loss_of_step(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        window.append(float(loss.detach()))
        if (step + 1) % log_every == 0 or step + 1 == report.steps:
            report.losses.append((step + 1, sum(window) / len(window)))
            print(f"  {report.name}: step {step + 1}/{report.steps}, loss {report.losses[-1][1]:.4f}", flush=True)
            window = []
    model.eval()
    report.seconds += time.perf_counter() - start


def write_card(report: Report, folder: Path) -> None:
    """README.md (the model card) and training.json (the same figures, for tools) in `folder`."""
    curve = "\n".join(f"| {step} | {loss:.4f} |" for step, loss in report.losses)
    scaled = "".join(f"; parameters under `{prefix}` at {factor:g} x that rate"
                     for prefix, factor in report.rate_scales.items())
    scores = "\n".join(f"| {name} | {value:.3f} |" for name, value in report.held_out.items())
    card = f"""# Demo twin `trained:{report.name}` ({report.role})

Shaped like `{report.base}` (same model and processor classes as the random twin
`models/tiny`), small, and trained on the demo world (`rescue_eval/datamodules/world.py`) by
`rescue-eval train-demo`. It knows nothing but that world; the held-out scores at the end
say how often it is right there.

- **Data:** {report.data}
- **Steps:** {report.steps}, batch {report.batch}, AdamW at {report.learning_rate:g} (warm-up, cosine decay){scaled}
- **Parameters:** {report.parameters:,}
- **Training time:** {report.seconds:.0f} s on {THREADS} CPU threads{f' ({report.cpu})' if report.cpu else ''}

## Loss (mean over the steps since the previous row)

| step | loss |
|---|---|
{curve}

## Held-out scores (demo-world scenes the twin never saw in training)

| measure | value |
|---|---|
{scores}
"""
    (folder / "README.md").write_text(card, encoding="utf-8")
    (folder / "training.json").write_text(json.dumps(report.__dict__, indent=1), encoding="utf-8")
