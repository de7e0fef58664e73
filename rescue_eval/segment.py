"""`rescue-eval segment IMAGE QUERY`: the RESCue search on one image, with any configured backends.

Writes OUT/mask.png (0/255), OUT/overlay.png (the chosen mask in red, every candidate box in
yellow) and OUT/candidates.json (hypotheses, candidates with their scores, the selection for
every N, every judge answer): the record the evaluation would write, without ground truth.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from rescue_eval.config import Config
from rescue_eval.core.errors import UsageError
from rescue_eval.core.masks import decode_rle, draw_box, overlay
from rescue_eval.core.search import search_sample
from rescue_eval.core.types import Sample
from rescue_eval.dist.transport import LocalTransport
from rescue_eval.outdir import settings_of
from rescue_eval.roles import clients, prepare_checkpoints, start_servers


def segment_image(cfg: Config, image_path: Path, query: str, out: Path) -> dict:

    if cfg.planner.backend == "gt_box":
        raise UsageError("planner.backend gt_box needs ground truth; segment one image with a real planner.")
    try:
        data = Path(image_path).read_bytes()
    except OSError as exc:
        raise UsageError(f"Cannot read the image {image_path} ({exc.strerror}); give an image file.") from exc
    sample = Sample(id=Path(image_path).stem, image_bytes=data, query=query, gt_mask=None)
    try:
        image = sample.decode_image()
    except Exception as exc:  # noqa: BLE001 - PIL raises several kinds
        raise UsageError(f"{image_path} is not an image PIL can read ({exc}).") from exc

    prepare_checkpoints(cfg)
    servers = start_servers(cfg, rank=0, world=1, local_rank=0)
    try:
        settings = settings_of(cfg)
        settings.scored = False
        record = search_sample(sample, clients(cfg, servers, world=1, transport=LocalTransport()), settings)
    finally:
        for server in servers.values():
            server.close()

    out.mkdir(parents=True, exist_ok=True)
    mask = decode_rle(record["prediction"]) if record["prediction"] else np.zeros((image.height, image.width), bool)
    Image.fromarray(mask.astype(np.uint8) * 255).save(out / "mask.png")
    shown = overlay(image, mask)
    for candidate in record["candidates"]:
        shown = draw_box(shown, tuple(candidate["box"]))
    shown.save(out / "overlay.png")
    (out / "candidates.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    return record
