"""Where generated artefacts (tiny checkpoints, the demo set) live, and building them once.

Several ranks may start at the same moment on a fresh machine: each builds into its own
temporary folder and renames it into place; the first rename wins and the others discard theirs.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def cache_root() -> Path:
    return Path(os.environ.get("RESCUE_EVAL_CACHE", Path.home() / ".cache" / "rescue-eval"))


def build_once(target: Path, build: Callable[[Path], None], force: bool = False) -> Path:
    """Run `build(tmp_dir)` and move the result to `target`, unless `target` already exists."""
    target = Path(target)
    if target.exists() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        if force and target.exists():
            shutil.rmtree(target)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first: keep theirs
            if not target.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
