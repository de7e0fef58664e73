"""The output directory: per-rank JSONL results appended as samples finish, and resume.

A record is written as one line and flushed to disk before the next sample starts, so a crash
loses at most the samples in flight. A torn last line (the process died mid-write) is cut off
on the next start; an id written twice (a sample redone after such a crash) keeps its last line.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from rescue_eval.core.errors import FatalError, UsageError


def results_dir(out: Path) -> Path:
    return Path(out) / "results"


class ResultWriter:
    """Appends this rank's records to OUT/results/rank-R.jsonl."""

    def __init__(self, out: Path, rank: int):
        self.path = results_dir(out) / f"rank-{rank}.jsonl"
        try:
            results_dir(out).mkdir(parents=True, exist_ok=True)
            repair_torn_tail(self.path)
            self._file = open(self.path, "ab", buffering=0)  # unbuffered: nothing half-written waits in memory
            self._end = self._file.tell()  # kept here rather than asked for (a system call) per record
        except OSError as exc:
            raise UsageError(f"Cannot write results to {self.path} ({exc.strerror}); choose a writable "
                             f"--output.") from exc

    def append(self, record: dict) -> None:
        """Write one line and make it durable, or leave the file as it was (no half line)."""
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8")
        try:
            written = 0
            while written < len(line):  # a raw write may take only part of the line
                written += self._file.write(line[written:])
            os.fsync(self._file.fileno())
            self._end += written
        except OSError as exc:
            self._file.truncate(self._end)
            raise FatalError(f"Cannot write results to {self.path} ({exc.strerror}); the samples finished "
                             f"before are kept: free space or fix the folder, then rerun to resume.") from exc

    def close(self) -> None:
        self._file.close()


def set_aside(out: Path, retry) -> dict[str, int]:
    """Move the records that `retry(record)` selects from the rank files to results/attempts.jsonl,
    so that this run evaluates their samples again; returns how many by failure reason. The
    attempts log is written and synced before a rank file is replaced (atomically), so a crash
    in between leaves a record in both files, never in neither."""
    moved: dict[str, int] = {}
    attempts = results_dir(out) / "attempts.jsonl"
    for path in sorted(results_dir(out).glob("rank-*.jsonl")):
        repair_torn_tail(path)
        keep, retried = [], []
        for number, line in enumerate(path.read_bytes().splitlines(keepends=True), start=1):
            try:
                rec = json.loads(line)
            except ValueError:
                raise UsageError(f"{path} line {number} is not a result record; remove that line (or restore the "
                                 f"file) and rerun.") from None
            if retry(rec):
                retried.append(line)
                moved[rec["failure"]] = moved.get(rec["failure"], 0) + 1
            else:
                keep.append(line)
        if not retried:
            continue
        with open(attempts, "ab") as f:
            f.writelines(retried)
            os.fsync(f.fileno())
        temporary = path.with_suffix(".tmp")
        with open(temporary, "wb") as f:
            f.writelines(keep)
            os.fsync(f.fileno())
        os.replace(temporary, path)
    return moved


def complete_lines_from(path: Path, offset: int) -> tuple[list[bytes], int]:
    """The complete lines of `path` after byte `offset`, and the offset after them: a line still
    being written is left for the next look (the progress bar and the live W&B points tail the
    rank files this way while the ranks append)."""
    with open(path, "rb") as f:
        f.seek(offset)
        chunk = f.read()
    complete = chunk.rfind(b"\n") + 1
    return chunk[:complete].splitlines(), offset + complete


def repair_torn_tail(path: Path) -> None:
    """Cut an unterminated last line (a write interrupted by a crash)."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return
        f.truncate(data.rfind(b"\n") + 1)


def load_records(out: Path) -> dict[str, dict]:
    """Every finished record of every rank file, by sample id (so a run may resume with another
    world size)."""
    records: dict[str, dict] = {}
    for path in sorted(results_dir(out).glob("rank-*.jsonl")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.endswith("\n"):  # a torn tail is not a finished sample
                    rec = json.loads(line)
                    records[rec["id"]] = rec
    return records
