"""OUT/summary.json, and the environment every summary and config.yaml records."""
from __future__ import annotations

import json
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path


def environment() -> dict:
    """Python and library versions, and the git revision of this checkout when there is one."""
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


def write_summary(out: Path, summary: dict) -> None:
    """Written whole or not at all (a temporary file renamed into place)."""
    tmp = Path(out) / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=False), encoding="utf-8")
    tmp.replace(Path(out) / "summary.json")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def previous_attempts(out: Path) -> list[dict]:
    """The attempts an earlier summary.json of OUT recorded (a summary from before attempts
    were recorded counts as one, with its timing and roles)."""
    path = Path(out) / "summary.json"
    if not path.exists():
        return []
    previous = json.loads(path.read_text(encoding="utf-8"))
    if "attempts" in previous:
        return previous["attempts"]
    return [{"timing": previous["timing"], "roles": previous.get("roles", {})}] if "timing" in previous else []


def total_timing(attempts: list[dict]) -> dict:
    """Wall time and new samples summed over the attempts; stage means weighted by their samples."""
    wall = sum(a["timing"]["wall_s"] for a in attempts)
    new = sum(a["timing"]["new_samples"] for a in attempts)
    stages: dict[str, float] = {}
    for a in attempts:
        for stage, mean in a["timing"].get("mean_stage_s", {}).items():
            stages[stage] = stages.get(stage, 0.0) + mean * a["timing"]["new_samples"]
    return {"wall_s": wall, "new_samples": new, "samples_per_s": new / wall if wall > 0 else 0.0,
            "mean_stage_s": {k: v / max(new, 1) for k, v in stages.items()}, "attempts": len(attempts)}
