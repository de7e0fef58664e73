"""Item 4: bytes per mask on the wire (what RPC sends) and in the JSONL (what a record holds),
for the harness's encoding (COCO RLE, rescue_eval/masks.py) against raw bool (1 byte per pixel);
encode and decode time; and that decoding gives back the mask exactly."""
from __future__ import annotations

import json
import statistics
import time

import numpy as np
from torch.distributed.rpc.internal import _internal_rpc_pickler

from benchmarks import shapes
from benchmarks.table import Row
from rescue_eval.core.masks import decode_rle, encode_rle
from rescue_eval.dist.wire import pack


def _median_ms(fn, args: list, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        for a in args:
            start = time.perf_counter()
            fn(a)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def measure(masks: list[np.ndarray], repeats: int) -> dict:
    raw = statistics.mean(m.nbytes for m in masks)
    wire, _ = _internal_rpc_pickler.serialize([pack(m) for m in masks])  # RPC's own pickler, as sent
    jsonl = statistics.mean(len(json.dumps(encode_rle(m), separators=(",", ":"))) for m in masks)
    rles = [encode_rle(m) for m in masks]
    return {"raw": raw, "wire": len(wire) / len(masks), "jsonl": jsonl,
            "lossless": all(np.array_equal(decode_rle(r), m) for r, m in zip(rles, masks)),
            "encode_ms": _median_ms(encode_rle, masks, repeats), "decode_ms": _median_ms(decode_rle, rles, repeats)}


def run(repeats: int, log) -> list[Row]:
    sets = {"demo ground truth, 320x240": shapes.demo_gt_masks(),
            "1024x1024 demo polygons + object blobs": shapes.demo_polygon_masks() + shapes.blob_masks(64)}
    rows = []
    for name, masks in sets.items():
        m = measure(masks, repeats)
        log(f"  {name}: {len(masks)} masks, raw {m['raw']:.0f} B, wire {m['wire']:.0f} B, JSONL {m['jsonl']:.0f} B, "
            f"encode {m['encode_ms']:.3f} ms, decode {m['decode_ms']:.3f} ms, lossless {m['lossless']}")
        worst = max(m["wire"], m["jsonl"]) / m["raw"]
        rows += [
            Row("4", f"{name} ({len(masks)}): bytes/mask wire / JSONL / raw bool",
                f"{m['wire']:.0f} / {m['jsonl']:.0f} / {m['raw']:.0f}", "", None),
            Row("4", f"{name}: larger of wire, JSONL over raw; decoded == original",
                f"1/{1 / worst:.0f}; {'lossless' if m['lossless'] else 'LOSSY'}", "<= 1/8, lossless",
                worst <= 1 / 8 and m["lossless"]),
            Row("4", f"{name}: encode / decode ms per mask (median)",
                f"{m['encode_ms']:.3f} / {m['decode_ms']:.3f}", "", None),
        ]
    return rows
