"""Item 5: peak extra memory of the verifier's set-level computations for N candidates on
1024x1024 masks: pairwise IoU (on the RLEs, one row at a time) and agreement within every
prefix, then for every N' of the sweep the hybrid scores and the pyramid tournament with its
judge memo (what rescue.verify runs per sample). The judge is the synthetic one at zero cost.
Measured with tracemalloc, which sees numpy's buffers (pycocotools' own run buffers, O(runs),
are malloc'd in C and not seen); the masks and their RLEs (the input, which the record keeps
anyway) are made before it starts and not counted. Most of the peak is the bytes copy of the
RLEs that pycocotools takes (about 1.9 KB per 1024x1024 blob mask), hence linear in N."""
from __future__ import annotations

import math
import tracemalloc

import numpy as np
from PIL import Image

from benchmarks import shapes
from benchmarks.synthetic import Cost, SyntheticJudge
from benchmarks.table import Row
from rescue_eval.core.masks import encode_rle, iou_rows
from rescue_eval.core.search import sweep_values
from rescue_eval.core.agreement import PrefixAgreement
from rescue_eval.core.selection import JudgeMemo, VerifierSettings, select_sweep

COUNTS = (16, 64, 256)
LIMIT_MB = 64
# Linear growth measures 1.00 +- 0.02 here (allocator granularity, the masks' RLE sizes);
# N log N would be 1.25 and N^2 would be 2
LINEAR = 1.05


def peak_extra_mb(masks: list[np.ndarray]) -> float:
    settings, judge = VerifierSettings(), SyntheticJudge(Cost(0.0, 0.0))
    image = Image.new("RGB", masks[0].shape[::-1])
    siglip = [(i % 7) / 7 for i in range(len(masks))]
    rles = [encode_rle(m) for m in masks]  # the record's RLEs, which verify computes IoU on
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    sizes = {n: n for n in sweep_values(len(masks))}
    agree = PrefixAgreement(iou_rows(rles), {n: [1] * k for n, k in sizes.items()})
    agree.agreement(len(rles))
    memo = JudgeMemo(judge.rate, judge.duel, image, masks, "the query", 0, settings.duel_order)
    select_sweep(sizes, agree, siglip, memo, settings)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return peak / 2 ** 20


def run(log) -> list[Row]:
    masks = shapes.blob_masks(max(COUNTS), seed=1)
    # every (256 / n)-th mask: the subsets have the same mix of shapes, so N alone grows
    peaks = {n: peak_extra_mb(masks[::len(masks) // n]) for n in COUNTS}
    growth = math.log(peaks[COUNTS[-1]] / peaks[COUNTS[0]]) / math.log(COUNTS[-1] / COUNTS[0])
    log("  peak extra MB by N: " + ", ".join(f"{n}: {p:.2f}" for n, p in peaks.items()) +
        f" (an N x H*W float32 matrix at N = 256 would be {256 * shapes.SIZE ** 2 * 4 / 2 ** 20:.0f} MB)")
    rows = [Row("5", f"peak extra MB, N = {n}, 1024x1024", f"{p:.2f}",
                f"<= {LIMIT_MB}" if n == COUNTS[-1] else "", p <= LIMIT_MB if n == COUNTS[-1] else None)
            for n, p in peaks.items()]
    rows.append(Row("5", f"growth exponent: log(peak {COUNTS[-1]} / peak {COUNTS[0]}) / log({COUNTS[-1]}/{COUNTS[0]})",
                    f"{growth:.2f}", f"<= {LINEAR} (linear)", growth <= LINEAR))
    return rows
