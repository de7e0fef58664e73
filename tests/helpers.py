"""Helpers shared by the test modules: running the CLI as a user does, reading an output
directory back, and reading an offline W&B run back from its files."""
from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
from dataclasses import fields, is_dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from rescue_eval.core.types import Sample
from rescue_eval.dist.transport import between_ranks

FAKE_KEY = "sk-FAKE-e2e-7f3a9"
SCORES = ("giou", "ciou", "oracle_iou", "n_samples", "n_failed", "failures", "per_n", "subsets")


def cli(env, *args, check=True):
    proc = subprocess.run([sys.executable, "-m", "rescue_eval", *args], env=env, capture_output=True, text=True,
                          timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def records(out: Path) -> list[dict]:
    return [json.loads(line) for p in sorted((out / "results").glob("rank-*.jsonl")) for line in p.open()]


def scores(out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    return {k: summary[k] for k in SCORES}


def records_by_id(out: Path, leave_out: tuple = ("timing",)) -> dict:
    """Every record by sample id, all but its `leave_out` fields (its timing): what was asked,
    answered, segmented, scored and chosen. The executor and the scorer compute each sample in
    passes of its own, so these are the same bits for any world size, layout or samples in
    flight at one thread per process, as every test runs (on a CPU another thread count moves
    float scores in the 7th digit)."""
    return {r["id"]: {k: v for k, v in r.items() if k not in leave_out} for r in records(out)}


def wandb_records(path: Path):
    """Protobuf Records of a .wandb file: a 7-byte header (":W&B", magic 0xBEE1, version), then
    LevelDB log blocks of 32 KiB holding chunks with a 7-byte header (crc32, length, type)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic) == (b":W&B", 0xBEE1)
    block, full, last = 32768, 1, 4
    pos, chunks = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (full, last):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(chunks)
            yield rec
            chunks = b""


def item_key(item) -> str:
    return item.key or "/".join(item.nested_key)


def read_offline_run(out: Path) -> dict:
    """Config, history, summary and staged artifact files of the one offline run under OUT."""
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    (log_file,) = run_dir.glob("run-*.wandb")
    run = {"dir": run_dir, "config": {}, "history": {}, "summary": {}, "staged": {}}
    for rec in wandb_records(log_file):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run["id"] = rec.run.run_id
            run["config"].update({item_key(u): json.loads(u.value_json) for u in rec.run.config.update})
        elif kind == "config":  # later config updates, e.g. the panel of a custom plot
            run["config"].update({item_key(u): json.loads(u.value_json) for u in rec.config.update})
        elif kind == "history":
            for item in rec.history.item:
                run["history"][item_key(item)] = json.loads(item.value_json)
        elif kind == "summary":
            run["summary"].update({item_key(u): json.loads(u.value_json) for u in rec.summary.update})
        elif kind == "artifact":
            for entry in rec.artifact.manifest.contents:
                run["staged"][(rec.artifact.name, entry.path)] = Path(entry.local_path)
    return run


def logged_table(run: dict, key: str) -> dict:
    """The full JSON of a logged table (from its staged run_table artifact)."""
    assert run["history"][f"{key}/_type"] == "table-file"
    assert (run["dir"] / "files" / run["history"][f"{key}/path"]).exists()
    return json.loads(run["staged"][(f"run-{run['id']}-{key}", f"{key}.table.json")].read_text())


# ---- images and masks for role tests --------------------------------------------------------

def jpeg_bytes(width=200, height=100, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    pixels[20:80, 40:160] = (200, 40, 40)  # an object, so masks and crops are not all noise
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def sample_image(seed=0) -> Image.Image:
    """Decoded like the harness does: it keeps its original JPEG bytes in info["source"]."""
    return Sample(f"s{seed}", jpeg_bytes(seed=seed), "the red thing", None).decode_image()


def box_mask(x1, y1, x2, y2, width=200, height=100) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[y1:y2, x1:x2] = True
    return mask


def served_in_one_batch(role: str, backend, method: str, items: list) -> list:
    """Each item submitted as its own request to a RoleServer around `backend`, merged by its
    batcher into one backend call (asserted); the answer of each request."""
    from rescue_eval.dist.serving import RoleServer

    server = RoleServer(role, backend, max_wait_s=1.0)
    try:
        futures = [server.submit(method, [item]) for item in items]
        answers = [f.result()[0] for f in futures]
    finally:
        server.close()
    assert server.batches == 1 and server.requests == len(items)
    return answers


# Each transport runs the tests of what a transport does: results in the dedicated layout, a
# killed rank, a restart, many ranks, a lost node. Other features that happen to call roles
# across ranks (suites, a fresh cache, two nodes' network) run on tcp, the default.
TRANSPORTS = between_ranks()

TORCHRUN_ARGS = ["--max_n", "2", "--run.progress", "false", "--wandb.enabled", "false"]


def torchrun(env, nproc, out, *extra, restarts=0, timeout=600, transport="tcp"):
    """The demo under torchrun on this machine (--standalone), on `transport`."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           f"--max-restarts={restarts}", "-m", "rescue_eval", "run", "--output", str(out), *TORCHRUN_ARGS,
           "--dist.transport", transport, *extra]
    return run_group(cmd, env, timeout)


def run_group(cmd, env, timeout):
    """subprocess.run that, on timeout, kills the whole process group (torchrun's workers too)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def ok(proc):
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def config_keys(cls, prefix=""):
    """Every dotted key of a config dataclass, e.g. planner.max_n."""
    keys = set()
    for f in fields(cls):
        default = f.default_factory() if callable(f.default_factory) else f.default
        if is_dataclass(default):
            keys |= config_keys(type(default), f"{prefix}{f.name}.")
        else:
            keys.add(prefix + f.name)
    return keys


LIVE_INTERVAL_S = 0.05  # seconds between live W&B points in tests


def result_record(sample_id: str, iou: float | None, inter: int = 0, union: int = 0,
                  failure: str | None = None) -> dict:
    """A result line as the job writes it (fields the live points ignore included)."""
    return {"id": sample_id, "iou": iou, "intersection": inter, "union": union,
            "oracle_iou": None if iou is None else min(1.0, iou + 0.25), "failure": failure,
            "hypotheses": [{"raw_text": "..."}], "sweep": {"1": {}, "4": {}}}


def result_line(record: dict) -> bytes:
    return (json.dumps(record) + "\n").encode()


def append_results(out: Path, rank: int, data: bytes) -> None:
    path = out / "results" / f"rank-{rank}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        f.write(data)
