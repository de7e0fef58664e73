"""`rescue-eval segment IMAGE QUERY`: the RESCue search on one image, with any configured backends.

Writes OUT/mask.png (0/255), OUT/overlay.png and OUT/candidates.json (hypotheses, candidates
with their scores, the selection for every N, every judge answer): the record the evaluation
would write, without ground truth, plus a `note` that says when there is no mask to show.

overlay.png has the image's size, so it lies on mask.png: the chosen mask's contour and box in
magenta (the box thick), the other candidates' boxes thin and white. Each box is tagged
"#k h0.52 s0.49 a1.00 v0.80": hypothesis k, its hybrid score at the largest N, SigLIP2 score,
agreement and VLM rating (those the record has). The note, if any, is written along the bottom.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from rescue_eval.config import Config
from rescue_eval.core.errors import UsageError
from rescue_eval.core.masks import contour, decode_rle, draw_box
from rescue_eval.core.search import search_sample
from rescue_eval.core.types import Sample
from rescue_eval.dist.transport import LocalTransport
from rescue_eval.io.pictures import HALO, PRED_COLOR, fit_lines, font, label, line_width
from rescue_eval.outdir import settings_of
from rescue_eval.roles import clients, prepare_checkpoints, start_servers

WHITE, YELLOW = (255, 255, 255), (255, 255, 0)


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
    record["note"] = prediction_note(record, int(np.count_nonzero(mask)), cfg.planner.max_n)
    Image.fromarray(mask.astype(np.uint8) * 255).save(out / "mask.png")
    segment_picture(image, record, mask, cfg.planner.max_n).save(out / "overlay.png")
    (out / "candidates.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    return record


def prediction_note(record: dict, mask_pixels: int, max_n: int) -> str | None:
    """One sentence when there is no mask to show (a failed search, or an empty chosen mask), else None."""
    if record["prediction"] is None:
        return f"No mask: the search failed ({record['error'] or record['failure']})."
    if mask_pixels == 0:
        index = record["sweep"][str(max_n)].get("index")
        return f"The chosen mask is empty (0 pixels): the segmenter found nothing in hypothesis {index}'s box."
    return None


def candidate_tag(candidate: dict, hybrid: float | None, chosen: bool) -> str:
    """A box's tag: hypothesis index, then h(ybrid), s(igLIP2), a(greement) and v(LM rating),
    each left out when the record has none."""
    scores = [(k, v) for k, v in (("h", hybrid), ("s", candidate["siglip"]), ("a", candidate["agreement"]),
                                  ("v", candidate.get("vlm"))) if v is not None]
    return " ".join([f"#{candidate['index']}" + (" chosen" if chosen else "")] + [f"{k}{v:.2f}" for k, v in scores])


def segment_picture(image: Image.Image, record: dict, mask: np.ndarray, max_n: int) -> Image.Image:
    """overlay.png (see the module's docstring); `mask` is the record's prediction, decoded."""
    shown = image.convert("RGB")
    width = line_width(shown.size)
    if record["prediction"] is not None:
        shown = contour(shown, mask, PRED_COLOR, width)
    entry = record["sweep"][str(max_n)]
    chosen = entry["chosen"] if record["failure"] is None else None
    hybrid = entry.get("hybrid", [])
    text_size = min(28, max(10, round(max(shown.size) / 40)))
    typeface = font(text_size)
    others = [p for p in range(len(record["candidates"])) if p != chosen]
    for p in others + ([chosen] if chosen is not None else []):  # the chosen box last, on top
        candidate, is_chosen = record["candidates"][p], p == chosen
        box = tuple(candidate["box"])
        shown = draw_box(shown, box, PRED_COLOR if is_chosen else WHITE, width=width + 1 if is_chosen else 1, halo=HALO)
        text = candidate_tag(candidate, hybrid[p] if p < len(hybrid) else None, is_chosen)
        x = max(0, min(int(box[0]), shown.width - int(typeface.getlength(text)) - 4))
        label(shown, (x, int(box[1])), text, typeface, PRED_COLOR if is_chosen else HALO, HALO if is_chosen else WHITE)
    if record["note"]:
        rows = fit_lines(record["note"], typeface, shown.width - 8, max_lines=2)
        top = shown.height - (text_size + 6) * len(rows) - 4
        for k, row in enumerate(rows):
            label(shown, (2, top + k * (text_size + 6)), row, typeface, HALO, YELLOW)
    return shown
