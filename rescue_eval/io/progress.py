"""One progress bar for the whole job, drawn by rank 0.

Rank 0 counts the lines the other ranks append to their result files: the output directory is
shared by all ranks anyway (rank 0 reads every rank's results for the report), so the bar needs
no transport and works in layouts that run without RPC.
"""
from __future__ import annotations

import threading
from pathlib import Path

from tqdm import tqdm

from rescue_eval.io.results import complete_lines_from, results_dir


class JobProgress:
    def __init__(self, outs: list[Path], rank: int, world: int, total: int, done: int, enabled: bool):
        self.iou_sum, self.new, self.bar = 0.0, 0, None
        if rank != 0:
            return
        self._lock, self._closed = threading.Lock(), threading.Event()
        self.bar = tqdm(total=total, initial=done, unit="sample", desc="rescue-eval", disable=not enabled,
                        dynamic_ncols=True, mininterval=0.5)
        # other ranks' files, read from their current end: what is already there counts in `done`
        self._others = {path: path.stat().st_size if path.exists() else 0
                        for path in (results_dir(out) / f"rank-{r}.jsonl" for out in outs for r in range(1, world))}
        if self._others:
            threading.Thread(target=self._poll, daemon=True, name="progress").start()

    def advance(self, iou: float) -> None:
        """One more sample done on this rank."""
        self.new += 1
        self.iou_sum += iou
        if self.bar is not None:
            with self._lock:
                self.bar.update(1 + self._count_others())
            self.bar.set_postfix(gIoU=f"{100 * self.iou_sum / self.new:.1f}", refresh=False)  # rank 0's samples

    def close(self) -> None:
        if self.bar is not None:
            self._closed.set()
            with self._lock:
                self.bar.update(self._count_others())
            self.bar.close()

    def _poll(self) -> None:
        while not self._closed.wait(0.5):
            with self._lock:
                self.bar.update(self._count_others())

    def _count_others(self) -> int:
        """Lines appended to the other ranks' files since the last look."""
        new = 0
        for path, offset in self._others.items():
            if path.exists():
                lines, self._others[path] = complete_lines_from(path, offset)
                new += len(lines)
        return new
