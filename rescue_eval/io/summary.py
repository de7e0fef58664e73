"""OUT/summary.json, and the environment every summary and config.yaml records."""
from __future__ import annotations

import json
import platform
import subprocess
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
